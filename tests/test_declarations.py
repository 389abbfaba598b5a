"""Tests generated from the declarations: every config field and every component option
with a declared range or set is fed a value outside it (each bound on its own, just
outside), and the message must name the field or option, the value and what is allowed;
the value on an inclusive bound is accepted.

The values come from the declarations alone (``Config.model_fields``'s metadata and the
factories' ``Annotated`` / ``Literal`` signatures), so a field or option added with a
declaration is covered without editing this file.
"""

from __future__ import annotations

import typing

import annotated_types
import pytest

from jaxrobust.config import COMPONENTS, Config, ConfigError, Registered, Rules, default_of
from jaxrobust.core import REGISTRIES, registry
from jaxrobust.core.registry import _constraints, _within

OPS = {
    annotated_types.Ge: ("ge", ">="),
    annotated_types.Gt: ("gt", ">"),
    annotated_types.Le: ("le", "<="),
    annotated_types.Lt: ("lt", "<"),
}
#: Option fields: checked in Config.validate against the component they configure.
OPTION_FIELDS = {**{v: k for k, v in COMPONENTS.items()}}


def outside(bound, number=float):
    """The value just outside ``bound`` (an annotated_types bound) and its text."""
    attr, op = OPS[type(bound)]
    limit = getattr(bound, attr)
    step = 1 if number is int or isinstance(limit, int) else 0.5
    value = {
        "ge": limit - step,
        "gt": limit,
        "le": limit + step,
        "lt": limit,
    }[attr]
    if number is int:
        value = int(value)
    return value, f"{op} {limit}"


def inclusive(bound):
    attr, _ = OPS[type(bound)]
    return getattr(bound, attr) if attr in ("ge", "le") else None


def _listed(name):
    """Text the message of an unknown name shows: the default among the names listed."""
    default = default_of(name)
    return "choose one of" if default is None else str(default)


def field_cases():
    """(field, bad value, what the message must say is allowed), one per declared bound."""
    cases = []
    for name, info in Config.model_fields.items():
        number = int if "int" in str(info.annotation) else float
        declared = False
        for item in info.metadata:
            if type(item) in OPS:
                value, allowed = outside(item, number)
                # one bound: "lr needs to be >= 0.0"; two: "0.0 <= momentum < 1.0"
                op, limit = allowed.split(" ")
                flipped = {">=": "<=", ">": "<"}.get(op)
                either = (allowed, f"{limit} {flipped} {name}") if flipped else (allowed,)
                cases.append(pytest.param(name, value, either, id=f"{name}{allowed}"))
                declared = True
            elif isinstance(item, Rules):
                cases.append(pytest.param(name, ("no_such_rule",), "aggregators:", id=name))
                declared = True
            elif isinstance(item, Registered):
                cases.append(
                    pytest.param(name, "no_such_name", _listed(name), id=name)
                )  # the message lists the registered names, the default among them
                declared = True
            elif isinstance(item, annotated_types.MinLen):
                cases.append(pytest.param(name, "", "non-empty", id=f"{name}-empty"))
                declared = True
            elif type(item).__name__ == "_RuleOptions":
                cases.append(
                    pytest.param(name, {"median": {"no_such_option": 1}}, "valid options", id=name)
                )
                declared = True
        if name in OPTION_FIELDS:
            cases.append(pytest.param(name, {"no_such_option": 1}, "valid options", id=name))
            declared = True
        if name == "topology_options":  # a server algorithm takes no graph (its options: below)
            cases.append(pytest.param(name, {"p": 0.5}, "decentralized algorithms", id=name))
            declared = True
        if name == "plugins":
            cases.append(pytest.param(name, ("no_such_plugin_module",), "dotted module", id=name))
            declared = True
        assert declared, f"config field {name} declares no range or set"
    return cases


@pytest.mark.parametrize("name, value, allowed", field_cases())
def test_every_config_field_refuses_a_value_outside_its_declaration(name, value, allowed):
    with pytest.raises(ConfigError) as info:
        Config(**{name: value}).validate()
    message = str(info.value)
    shown = repr(value) if not isinstance(value, str) or value else "''"
    label = "plugin" if name == "plugins" else name
    assert label in message, message
    assert shown in message or repr(value[0]) in message, message
    if isinstance(allowed, tuple):
        assert any(text in message for text in allowed), message
    else:
        assert allowed in message, message


@pytest.mark.parametrize("name", list(Config.model_fields))
def test_inclusive_bounds_of_config_fields_are_accepted(name):
    for item in Config.model_fields[name].metadata:
        if type(item) in OPS and inclusive(item) is not None:
            Config(**{name: inclusive(item)})


def option_cases():
    """(kind, name, option, bad value, allowed text, boundary value or None) per declared bound
    or set of every registered component option."""
    cases = []
    for kind, reg in REGISTRIES.items():
        for entry in reg.entries():
            for option, (alternatives, _) in entry._declared().items():
                ident = f"{kind}-{entry.name}-{option}"
                for bounds, literal, number in alternatives:
                    if literal is not None:
                        allowed = ", ".join(map(repr, literal))
                        cases.append(
                            pytest.param(kind, entry.name, option, "no_such_choice", allowed,
                                         literal[0], id=ident)
                        )  # fmt: skip
                    for bound in bounds:
                        value, allowed = outside(bound, number or float)
                        if any(_within(value, *other) for other in alternatives):
                            continue  # inside another alternative (an int K, a fraction K)
                        cases.append(
                            pytest.param(kind, entry.name, option, value, f"{option} {allowed}",
                                         inclusive(bound), id=f"{ident}{allowed}")
                        )  # fmt: skip
    return cases


#: Options without a range to declare: PRNG seeds or keys, a testing hook, the
#: arguments a heterogeneity scheme receives from the run, and a graph's matrix (checked
#: whole by its topology: square, n nodes, symmetric, connected).
UNRANGED = {"key", "sampler", "labels", "num_workers", "rng", "matrix"}
#: The kinds whose options a configuration sets (COMPONENTS' options, defence_options).
CONFIGURED = (
    "attack",
    "compressor",
    "algorithm",
    "heterogeneity",
    "aggregator",
    "preaggregator",
    "topology",
)


@pytest.mark.parametrize("kind", CONFIGURED)
def test_every_configurable_option_declares_a_range_or_set(kind):
    """Every built-in's options (users' plugins, registered by other tests, may declare none)."""
    entries = registry(kind).entries()
    built_in = [e for e in entries if e.factory.__module__.startswith("jaxrobust.")]
    missing = [
        f"{entry.name}.{option}"
        for entry in built_in
        for option in entry.options()
        if option not in UNRANGED and option not in entry.ranges()
    ]
    assert not missing, f"{kind} options without a declared range or set: {missing}"


@pytest.mark.parametrize("kind, name, option, value, allowed, boundary", option_cases())
def test_every_component_option_refuses_a_value_outside_its_declaration(
    kind, name, option, value, allowed, boundary
):
    reg = registry(kind)
    with pytest.raises(ValueError) as info:
        reg.check_options(name, {option: value})
    message = str(info.value)
    assert f"{option}={value!r}" in message and f"{kind} {name!r}" in message, message
    assert allowed in message, message
    if boundary is not None:
        assert reg.check_options(name, {option: boundary}) == {option: boundary}
    # the default is inside its own declaration (a required option has none)
    default = reg.entry(name).options()[option]
    if default is not None or reg.entry(name)._declared()[option][1]:
        reg.check_options(name, {option: default})


@pytest.mark.parametrize(
    "kind, name",
    [(k, e.name) for k, reg in REGISTRIES.items() for e in reg.entries() if not e.accepts_any()],
)
def test_every_component_refuses_an_unknown_option_listing_the_valid_ones(kind, name):
    reg = registry(kind)
    with pytest.raises(ValueError) as info:
        reg.check_options(name, {"no_such_option": 1})
    message = str(info.value)
    assert f"no_such_option for {kind} {name!r}" in message
    assert "valid options (with defaults):" in message
    for option in reg.entry(name).options():
        assert f"{option}=" in message


def test_attack_option_from_a_config_names_field_value_and_range():
    with pytest.raises(ConfigError, match=r"attack_options=\{'epsilon': 0\}: option epsilon=0 "
                       r"of attack 'ipm' is out of its range: epsilon > 0"):  # fmt: skip
        Config(attack="ipm", attack_options={"epsilon": 0}).validate()
    with pytest.raises(ConfigError, match=r"direction one of 'std', 'unit', 'sign'"):
        Config(attack="min_max", attack_options={"direction": "up"}).validate()
    with pytest.raises(ConfigError, match=r"points >= 1"):
        Config(attack="alie_aware", attack_options={"points": 0.5}).validate()
    Config(attack="alie", attack_options={"z": None}).validate()


def test_constraints_read_optional_literal_and_alternative_annotations():
    hint = typing.Annotated[float, annotated_types.Ge(0)] | None
    alternatives, allows_none = _constraints(hint)
    assert allows_none and len(alternatives) == 1
    ((bounds, literal, number),) = alternatives
    assert [type(b) for b in bounds] == [annotated_types.Ge] and literal is None and number is float
    assert _constraints(typing.Literal["a", "b"])[0] == [([], ("a", "b"), None)]
    k = registry("compressor").entry("top_k")
    assert k.ranges() == {"k": "an int k >= 1 or a float k > 0 and k <= 1"}
    for good in (1, 7, 0.25, 1.0):
        registry("compressor").check_options("top_k", {"k": good})
    for bad in (0, 1.5, 0.0, True, "3"):
        with pytest.raises(ValueError, match="out of its range: an int k >= 1 or a float"):
            registry("compressor").check_options("top_k", {"k": bad})
