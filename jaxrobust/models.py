"""Models, losses and metrics for the experiments (flax.linen, pure and vmappable).

Every model is a :class:`flax.linen.Module` without mutable collections (no
BatchNorm running statistics, no dropout), so ``model.apply(params, x)`` is a pure
function of ``(params, x)`` that can be ``jax.vmap``-ed over a worker axis or a seed
axis. Inputs are batched float32 arrays: NHWC images ``(B, H, W, C)`` for the
convolutional models, and flat features ``(B, d)`` *or* images (flattened to
``(B, H*W*C)``) for :class:`LogisticRegression` and :class:`MLP`. Outputs are logits
of shape ``(B, num_classes)``.

Parameter counts on each model's standard input (10 classes unless stated):

* ``logistic_regression`` (:class:`LogisticRegression`): 248 on a9a (123 features,
  2 classes); 7,850 on 28x28x1.
* ``mlp`` (:class:`MLP`, hidden 128, 128): 118,282 on 28x28x1.
* ``arc_cnn`` (:class:`ArcCNN`): 431,080 on 28x28x1.
* ``cifar_cnn`` (:class:`CifarCNN`): 321,290 on 32x32x3.
* ``resnet20`` (:class:`ResNet20`, option-A shortcuts, GroupNorm): 269,722 on 32x32x3
  (272,474 with ``shortcut="projection"``).
* ``resnet18`` (:class:`ResNet18`, projection shortcuts, GroupNorm): 11,173,962 on 32x32x3.

Typical use::

    model = make_model("arc_cnn", num_classes=10)
    params = init_params(model, jax.random.key(0), (28, 28, 1))
    loss_fn = cross_entropy_loss(model, l2=1e-4)
    grads = jax.vmap(jax.grad(loss_fn), in_axes=(None, 0))(params, (xs, ys))  # per worker
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrobust.core import registry
from jaxrobust.core.types import Problem

__all__ = [
    "MODELS",
    "ArcCNN",
    "BasicBlock",
    "CifarCNN",
    "LogisticRegression",
    "MLP",
    "ResNet",
    "ResNet18",
    "ResNet20",
    "accuracy",
    "count_params",
    "cross_entropy_loss",
    "init_params",
    "make_model",
    "resolve_model",
]

Params = Any  # a flax variables dict, ``{"params": {...}}``
Batch = tuple[jax.Array, jax.Array]


def _flatten(x: jax.Array) -> jax.Array:
    """``(B, ...) -> (B, prod(...))`` in float32; a ``(B, d)`` input is left as is."""
    x = jnp.asarray(x, jnp.float32)
    if x.ndim < 2:
        raise ValueError(f"expected a batched input of rank >= 2, got shape {x.shape}")
    return x.reshape(x.shape[0], -1)


def _images(x: jax.Array, name: str) -> jax.Array:
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 4:
        raise ValueError(f"{name} expects NHWC images of shape (B, H, W, C), got {x.shape}")
    return x


class LogisticRegression(nn.Module):
    """Multinomial logistic regression: one ``Dense(num_classes)`` on the flattened input.

    ``d * K + K`` parameters for ``d`` features and ``K`` classes (248 on a9a's 123
    features with ``K = 2``; 7,850 on 28x28x1 images with ``K = 10``).

    Binary data (a9a, LIBSVM) has two options, both handled by :func:`cross_entropy_loss`
    and :func:`accuracy`, with integer labels in ``{0, 1}``:

    * ``num_classes=2``: softmax cross-entropy over two logits. With ``l2`` on all
      parameters its minimiser has ``(w_1, b_1) = -(w_0, b_0)``, and its minimum is
      that of the usual binary objective
      ``mean log(1 + exp(-y (<w, x> + b))) + (l2 / 4) ||(w, b)||^2`` in
      ``(w, b) = (w_1 - w_0, b_1 - b_0)``: the same problem with half the constant.
    * ``num_classes=1``: a single logit with sigmoid binary cross-entropy, exactly the
      usual objective ``mean log(1 + exp(-y (<w, x> + b))) + (l2 / 2) ||(w, b)||^2``
      with ``y = 2 * label - 1``. Use this to match the papers' ``f(x) - f*`` plots.

    LIBSVM labels in ``{-1, +1}`` must be mapped to ``{0, 1}`` first.

    Attributes
    ----------
    num_classes : int
        ``K``, the number of logits (1 for the sigmoid binary model).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> model = LogisticRegression(num_classes=2)
    >>> params = init_params(model, jax.random.key(0), (123,))
    >>> count_params(params), model.apply(params, jnp.zeros((4, 123))).shape
    (248, (4, 2))
    """

    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(self.num_classes, name="dense")(_flatten(x))


class MLP(nn.Module):
    """Multi-layer perceptron on the flattened input: ``Dense(h) -> ReLU`` per hidden width.

    ``Dense(h) -> ReLU`` for each ``h`` in ``hidden``, then ``Dense(num_classes)``.

    With the default ``hidden=(128, 128)`` on 28x28x1 (784 features) and 10 classes:
    ``784*128+128 + 128*128+128 + 128*10+10 = 118,282`` parameters.

    Attributes
    ----------
    num_classes : int
        Number of logits.
    hidden : sequence of int
        Widths of the hidden layers.
    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> model = MLP(num_classes=10)
    >>> shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    >>> count_params(shapes)
    118282
    """

    num_classes: int
    hidden: Sequence[int] = (128, 128)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = _flatten(x)
        for i, h in enumerate(self.hidden):
            x = nn.relu(nn.Dense(h, name=f"dense_{i}")(x))
        return nn.Dense(self.num_classes, name="head")(x)


def _max_pool(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, window_shape=(2, 2), strides=(2, 2), padding="VALID")


class ArcCNN(nn.Module):
    """The MNIST / Fashion-MNIST CNN of the ARC paper (Allouah et al.).

    ``conv 5x5x20 (VALID) -> ReLU -> maxpool 2x2/2 -> conv 5x5x50 (VALID) -> ReLU ->
    maxpool 2x2/2 -> flatten -> dense 500 -> ReLU -> dense num_classes``.

    On 28x28x1 the feature maps are 24x24x20, 12x12x20, 8x8x50, 4x4x50 (800 features),
    and with 10 classes it has exactly **431,080** parameters:
    ``520 + 25,050 + 400,500 + 5,010``.

    Inputs must be NHWC images ``(B, H, W, C)`` (``ValueError`` otherwise).

    References
    ----------
    Allouah, Guerraoui, Gupta, Jellouli, Rizk, Stephan, "Boosting robustness by
    clipping gradients in distributed learning", AISTATS 2025 (arXiv 2024).
    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> model = ArcCNN()
    >>> shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    >>> count_params(shapes)
    431080
    """

    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = _images(x, "ArcCNN")
        x = _max_pool(nn.relu(nn.Conv(20, (5, 5), padding="VALID", name="conv_0")(x)))
        x = _max_pool(nn.relu(nn.Conv(50, (5, 5), padding="VALID", name="conv_1")(x)))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(500, name="dense_0")(x))
        return nn.Dense(self.num_classes, name="head")(x)


class CifarCNN(nn.Module):
    """A small standard CIFAR-10 CNN (no normalisation).

    Three blocks of ``conv 3x3 (SAME) -> ReLU -> maxpool 2x2/2`` with ``channels``
    (default 32, 64, 64), then ``flatten -> dense 256 -> ReLU -> dense num_classes``.

    On 32x32x3 the maps are 16x16x32, 8x8x64, 4x4x64 (1,024 features); with 10 classes
    it has **321,290** parameters: ``896 + 18,496 + 36,928 + 262,400 + 2,570``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> model = CifarCNN()
    >>> shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    >>> count_params(shapes)
    321290
    """

    num_classes: int = 10
    channels: Sequence[int] = (32, 64, 64)
    hidden: int = 256

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = _images(x, "CifarCNN")
        for i, c in enumerate(self.channels):
            x = _max_pool(nn.relu(nn.Conv(c, (3, 3), padding="SAME", name=f"conv_{i}")(x)))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(self.hidden, name="dense_0")(x))
        return nn.Dense(self.num_classes, name="head")(x)


def _conv(features: int, kernel: int, strides: int, name: str) -> nn.Conv:
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(strides, strides),
        padding="SAME" if kernel > 1 else "VALID",
        use_bias=False,
        name=name,
    )


def _norm(num_groups: int, name: str) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=num_groups, epsilon=1e-5, name=name)


class BasicBlock(nn.Module):
    """ResNet basic block with GroupNorm:
    ``conv3x3(s) -> GN -> ReLU -> conv3x3 -> GN``, plus the shortcut, then ReLU.

    Convolutions have no bias (the GroupNorm offset plays its part). The shortcut is the
    identity unless the shape changes (stride 2 or more channels), where
    ``shortcut="A"`` subsamples spatially and zero-pads the channels (no parameters;
    He et al. 2016, CIFAR option A) and ``shortcut="projection"`` is
    ``conv1x1(s) -> GN`` (option B).

    Attributes
    ----------
    features : int
        Output channels.
    strides : int
        Stride of the first convolution (and of the shortcut).
    num_groups : int
        GroupNorm groups (must divide ``features``).
    shortcut : str
        ``"A"`` or ``"projection"``; used only where the shape changes.

    Raises
    ------
    ValueError
        (when applied) ``shortcut`` neither ``"A"`` nor ``"projection"`` where
        the shape changes, or an option-A shortcut that would reduce the
        channels.

    References
    ----------
    He, Zhang, Ren, Sun, "Deep residual learning for image recognition",
    CVPR 2016. Wu, He, "Group normalization", ECCV 2018.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> block = BasicBlock(8, strides=2, shortcut="A")
    >>> x = jnp.zeros((2, 8, 8, 4))
    >>> params = jax.eval_shape(block.init, jax.random.key(0), x)  # shapes only
    >>> jax.eval_shape(block.apply, params, x).shape, count_params(params)  # 288 + 576 + 2 * 16
    ((2, 4, 4, 8), 896)
    """

    features: int
    strides: int = 1
    num_groups: int = 2
    shortcut: str = "projection"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s, g = self.strides, self.num_groups
        y = nn.relu(_norm(g, "norm_0")(_conv(self.features, 3, s, "conv_0")(x)))
        y = _norm(g, "norm_1")(_conv(self.features, 3, 1, "conv_1")(y))
        in_features = x.shape[-1]
        if s != 1 or in_features != self.features:
            if self.shortcut == "A":
                extra = self.features - in_features
                if extra < 0:
                    raise ValueError("option-A shortcuts cannot reduce the number of channels")
                x = x[:, ::s, ::s, :]
                x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
            elif self.shortcut == "projection":
                x = _norm(g, "norm_shortcut")(_conv(self.features, 1, s, "conv_shortcut")(x))
            else:
                raise ValueError(f"shortcut must be 'A' or 'projection', got {self.shortcut!r}")
        return nn.relu(y + x)


class ResNet(nn.Module):
    """CIFAR-style ResNet of :class:`BasicBlock` s with GroupNorm (no batch statistics).

    ``conv3x3 (widths[0], no bias) -> GN -> ReLU``, then one stage per entry of
    ``stage_sizes`` with ``widths[i]`` channels (stride 2 in the first block of every
    stage but the first), global average pooling and ``Dense(num_classes)``.

    Every GroupNorm has ``num_groups`` groups (default 2; it must divide every width).
    GroupNorm normalises each example on its own, so the output for an example does
    not depend on the rest of the batch and ``apply`` is pure and vmappable over
    workers. The defaults are ResNet-20 (see :class:`ResNet20`).

    Raises
    ------
    ValueError
        (when applied) Inputs that are not NHWC images, or ``stage_sizes`` and
        ``widths`` of different lengths.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> model = ResNet(num_classes=3, stage_sizes=(1, 1), widths=(4, 8))
    >>> x = jnp.zeros((2, 8, 8, 1))
    >>> params = jax.eval_shape(model.init, jax.random.key(0), x)  # shapes only
    >>> jax.eval_shape(model.apply, params, x).shape
    (2, 3)
    """

    num_classes: int = 10
    stage_sizes: Sequence[int] = (3, 3, 3)
    widths: Sequence[int] = (16, 32, 64)
    num_groups: int = 2
    shortcut: str = "A"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = _images(x, type(self).__name__)
        if len(self.stage_sizes) != len(self.widths):
            raise ValueError("stage_sizes and widths must have the same length")
        x = _conv(self.widths[0], 3, 1, "stem_conv")(x)
        x = nn.relu(_norm(self.num_groups, "stem_norm")(x))
        for i, (n_blocks, width) in enumerate(zip(self.stage_sizes, self.widths, strict=True)):
            for j in range(n_blocks):
                x = BasicBlock(
                    width,
                    strides=2 if (i > 0 and j == 0) else 1,
                    num_groups=self.num_groups,
                    shortcut=self.shortcut,
                    name=f"stage{i}_block{j}",
                )(x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(x)


class ResNet20(ResNet):
    """ResNet-20 for CIFAR (He et al. 2016, section 4.2) with GroupNorm.

    3x3 stem with 16 channels, 3 stages of 3 basic blocks with 16/32/64 channels,
    global average pooling, dense. Default ``shortcut="A"`` (parameter-free subsample +
    zero-pad, as in the paper) and ``num_groups=2`` (so 8/16/32 channels per group).
    GroupNorm has the same affine parameters as BatchNorm, so on 32x32x3 with 10
    classes it has **269,722** parameters (the paper's 0.27M); ``shortcut="projection"``
    adds two 1x1 convs (512 + 2,048) and their GroupNorms (64 + 128): **272,474**.

    References
    ----------
    He, Zhang, Ren, Sun, "Deep residual learning for image recognition",
    CVPR 2016.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> model = ResNet20()
    >>> shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    >>> count_params(shapes)
    269722
    """


class ResNet18(ResNet):
    """ResNet-18, CIFAR variant (3x3 stem, no stem max-pool), with GroupNorm.

    3x3 stem with 64 channels, 4 stages of 2 basic blocks with 64/128/256/512 channels,
    1x1-projection shortcuts (``conv1x1 -> GN``) where the shape changes, global
    average pooling, dense; ``num_groups=2`` in every GroupNorm. On 32x32x3 with 10
    classes: **11,173,962** parameters (the same as with BatchNorm).

    References
    ----------
    He, Zhang, Ren, Sun, "Deep residual learning for image recognition",
    CVPR 2016.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> model = ResNet18()
    >>> shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    >>> count_params(shapes)
    11173962
    """

    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    widths: Sequence[int] = (64, 128, 256, 512)
    shortcut: str = "projection"


MODELS = registry("model")
for _name, _factory in (
    ("logistic_regression", LogisticRegression),
    ("mlp", MLP),
    ("arc_cnn", ArcCNN),
    ("cifar_cnn", CifarCNN),
    ("resnet20", ResNet20),
    ("resnet18", ResNet18),
):
    MODELS.register(_name, _factory)


def make_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build a registered model by name.

    Parameters
    ----------
    name : str
        One of ``MODELS`` (``"logistic_regression"``, ``"mlp"``, ``"arc_cnn"``,
        ``"cifar_cnn"``, ``"resnet20"``, ``"resnet18"``).
    num_classes : int
        Number of output logits.
    **kwargs
        Passed to the model's constructor (e.g. ``hidden=(256,)`` for the MLP,
        ``num_groups=4`` for the ResNets).

    Raises
    ------
    ValueError
        For an unknown name (the message lists the valid names) or an unknown
        constructor option (the message lists the valid ones).

    Examples
    --------
    >>> make_model("mlp", 10, hidden=(32,))
    MLP(
        # attributes
        num_classes = 10
        hidden = (32,)
    )
    >>> make_model("lenet", 10)
    Traceback (most recent call last):
    ...
    ValueError: unknown model 'lenet'; choose one of: logistic_regression, mlp, ...
    """
    return MODELS.build(name, num_classes=num_classes, **kwargs)


def resolve_model(model_or_name: str | nn.Module, num_classes: int, **kwargs: Any) -> nn.Module:
    """Return ``model_or_name`` unchanged if it is an ``nn.Module``, else
    ``make_model(model_or_name, num_classes, **kwargs)``.

    A user module must map a batch ``x`` to logits ``(B, num_classes)`` through
    ``module.apply(params, x)`` without mutable collections.

    Raises
    ------
    TypeError
        Neither a string nor an ``nn.Module``.
    ValueError
        As :func:`make_model`.

    Examples
    --------
    >>> model = MLP(num_classes=2)
    >>> resolve_model(model, 10) is model, type(resolve_model("arc_cnn", 10)).__name__
    (True, 'ArcCNN')
    """
    if isinstance(model_or_name, nn.Module):
        return model_or_name
    if isinstance(model_or_name, str):
        return make_model(model_or_name, num_classes, **kwargs)
    raise TypeError(
        f"expected a model name or a flax.linen.Module, got {type(model_or_name).__name__}"
    )


def init_params(model: nn.Module, key: jax.Array, input_shape: Sequence[int]) -> Params:
    """Initialise ``model`` on a zero batch of one example of shape ``input_shape``.

    Parameters
    ----------
    model : nn.Module
    key : jax.Array
        PRNG key (``jax.random.key`` or ``PRNGKey``); may be vmapped over for seeds.
        On CPU, XLA takes seconds to compile the default threefry initialisers of a
        deep model (about 10 s for ResNet-18); ``jax.random.key(seed, impl="rbg")``
        compiles several times faster.
    input_shape : sequence of int
        Shape of ONE example, e.g. ``(28, 28, 1)`` or ``(123,)``.

    Returns
    -------
    dict
        The flax variables dict ``{"params": ...}``, to pass as
        ``model.apply(params, x)``.

    Raises
    ------
    ValueError
        The model has mutable collections (e.g. BatchNorm statistics).

    Examples
    --------
    >>> import jax
    >>> params = init_params(LogisticRegression(3), jax.random.key(0), (4,))
    >>> jax.tree_util.tree_map(lambda p: p.shape, params)
    {'params': {'dense': {'bias': (3,), 'kernel': (4, 3)}}}
    """
    x = jnp.zeros((1, *tuple(input_shape)), jnp.float32)
    variables = jax.jit(model.init)(key, x)  # one compilation instead of one per op
    extra = set(variables) - {"params"}
    if extra:
        raise ValueError(
            f"model has mutable collections {sorted(extra)}; only stateless models "
            "(e.g. GroupNorm instead of BatchNorm) can be vmapped over workers"
        )
    return variables


def count_params(params: Params) -> int:
    """Total number of scalars in a pytree of parameters.

    Works on arrays and on abstract shapes, e.g. without allocating anything::

        count_params(jax.eval_shape(model.init, key, jnp.zeros((1, 32, 32, 3))))

    Examples
    --------
    >>> import numpy as np
    >>> count_params({"w": np.zeros((3, 4)), "b": np.zeros(4)})
    16
    """
    return sum(math.prod(np.shape(leaf)) for leaf in jax.tree_util.tree_leaves(params))


def _sq_norm(params: Params) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(params)
    return sum((jnp.sum(jnp.square(leaf)) for leaf in leaves), jnp.zeros((), jnp.float32))


def _data_loss(logits: jax.Array, y: jax.Array) -> jax.Array:
    y = jnp.asarray(y)
    if logits.shape[-1] == 1:  # single-logit binary model, labels in {0, 1}
        return jnp.mean(optax.sigmoid_binary_cross_entropy(logits[..., 0], y.astype(logits.dtype)))
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y.astype(jnp.int32)))


def cross_entropy_loss(model: nn.Module, l2: float = 0.0) -> Callable[[Params, Batch], jax.Array]:
    """Mean cross-entropy of ``model`` on a batch, plus ``0.5 * l2 * ||params||^2``.

    Parameters
    ----------
    model : nn.Module
        Returns logits ``(B, K)``. With ``K >= 2`` the loss is softmax cross-entropy
        with integer labels in ``[0, K)``; with ``K == 1`` it is sigmoid binary
        cross-entropy with labels in ``{0, 1}`` (see :class:`LogisticRegression`).
    l2 : float
        Regularisation constant. The squared norm is over **all** parameters, biases
        and GroupNorm scales/offsets included, so logistic regression with ``l2 > 0``
        is ``l2``-strongly convex (and it matches ``weight_decay`` in torch's SGD).

    Returns
    -------
    ``loss(params, batch) -> scalar`` with ``batch = (x, y)``; pure, so
    ``jax.vmap(jax.grad(loss), in_axes=(None, 0))`` gives per-worker gradients.

    Examples
    --------
    With zero parameters every class has logit 0: the loss is ``log K``.

    >>> import jax, jax.numpy as jnp
    >>> model = LogisticRegression(4)
    >>> params = jax.tree_util.tree_map(jnp.zeros_like, init_params(model, jax.random.key(0), (2,)))
    >>> loss = cross_entropy_loss(model, l2=0.1)
    >>> round(float(loss(params, (jnp.ones((3, 2)), jnp.array([0, 1, 3])))), 6)
    1.386294
    """
    l2 = float(l2)

    def loss(params: Params, batch: Batch) -> jax.Array:
        x, y = batch
        value = _data_loss(model.apply(params, x), y)
        if l2:
            value = value + 0.5 * l2 * _sq_norm(params)
        return value

    return loss


def accuracy(model: nn.Module) -> Callable[[Params, Batch], jax.Array]:
    """``accuracy(params, (x, y)) -> scalar``: fraction of correct predictions.

    The prediction is ``argmax`` of the logits, or ``logit > 0`` for a single-logit
    binary model.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> model = LogisticRegression(1)
    >>> params = {"params": {"dense": {"kernel": jnp.ones((1, 1)), "bias": jnp.zeros(1)}}}
    >>> x, y = jnp.array([[1.0], [-1.0], [2.0]]), jnp.array([1, 0, 0])
    >>> round(float(accuracy(model)(params, (x, y))), 6)  # the third is wrong
    0.666667
    """

    def acc(params: Params, batch: Batch) -> jax.Array:
        x, y = batch
        logits = model.apply(params, x)
        if logits.shape[-1] == 1:
            pred = (logits[..., 0] > 0).astype(jnp.int32)
        else:
            pred = jnp.argmax(logits, axis=-1)
        return jnp.mean((pred == jnp.asarray(y).astype(jnp.int32)).astype(jnp.float32))

    return acc


def problem_for(config, dataset, model: str | nn.Module | None = None) -> Problem:
    """The :class:`~jaxrobust.core.types.Problem` of a flax module.

    ``model`` (a registered name or a module), else ``config.model``, with
    ``dataset.num_classes`` logits, initialised on ``dataset.input_shape`` and
    trained with the cross-entropy plus ``config.l2``.

    Parameters
    ----------
    config : Config
        Gives ``model`` and ``l2``.
    dataset : Dataset
        Gives ``num_classes`` and ``input_shape``.
    model : str or nn.Module, optional
        Replaces ``config.model``.

    Returns
    -------
    Problem

    Examples
    --------
    >>> import jax
    >>> from jaxrobust.config import Config
    >>> from jaxrobust.data import load_dataset
    >>> problem = problem_for(Config(model="logistic_regression"), load_dataset("digits"))
    >>> count_params(problem.init(jax.random.key(0)))
    650
    """
    module = resolve_model(config.model if model is None else model, dataset.num_classes)
    return Problem(
        init=lambda key: init_params(module, key, dataset.input_shape),
        loss=cross_entropy_loss(module, config.l2),
        accuracy=accuracy(module),
    )
