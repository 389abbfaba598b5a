"""One registry type for every catalogue: rules, attacks, algorithms, data, models, ...

A :class:`Registry` maps names to factories. Built-in entries are registered
where they are defined (with the ``register`` decorator of their registry);
a registry knows which modules hold its built-ins and imports them on first
lookup, so importing :mod:`jaxrobust.core` imports no JAX. Users add their own
entries from their own module with :func:`register`::

    import jaxrobust as jr

    @jr.register("aggregator", "my_mean")
    def my_mean(f, *, n=None):
        ...  # return an optax.GradientTransformation

after which ``defence: [my_mean]`` works in configs, sweeps and the CLI like
a built-in name. Unknown names and unknown options raise ``ValueError`` listing
the valid ones.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import numbers
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import annotated_types

__all__ = ["Entry", "Registry", "REGISTRIES", "check_defence", "register", "registry"]


# Arguments a factory receives from the run, not from the user's options (and
# flax's own module fields).
_NOT_OPTIONS = ("f", "n", "num_classes", "parent", "name", "setup")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One registered name: its factory and a one-line description.

    Attributes
    ----------
    name : str
        The name configs, sweeps and the CLI use.
    factory : callable
        What :meth:`Registry.build` calls.
    description : str
        One line for ``jaxrobust list``: the ``description`` given at
        registration, else the first line of the factory's docstring without
        its final full stop.

    Examples
    --------
    >>> def scaled(f, *, n=None, factor=2.0, **extra):
    ...     return factor
    >>> entry = Entry("scaled", scaled, "a scaled mean")
    >>> entry.options(), sorted(entry.parameters()), entry.accepts_any()
    ({'factor': 2.0}, ['f', 'factor', 'n'], True)
    """

    name: str
    factory: Callable[..., Any]
    description: str

    def options(self) -> dict[str, Any]:
        """The factory's options: keyword parameters and their defaults (``None`` if required).

        ``f`` and ``n`` of the rule factories and ``*args`` / ``**kwargs``
        are not options, nor are ``num_classes``, ``setup`` and flax's
        ``parent`` and ``name``. A factory with an ``options`` mapping
        attribute (options it takes from elsewhere, such as
        ``config.algorithm_options``) declares them there instead.

        Returns
        -------
        dict
            Option name to default, in signature order (``{}`` if the
            signature cannot be read).

        Examples
        --------
        >>> def rule(f, *, n=None, tau=1.0, key):
        ...     pass
        >>> Entry("rule", rule, "").options()
        {'tau': 1.0, 'key': None}
        """
        declared = getattr(self.factory, "options", None)
        if isinstance(declared, Mapping):  # options a factory takes from elsewhere (a config)
            return dict(declared)
        try:
            params = inspect.signature(self.factory).parameters.values()
        except (TypeError, ValueError):
            return {}
        return {
            p.name: (None if p.default is inspect.Parameter.empty else p.default)
            for p in params
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in _NOT_OPTIONS
        }

    def parameters(self) -> set[str]:
        """Every keyword the factory takes (options and the fixed ``f``, ``n``, ...).

        Returns
        -------
        set of str
            The names of the positional-or-keyword and keyword-only
            parameters, or the keys of a declared ``options`` mapping.

        Examples
        --------
        >>> sorted(Entry("r", lambda f, *, n=None, tau=1.0: None, "").parameters())
        ['f', 'n', 'tau']
        """
        if isinstance(getattr(self.factory, "options", None), Mapping):
            return set(self.factory.options)
        try:
            params = inspect.signature(self.factory).parameters.values()
        except (TypeError, ValueError):
            return set()
        return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}

    def ranges(self) -> dict[str, str]:
        """The options' declared valid ranges or sets, as text (``"epsilon > 0"``).

        An option declares them in the factory's signature, with
        ``typing.Annotated`` and ``annotated_types`` bounds (``Ge``, ``Gt``,
        ``Le``, ``Lt``), or as a ``typing.Literal`` set; ``| None`` allows None
        (the option's documented default). :meth:`Registry.check_options`
        checks them.

        Returns
        -------
        dict of str to str
            Option name to its range, for the options that declare one, in
            signature order.

        Examples
        --------
        >>> from typing import Annotated, Literal
        >>> from annotated_types import Ge, Gt
        >>> def rule(f, *, n=None, tau: Annotated[float, Gt(0)] = 1.0,
        ...          mode: Literal["a", "b"] = "a", steps: Annotated[int, Ge(1)] | None = None):
        ...     pass
        >>> Entry("rule", rule, "").ranges()
        {'tau': 'tau > 0', 'mode': "mode one of 'a', 'b'", 'steps': 'steps >= 1 or None'}
        """
        return {name: _range_text(name, *spec) for name, spec in self._declared().items()}

    def _declared(self) -> dict[str, tuple[list[tuple], bool]]:
        """Option -> (alternatives, None allowed); an alternative is (bounds, literal, number).

        The hints are the factory's signature annotations, or its
        ``option_types`` mapping (option -> annotation) where it declares its
        options in an ``options`` mapping.
        """
        declared = getattr(self.factory, "option_types", None)
        if isinstance(declared, Mapping):
            hints = dict(declared)
        else:
            try:
                hints = typing.get_type_hints(self.factory, include_extras=True)
            except Exception:  # noqa: BLE001 - an unreadable annotation declares nothing
                return {}
        out = {}
        for name in self.options():
            if name not in hints:
                continue
            alternatives, allows_none = _constraints(hints[name])
            if any(bounds or literal is not None for bounds, literal, _ in alternatives):
                out[name] = (alternatives, allows_none)
        return out

    def check_ranges(self, kind: str, options: Mapping[str, Any]) -> None:
        """``ValueError`` naming the option, its value and its declared range, if outside it.

        Examples
        --------
        >>> from typing import Annotated
        >>> from annotated_types import Gt
        >>> def rule(f, *, tau: Annotated[float, Gt(0)] = 1.0):
        ...     pass
        >>> Entry("rule", rule, "").check_ranges("aggregator", {"tau": -1.0})
        Traceback (most recent call last):
        ...
        ValueError: option tau=-1.0 of aggregator 'rule' is out of its range: tau > 0
        """
        for option, (alternatives, allows_none) in self._declared().items():
            if option not in options:
                continue
            value = options[option]
            if value is None and allows_none:
                continue
            if any(_within(value, *alternative) for alternative in alternatives):
                continue
            text = _range_text(option, alternatives, allows_none)
            raise ValueError(
                f"option {option}={value!r} of {kind} {self.name!r} is out of its range: {text}"
            )

    def accepts_any(self) -> bool:
        """Whether the factory takes any keyword (``**kwargs``, or an unreadable signature).

        A factory with a declared ``options`` mapping never does.

        Examples
        --------
        >>> Entry("r", lambda **kw: None, "").accepts_any()
        True
        >>> Entry("r", lambda f, *, n=None: None, "").accepts_any()
        False
        """
        if isinstance(getattr(self.factory, "options", None), Mapping):
            return False
        try:
            params = inspect.signature(self.factory).parameters.values()
        except (TypeError, ValueError):
            return True
        return any(p.kind == p.VAR_KEYWORD for p in params)


_BOUNDS = {
    annotated_types.Ge: (">=", "ge"),
    annotated_types.Gt: (">", "gt"),
    annotated_types.Le: ("<=", "le"),
    annotated_types.Lt: ("<", "lt"),
}


def _constraints(hint: Any) -> tuple[list[tuple], bool]:
    """An annotation's alternatives (bounds, Literal set, number type) and whether None is
    allowed: ``Annotated[int, Ge(1)] | Annotated[float, Gt(0), Le(1)]`` has two."""
    alternatives: list[tuple] = []
    allows_none = False
    parts = [hint]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        parts = list(typing.get_args(hint))
    for part in parts:
        if part is type(None):
            allows_none = True
            continue
        bounds: list[Any] = []
        if typing.get_origin(part) is typing.Annotated:
            base, *metadata = typing.get_args(part)
            bounds = [m for m in metadata if type(m) in _BOUNDS]
            part = base
        if typing.get_origin(part) is typing.Literal:
            alternatives.append(([], typing.get_args(part), None))
        elif part in (int, float):
            alternatives.append((bounds, None, part))
        elif part is bool:
            alternatives.append(([], (False, True), None))
        else:
            alternatives.append((bounds, None, None))
    return alternatives, allows_none


def _within(value: Any, bounds: list[Any], literal: tuple | None, number: type | None) -> bool:
    if literal is not None:
        return any(value == choice and type(value) is type(choice) for choice in literal)
    if number is None and not bounds:
        return True  # a type without a declared range (e.g. a callable)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    if number is int and not float(value).is_integer():
        return False
    if number is int and isinstance(value, float):
        return False
    checks = {
        ">=": lambda limit: value >= limit,
        ">": lambda limit: value > limit,
        "<=": lambda limit: value <= limit,
        "<": lambda limit: value < limit,
    }
    return all(checks[_BOUNDS[type(b)][0]](getattr(b, _BOUNDS[type(b)][1])) for b in bounds)


def _range_text(name: str, alternatives: list[tuple], allows_none: bool) -> str:
    texts = []
    for bounds, literal, number in alternatives:
        if literal is not None:
            texts.append(f"{name} one of {', '.join(map(repr, literal))}")
            continue
        parts = [f"{name} {_BOUNDS[type(b)][0]} {getattr(b, _BOUNDS[type(b)][1])}" for b in bounds]
        text = " and ".join(parts) or name
        if number is int and len(alternatives) > 1:
            text = f"an int {text}"
        elif number is float and len(alternatives) > 1:
            text = f"a float {text}"
        texts.append(text)
    return " or ".join(texts) + (" or None" if allows_none else "")


def _first_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0].rstrip(".") if doc.strip() else ""


class Registry(Mapping[str, Callable[..., Any]]):
    """Names mapped to factories, for one kind of component.

    Parameters
    ----------
    kind : str
        What the registry holds (``"aggregator"``, ``"attack"``, ...), used in
        error messages and by :func:`register`.
    builtins : tuple of str
        Modules that register the built-in entries; imported on first lookup.
    description : str
        One line shown by ``jaxrobust list``.

    Notes
    -----
    A registry is a read-only ``Mapping`` from names to factories, in
    registration order (built-ins first).

    Examples
    --------
    >>> reg = Registry("colour")
    >>> @reg.register("red")
    ... def red(shade=1.0):
    ...     '''A red.'''
    ...     return ("red", shade)
    >>> reg.build("red", shade=0.5)
    ('red', 0.5)
    >>> reg.build("blue")
    Traceback (most recent call last):
    ...
    ValueError: unknown colour 'blue'; choose one of: red
    """

    def __init__(self, kind: str, builtins: tuple[str, ...] = (), description: str = ""):
        self.kind = kind
        self.description = description
        self._builtins = builtins
        self._loaded = not builtins
        self._entries: dict[str, Entry] = {}

    # -- registration -------------------------------------------------------
    def register(
        self,
        name: str,
        factory: Callable[..., Any] | None = None,
        *,
        description: str | None = None,
        replace: bool = False,
    ):
        """Register ``factory`` under ``name`` (usable as a decorator).

        Parameters
        ----------
        name : str
            A non-empty name without whitespace or commas.
        factory : callable, optional
            The factory; when omitted, returns a decorator that registers the
            function it decorates.
        description : str, optional
            The line ``jaxrobust list`` shows (default: the first line of the
            factory's docstring, without its final full stop).
        replace : bool
            Allow replacing an entry already registered under ``name`` by a
            different factory.

        Returns
        -------
        callable
            ``factory`` itself, or the decorator.

        Raises
        ------
        ValueError
            If ``name`` is empty, not a string, or contains whitespace or a
            comma (checked at once), or is already registered to a different
            factory and ``replace`` is False (checked when the factory is
            added). Registering the same function again is allowed.

        Examples
        --------
        >>> reg = Registry("shape")
        >>> _ = reg.register("square", lambda: 4, description="four sides")
        >>> reg.entry("square").description
        'four sides'
        >>> reg.register("square", lambda: 5)
        Traceback (most recent call last):
        ...
        ValueError: shape 'square' is already registered; pass replace=True to override
        >>> reg.register("two words")
        Traceback (most recent call last):
        ...
        ValueError: a shape name must be a non-empty word, got 'two words'
        """
        if not isinstance(name, str) or not name or any(c.isspace() or c == "," for c in name):
            raise ValueError(f"a {self.kind} name must be a non-empty word, got {name!r}")

        def add(fn: Callable[..., Any]) -> Callable[..., Any]:
            # Built-ins first, so that a user's entry under a built-in name (with
            # replace=True) replaces it rather than being refused by it later.
            self._load()
            if name in self._entries and not replace and self._entries[name].factory is not fn:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered; pass replace=True to override"
                )
            text = description if description is not None else _first_line(fn)
            self._entries[name] = Entry(name, fn, text)
            self._order_by_module()
            return fn

        return add if factory is None else add(factory)

    def unregister(self, name: str) -> None:
        """Remove ``name`` (``ValueError`` listing the names if it is not registered)."""
        self.entry(name)
        del self._entries[name]

    def _order_by_module(self) -> None:
        """Entries in the order of the built-in modules, then users' (each in registration order).

        A built-in module may import another one mid-import (``edge_attacks``
        imports ``attacks``), so registration order alone would depend on
        which module a program happens to import first.
        """
        rank = {module: i for i, module in enumerate(self._builtins)}

        def key(item: tuple[str, Entry]) -> int:
            module = getattr(item[1].factory, "__module__", None)
            return rank.get(module, len(rank))

        self._entries = dict(sorted(self._entries.items(), key=key))

    # -- lookup ---------------------------------------------------------------
    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True  # set first: the built-in modules register while importing
            try:
                for module in self._builtins:
                    importlib.import_module(module)
            except BaseException:
                self._loaded = False
                raise

    def entry(self, name: str) -> Entry:
        """The :class:`Entry` of ``name``; ``ValueError`` listing the names if unknown.

        Imports the registry's built-in modules on first use.

        Raises
        ------
        ValueError
            ``unknown <kind> '<name>'; choose one of: ...``.

        Examples
        --------
        >>> registry("lr_schedule").entry("cosine").description
        'Cosine decay from the base rate to zero over the run'
        """
        self._load()
        if name not in self._entries:
            raise ValueError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self._entries)}"
            )
        return self._entries[name]

    def __getitem__(self, name: str) -> Callable[..., Any]:
        self._load()
        return self._entries[name].factory

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(list(self._entries))

    def __len__(self) -> int:
        self._load()
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def entries(self) -> list[Entry]:
        """Every :class:`Entry`, in registration order (built-ins first).

        Examples
        --------
        >>> [e.name for e in registry("lr_schedule").entries()][:3]
        ['constant', 'cosine', 'step']
        """
        self._load()
        return list(self._entries.values())

    def check_options(self, name: str, options: Mapping[str, Any]) -> dict[str, Any]:
        """Return ``options`` as a dict; ``ValueError`` naming the valid ones if any is unknown.

        A factory taking ``**kwargs`` accepts any option.

        Parameters
        ----------
        name : str
            A registered name.
        options : mapping
            Keyword options for its factory.

        Raises
        ------
        ValueError
            Unknown ``name`` (see :meth:`entry`), or an option the factory does
            not take: the message lists the valid options with their defaults;
            or a value outside the option's declared range or set
            (:meth:`Entry.ranges`): the message names the option, the value
            and the range.

        Examples
        --------
        >>> reg = Registry("colour")
        >>> _ = reg.register("red", lambda shade=1.0: shade)
        >>> reg.check_options("red", {"shade": 0.5})
        {'shade': 0.5}
        >>> reg.check_options("red", {"hue": 3})
        Traceback (most recent call last):
        ...
        ValueError: unknown option(s) hue for colour 'red'; valid options (with defaults): shade=1.0
        >>> registry("attack").check_options("ipm", {"epsilon": -0.5})
        Traceback (most recent call last):
        ...
        ValueError: option epsilon=-0.5 of attack 'ipm' is out of its range: epsilon > 0
        """
        entry = self.entry(name)
        options = dict(options)
        if entry.accepts_any():
            return options
        valid = entry.options()
        unknown = sorted(set(options) - entry.parameters())
        if unknown:
            listed = ", ".join(f"{k}={v!r}" for k, v in valid.items()) or "none"
            raise ValueError(
                f"unknown option(s) {', '.join(unknown)} for {self.kind} {name!r}; "
                f"valid options (with defaults): {listed}"
            )
        entry.check_ranges(self.kind, options)
        return options

    def build(self, name: str, *args: Any, **options: Any) -> Any:
        """Call the factory of ``name`` with ``args`` and the checked ``options``.

        Raises
        ------
        ValueError
            Unknown ``name`` or option (see :meth:`check_options`), or whatever
            the factory itself raises (e.g. a rule's bound on ``n`` and ``f``).

        Examples
        --------
        >>> schedule = registry("lr_schedule").build("step", 100)
        >>> float(schedule(0)), round(float(schedule(60)), 6), round(float(schedule(80)), 6)
        (1.0, 0.1, 0.01)
        """
        options = self.check_options(name, options)
        return self.entry(name).factory(*args, **options)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self)})"


_BUILTINS = {
    "aggregator": (
        ("jaxrobust.rules.aggregators",),
        "robust aggregators (the worker axis goes away)",
    ),
    "preaggregator": (
        ("jaxrobust.rules.preaggregators",),
        "pre-aggregation rules (before an aggregator)",
    ),
    "attack": (
        ("jaxrobust.attacks", "jaxrobust.edge_attacks"),
        "what the Byzantine workers send",
    ),
    "algorithm": (("jaxrobust.algorithms",), "training algorithms (one jitted step per round)"),
    "heterogeneity": (("jaxrobust.data.partition",), "how data is split over honest workers"),
    "compressor": (("jaxrobust.compression",), "compression operators of worker messages"),
    "dataset": (("jaxrobust.data.datasets",), "data sets (plus any TFDS name without data_dir)"),
    "model": (("jaxrobust.models",), "flax models"),
    "lr_schedule": (("jaxrobust.server",), "learning-rate schedules (factor of the base rate)"),
    "topology": (
        ("jaxrobust.topology",),
        "communication graphs of decentralized algorithms (or a path to an adjacency matrix)",
    ),
}

REGISTRIES: dict[str, Registry] = {
    kind: Registry(kind, modules, text) for kind, (modules, text) in _BUILTINS.items()
}


def registry(kind: str) -> Registry:
    """The registry of ``kind``; ``ValueError`` listing the kinds if unknown.

    Parameters
    ----------
    kind : str
        One of ``"aggregator"``, ``"preaggregator"``, ``"attack"``,
        ``"algorithm"``, ``"heterogeneity"``, ``"compressor"``, ``"dataset"``,
        ``"model"``, ``"lr_schedule"``, ``"topology"``.

    Returns
    -------
    Registry

    Raises
    ------
    ValueError
        ``unknown registry kind '<kind>'; choose one of: ...``.

    Examples
    --------
    >>> registry("model").kind
    'model'
    >>> registry("optimiser")
    Traceback (most recent call last):
    ...
    ValueError: unknown registry kind 'optimiser'; choose one of: aggregator, ...
    """
    if kind not in REGISTRIES:
        raise ValueError(f"unknown registry kind {kind!r}; choose one of: {', '.join(REGISTRIES)}")
    return REGISTRIES[kind]


def register(kind: str, name: str, *, description: str | None = None, replace: bool = False):
    """Decorator registering a user's component under ``name`` in the registry of ``kind``.

    Parameters
    ----------
    kind : str
        One of ``"aggregator"``, ``"preaggregator"``, ``"attack"``,
        ``"algorithm"``, ``"heterogeneity"``, ``"compressor"``, ``"dataset"``,
        ``"model"``, ``"lr_schedule"``, ``"topology"``.
    name : str
        The name configs, sweeps and the CLI use.
    description : str, optional
        One line for ``jaxrobust list`` (default: the docstring's first line).
    replace : bool
        Allow replacing an existing entry.

    Returns
    -------
    callable
        A decorator that registers the function or class it decorates and
        returns it unchanged.

    Raises
    ------
    ValueError
        Unknown ``kind`` (the message lists the kinds); a name that is empty or
        contains whitespace or a comma; or a name already taken by another
        factory without ``replace=True`` (raised when the decorator is applied).

    Notes
    -----
    What each kind registers (the same form as the built-ins):

    - ``aggregator`` / ``preaggregator``: ``factory(f, *, n=None, **options)``
      returning an ``optax.GradientTransformation`` over updates with a leading
      worker axis (aggregators remove it).
    - ``attack``: ``factory(**options)`` returning a
      :class:`jaxrobust.attacks.Attack`.
    - ``algorithm``: ``factory(setup)`` returning a
      :class:`jaxrobust.algorithms.Algorithm`.
    - ``heterogeneity``: ``scheme(labels, num_workers, rng, **options)``
      returning a list of index arrays.
    - ``compressor``: ``factory(**options)`` returning a
      :class:`jaxrobust.compression.Compressor`.
    - ``dataset``: ``loader(data_dir, *, test_fraction, seed)`` returning a
      :class:`jaxrobust.data.Dataset`.
    - ``model``: a flax module class taking ``num_classes``.
    - ``lr_schedule``: ``factory(steps)`` returning an optax schedule (1 at step 0).

    Examples
    --------
    >>> import jaxrobust as jr
    >>> @jr.register("lr_schedule", "halve_once", replace=True)
    ... def halve_once(steps):
    ...     '''x0.5 at the run's midpoint.'''
    ...     import optax
    ...     return optax.piecewise_constant_schedule(1.0, {steps // 2: 0.5})
    >>> "halve_once" in jr.registry("lr_schedule")
    True
    """
    return registry(kind).register(name, description=description, replace=replace)


def check_defence(names) -> tuple[str, ...]:
    """Check a defence chain: registered pre-aggregators first, one aggregator last.

    Only the names and their order are checked here; the rules' bounds on
    ``n`` and ``f`` are checked when the chain is built
    (:func:`jaxrobust.rules.defence.build_defence`).

    Parameters
    ----------
    names : iterable of str
        Rule names in the order they are applied.

    Returns
    -------
    tuple of str
        The names.

    Raises
    ------
    ValueError
        An empty chain or one whose last name is not a registered aggregator
        (``defence must end with an aggregator, ...``); a name that is neither
        an aggregator nor a pre-aggregator (``unknown rule ...``, listing the
        valid ones); or an aggregator before the last place
        (``... is misplaced: pre-aggregators first, one aggregator last``).

    Examples
    --------
    >>> check_defence(["arc", "nnm", "trimmed_mean"])
    ('arc', 'nnm', 'trimmed_mean')
    >>> check_defence(["trimmed_mean", "nnm"])
    Traceback (most recent call last):
    ...
    ValueError: defence must end with an aggregator, got ['trimmed_mean', 'nnm']; aggregators: ...
    >>> check_defence(["median", "trimmed_mean"])
    Traceback (most recent call last):
    ...
    ValueError: 'median' is misplaced: pre-aggregators first, one aggregator last
    """
    aggregators, pre = registry("aggregator"), registry("preaggregator")
    names = tuple(names)
    if not names or names[-1] not in aggregators:
        raise ValueError(
            f"defence must end with an aggregator, got {list(names)}; aggregators: "
            + ", ".join(aggregators)
        )
    for i, name in enumerate(names):
        if name not in aggregators and name not in pre:
            raise ValueError(
                f"unknown rule {name!r}; choose one of: {', '.join([*aggregators, *pre])}"
            )
        if (name in pre) == (i == len(names) - 1):
            raise ValueError(f"{name!r} is misplaced: pre-aggregators first, one aggregator last")
    return names
