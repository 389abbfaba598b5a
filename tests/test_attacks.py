import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import flat, flat_one, make_tree
from scipy.stats import norm

import jaxrobust as jr
from jaxrobust import attacks

H, B = 10, 3


def apply(attack, honest, **kw):
    params = jax.tree_util.tree_map(lambda leaf: jnp.zeros(leaf.shape[1:]), honest)
    inp = attacks.AttackInput(honest, B, jax.random.key(0), **kw)
    out, _ = attack.apply(inp, attack.init(params))
    return flat(out)


@pytest.fixture
def honest():
    return make_tree(np.random.default_rng(0), H)


def test_sign_flip_ipm_foe(honest):
    mu = flat(honest).mean(0)
    np.testing.assert_allclose(apply(attacks.sign_flip(), honest), np.tile(-mu, (B, 1)), rtol=1e-5)
    np.testing.assert_allclose(
        apply(attacks.ipm(0.5), honest), np.tile(-0.5 * mu, (B, 1)), rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(
        apply(attacks.foe(1.5), honest), np.tile(-0.5 * mu, (B, 1)), rtol=1e-5, atol=1e-7
    )


@pytest.mark.parametrize("n,f", [(13, 3), (20, 9), (7, 1), (25, 5)])
def test_alie_default_z(n, f):
    s = np.floor(n / 2 + 1) - f
    assert attacks.alie_z(n, f) == pytest.approx(norm.ppf((n - s) / n), rel=1e-6)


def test_alie_vector(honest):
    x = flat(honest)
    z = attacks.alie_z(H + B, B)
    expected = x.mean(0) - z * x.std(0, ddof=1)
    np.testing.assert_allclose(
        apply(attacks.alie(), honest), np.tile(expected, (B, 1)), rtol=1e-4, atol=1e-6
    )


def test_constant_and_gaussian_attacks(honest):
    assert np.isinf(apply(attacks.inf(), honest)).all()
    assert np.isnan(apply(attacks.nan(), honest)).all()
    big = {"w": np.zeros((H, 4000), np.float32)}
    g = apply(attacks.gaussian(3.0), big)
    assert g.shape == (B, 4000)
    assert abs(g.std() - 3.0) < 0.1 and not np.allclose(g[0], g[1])


def test_label_flip_is_the_mean_of_flipped_gradients(honest):
    flipped = make_tree(np.random.default_rng(1), H)
    out = apply(attacks.label_flip(), honest, flipped=flipped)
    np.testing.assert_allclose(out, np.tile(flat(flipped).mean(0), (B, 1)), rtol=1e-5, atol=1e-7)


def _largest_admissible(ok, hi=1e4):
    lo = 0.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


@pytest.mark.parametrize("kind", ["min_max", "min_sum"])
@pytest.mark.parametrize("direction", ["std", "unit", "sign"])
def test_min_max_min_sum_solve_gamma_exactly(honest, kind, direction):
    x = flat(honest)
    mu = x.mean(0)
    p = {"std": -x.std(0, ddof=1), "unit": -mu / np.linalg.norm(mu), "sign": -np.sign(mu)}[
        direction
    ]
    d = ((x[:, None] - x[None]) ** 2).sum(-1)

    def ok(g):
        m = mu + g * p
        dist = ((x - m) ** 2).sum(1)
        return dist.max() <= d.max() if kind == "min_max" else dist.sum() <= d.sum(1).max()

    gamma = _largest_admissible(ok)
    out = apply(attacks.make_attack(kind, direction=direction), honest)
    np.testing.assert_allclose(out[0], mu + gamma * p, rtol=1e-3, atol=1e-4)


def test_mimic_copies_the_worker_along_the_top_variance_direction():
    rng = np.random.default_rng(2)
    base = rng.standard_normal((H, 20)).astype(np.float32) * 0.1
    base[4] += 5.0  # worker 4 sits far along one direction
    attack = attacks.mimic(warmup=3)
    state = attack.init(jnp.zeros(20))
    for t in range(5):
        x = base + 0.01 * rng.standard_normal(base.shape).astype(np.float32)
        out, state = attack.apply(attacks.AttackInput(x, B, jax.random.key(t)), state)
        np.testing.assert_array_equal(np.asarray(out), np.tile(x[4], (B, 1)))
    assert int(state.target) == 4 and int(state.step) == 5


def _damage(x, byz, defence):
    allv = np.concatenate([x, np.tile(byz, (B, 1))]).astype(np.float32)
    return np.linalg.norm(np.asarray(defence(allv), np.float64) - x.mean(0))


@pytest.mark.parametrize("name", ["alie_aware", "ipm_aware"])
def test_aggregator_aware_attacks_beat_every_coarse_factor(honest, name):
    x = flat(honest)
    tx = jr.trimmed_mean(B)

    def defence(v):
        return tx.update(v, tx.init(None))[0]

    out = apply(attacks.make_attack(name), {"x": x.astype(np.float32)}, defence=defence)
    achieved = _damage(x, out[0], defence)
    mu, sigma = x.mean(0), x.std(0, ddof=1)
    factors = np.linspace(0, 10, 101)
    brute = [
        _damage(x, mu - t * sigma if name == "alie_aware" else -t * mu, defence) for t in factors
    ]
    assert achieved >= 0.98 * max(brute)
    assert achieved > _damage(x, -mu, defence) * 0.5  # and is a real attack


def test_aggregator_aware_attack_runs_inside_jit(honest):
    tx = jr.median()
    attack = attacks.alie_aware()

    @jax.jit
    def step(h):
        inp = attacks.AttackInput(
            h, B, jax.random.key(0), defence=lambda v: tx.update(v, tx.init(None))[0]
        )
        return attack.apply(inp, ())[0]

    out = step(honest)
    assert np.isfinite(flat(out)).all()


def test_unknown_attack_lists_choices():
    with pytest.raises(ValueError, match="unknown attack 'bogus'; choose one of: none, sign_flip"):
        attacks.make_attack("bogus")
    with pytest.raises(ValueError, match="choose one of: std, unit, sign"):
        attacks.min_max("up")


def test_no_attack_copies_honest_rows(honest):
    out = apply(attacks.make_attack("none"), honest)
    np.testing.assert_array_equal(out, flat(honest)[:B])
    assert flat_one(jax.tree_util.tree_map(lambda v: v[0], honest)).shape == (17,)


def test_attack_options_per_attack_for_sweeps():
    from jaxrobust.config import Config

    per_attack = {"alie_aware": {"points": 4}, "ipm_aware": {"max_epsilon": 2.0}}
    assert attacks.options_for("alie_aware", per_attack) == {"points": 4}
    assert attacks.options_for("sign_flip", per_attack) == {}
    assert attacks.options_for("alie", {"z": 1.5}) == {"z": 1.5}
    with pytest.raises(ValueError, match="mixes per-attack entries"):
        attacks.options_for("alie_aware", {"alie_aware": {"points": 4}, "z": 1.0})
    config = Config(attack="alie", attack_options={"alie": {"z": 0.25}, "sign_flip": {}})
    honest = jnp.asarray(np.random.default_rng(0).normal(size=(5, 3)), jnp.float32)
    got = attacks.attack_of(config).apply(attacks.AttackInput(honest, 2, jax.random.key(0)), ())[0]
    mu, sigma = honest.mean(0), honest.std(0, ddof=1)  # ALIE's h - 1 convention
    np.testing.assert_allclose(got, np.stack([mu - 0.25 * sigma] * 2), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n", range(1, 26))
def test_alie_z_exists_exactly_when_its_bound_holds(n):
    """Baruch et al. 2019: s = floor(n/2 + 1) - f, z = Phi^-1((n - s)/n) for 0 < s < n."""
    for f in range(n + 1):
        s = np.floor(n / 2 + 1) - f
        if 0 < s < n:
            assert attacks.alie_z(n, f) == pytest.approx(norm.ppf((n - s) / n), rel=1e-6)
        else:
            with pytest.raises(ValueError, match=rf"alie needs .*got n={n}, f={f}, s={int(s)}"):
                attacks.alie_z(n, f)


def test_alie_with_a_byzantine_majority_needs_an_explicit_z():
    honest = make_tree(np.random.default_rng(1), 2)
    inp = attacks.AttackInput(honest, 3, jax.random.key(0))
    with pytest.raises(ValueError, match="alie needs 1 <= s"):
        attacks.alie().apply(inp, ())
    out, _ = attacks.alie(z=1.0).apply(inp, ())
    x = flat(honest)
    np.testing.assert_allclose(
        flat(out), np.tile(x.mean(0) - x.std(0, ddof=1), (3, 1)), rtol=1e-4, atol=1e-6
    )
    # No Byzantine worker: nothing to send, no factor needed even for n = 2.
    out, _ = attacks.alie().apply(attacks.AttackInput(honest, 0, jax.random.key(0)), ())
    assert all(leaf.shape[0] == 0 for leaf in jax.tree_util.tree_leaves(out))


def test_config_validation_refuses_impossible_settings_before_running():
    from jaxrobust.config import Config, ConfigError

    base = dict(num_honest=2, num_byzantine=3, declared_f=1, defence=("median",))
    with pytest.raises(ConfigError, match=r"alie needs .*got n=5, f=3, s=0"):
        Config(**base, attack="alie").validate()
    Config(**base, attack="alie", attack_options={"z": 1.0}).validate()
    Config(**base, attack="alie", attack_options={"alie": {"z": 1.0}, "ipm": {}}).validate()
    Config(**{**base, "num_byzantine": 2}, attack="alie").validate()  # s = 1


def test_cli_refuses_alie_with_a_byzantine_majority_before_running():
    from jaxrobust import cli
    from jaxrobust.config import ConfigError

    args = ["run", "--attack", "alie", "--num-honest", "2", "--num-byzantine", "3"]
    with pytest.raises(ConfigError, match=r"alie needs .*got n=5, f=3, s=0"):
        cli.resolve_config(cli.parser().parse_args(args))
    config = cli.resolve_config(cli.parser().parse_args([*args, "--attack-options", "{z: 1.5}"]))
    assert config.attack_options == {"z": 1.5}
