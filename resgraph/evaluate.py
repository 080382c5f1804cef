"""Evaluation: parameters and `${...}` expressions over spec data -> concrete, typed entries.

One path serves the spec's top level and every block instance alike (the top level is the root
block): evaluate every expression with the names in scope, leave out entries whose `when:` is
false, apply `scale.width`, then type the result with the pydantic models, translating their
errors. Expressions themselves are parsed and evaluated by `expressions`.

>>> from resgraph.loader import load_text
>>> loaded = load_text("x: ${2 * planes}", "<doc>")
>>> diagnostics = []
>>> evaluate_tree(loaded.data, {"planes": 32}, Origin(loaded.source, ()), diagnostics), diagnostics
({'x': 64}, [])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from .errors import Diagnostic, Location, UsageError
from .expressions import ExpressionError, Unavailable, evaluate, expression_body, expression_calls, expression_names
from .loader import MAX_NODES, Origin, Path, copy_data, data_path, data_problem
from .ops import OPS, GenericLayer, Layer, ShapeError
from .spec import BUILTIN_NAMES, SHAPE_NAMES, BlockCall, Scale, _layer_tag
from .suggest import did_you_mean
from .translate import coerced_diagnostics, pydantic_diagnostics, subject

__all__ = ["LAYER", "LEFT_OUT", "SCALED_OPS", "concrete", "evaluate_tree", "freeze", "holds_expression", "is_left_out",
           "FailedNames", "evaluate_params", "names_read", "override_problems", "plain_overrides",
           "resolve_params", "scale_width"]

SCALED_OPS = ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d")


class _LayerModels:
    """Types a layer body as `spec.layer_body()` does (the model its `op` names, `BlockCall` for a
    `block:`, `GenericLayer` otherwise) without building the union: a union's validator is built
    from every op model at import, while this builds only the models a spec uses (the models
    defer their build), which is most of `resgraph validate`'s start-up."""

    def validate_python(self, body: Any) -> Any:
        tag = _layer_tag(body)
        model = BlockCall if tag == "block" else OPS.get(tag, GenericLayer)
        return _model_validate(model, body)


def _model_validate(model: type[BaseModel], body: Any) -> Any:
    """`model.model_validate(body)`: its validator, called without the Python wrapper around it
    (0.5 us of the ~2 a body takes, for each distinct entry: a long chain's 50,000 skips)."""
    return model.__pydantic_validator__.validate_python(body)


LAYER: Any = _LayerModels()

T = TypeVar("T")


def evaluate_tree(value: Any, names: Mapping[str, Any], origin: Origin, diagnostics: list[Diagnostic],
                  skip: Callable[[Path], bool] = lambda path: False, dependent: list[str] | None = None) -> Any:
    """`value` with every `${...}` string replaced by its result; errors become diagnostics.

    `skip(relative_path)` leaves a subtree untouched (block-call `with:` values, evaluated per
    instance later). An expression that fails only because of an error reported elsewhere (it
    reads an `Unavailable` name) is appended to `dependent`, when given, instead of reported.
    """
    return _walk(value, (), names, origin, diagnostics, skip, dependent)


def _literal(value: Any) -> bool:
    """Whether `value` is a number, boolean, None or a string not starting with `${`: what evaluating
    it gives is itself."""
    kind = type(value)
    return kind in _SCALARS or (kind is str and not value.startswith("${"))


def _walk(item: Any, rel: Path, names: Mapping[str, Any], origin: Origin, diagnostics: list[Diagnostic],
          skip: Callable[[Path], bool], dependent: list[str] | None) -> Any:
    """`evaluate_tree` of the subtree at `rel`. (A plain function, not a closure: a recursive closure
    is a reference cycle, garbage that only the collector frees, made once per entry of a spec.)"""
    if skip(rel):
        return item
    # A literal member is kept as it is (what walking it would return, skipped or not).
    if isinstance(item, dict):
        return {k: v if _literal(v) else _walk(v, (*rel, k), names, origin, diagnostics, skip, dependent)
                for k, v in item.items()}
    if isinstance(item, list):
        return [v if _literal(v) else _walk(v, (*rel, i), names, origin, diagnostics, skip, dependent)
                for i, v in enumerate(item)]
    body = expression_body(item)
    if body is None:
        return item
    try:
        result = evaluate(body, names)
    except ExpressionError as exc:
        if exc.dependent and dependent is not None:
            dependent.append(body)
            return None
        where, exact = origin.child(*rel).locate_in(2 + exc.offset)  # (2: past the `${`)
        unknown = "" if exact else " (somewhere in the string that starts here: its place in it is not known)"
        diagnostics.append(Diagnostic(where, f"in ${{{_shorten(body.strip())}}}: {exc}{unknown}",
                                      _builtin_name_hint(exc.unknown_name)))
        return None
    if expression_body(result) is not None:
        diagnostics.append(Diagnostic(origin.child(*rel).locate(), "an expression may not produce an expression"))
        return None
    return result


def _builtin_name_hint(name: str | None) -> str | None:
    """Where a name resgraph binds (`index`, `in_channels`, ...) can be read, for an expression that
    read it where it is not bound: a call's own `repeat:` or `when:`, a layer outside any block."""
    if name not in BUILTIN_NAMES:
        return None
    if name in SHAPE_NAMES:
        return (f"`{name}` ({BUILTIN_NAMES[name]}) is bound inside a block's body, for each instance; "
                "outside blocks, the spec's own inputs have declared shapes")
    return (f"`{name}` ({BUILTIN_NAMES[name]}) is bound inside a block and in a block call's `with:`, for each "
            "instance; a call's own `repeat:` and `when:` are read once for the whole call")


# The plain value a subclass holds: `str(member)` of a `(str, Enum)` is 'Mode.a', not its value.
_PLAIN_VALUE: dict[type, Callable[[Any], Any]] = {int: int.__int__, float: float.__float__, str: str.__str__}


def plain_overrides(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Parameter overrides given in Python as spec data, the kinds of value YAML gives (and a saved
    model's record stores, for `torch.load(weights_only=True)` to read back).

    Tuples become lists; subclasses of int, float and str (an `IntEnum`, a `(str, Enum)`,
    `numpy.float64`) become the plain value they hold. None, booleans, lists and str-keyed
    mappings of these pass as they are.

    >>> plain_overrides({"depths": (3, 4), "eps": 1e-5})
    {'depths': [3, 4], 'eps': 1e-05}

    Raises:
        UsageError: `params` is not a mapping; a value of another type (a numpy integer, a tensor,
            an object) or past the bounds a spec file's data keeps (`loader.data_problem`: nesting,
            size, integers, a list that contains itself), naming the parameter.
    """
    if params is not None and not isinstance(params, Mapping):
        raise UsageError(f"params must be a mapping of parameter names to values (e.g. {{'num_classes': 10}}), not "
                         f"{type(params).__name__}")
    problem = data_problem(dict(params or {}))
    if problem is not None:
        path, what, hint = problem
        if not path:  # (the only problem of the whole: its size)
            raise UsageError(f"parameter overrides hold more than {MAX_NODES:,} values (a list or dict used in several "
                             "places counts at each)")
        raise UsageError(f"parameter {path[0]!r}{f' at {data_path(path[1:])}' if path[1:] else ''}: {what}; {hint}")
    return {name: _plain(value, str(name)) for name, value in (params or {}).items()}


def _plain(value: Any, name: str) -> Any:
    """An override's value as plain spec data (see `plain_overrides`); `name`: its parameter's. Its
    values are of the kinds and within the bounds `loader.data_problem` keeps; a mapping's keys
    are checked here."""
    if value is None or isinstance(value, bool):  # (bool has no subclasses)
        return value
    for kind, plain_value in _PLAIN_VALUE.items():
        if isinstance(value, kind):
            return value if type(value) is kind else plain_value(value)
    if isinstance(value, (list, tuple)):
        return [_plain(item, name) for item in value]
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return {str(key): _plain(item, name) for key, item in value.items()}
    raise UsageError(f"parameter {name!r}: {type(value).__module__}.{type(value).__qualname__} {value!r:.60} is "
                     "not spec data; give a number, string, boolean, None, or a list or str-keyed dict of them "
                     "(e.g. int(value) for a numpy integer)")


def override_problems(declared: Mapping[str, Any], overrides: Mapping[str, Any], origin: Origin,
                      blocks: Mapping[str, Any] | None = None) -> list[Diagnostic]:
    """The overrides that cannot apply, whatever the spec says: of an undeclared parameter (with
    suggestions; where it names a parameter of one of the spec's `blocks`, their definitions as spec
    data, how to make it settable), or holding a `${...}`, which would reach the layers unevaluated
    and be reported there as "an expression may not produce an expression", far from where it was
    given. Overrides come from `--set`, from `params=` in Python, or from a saved model's record, so
    the messages name none of them.

    >>> from resgraph.loader import load_text
    >>> origin = Origin(load_text("params: {width: 8}", "s.yaml").source, ("params",))
    >>> [str(d.location) + ": " + d.message for d in override_problems({"width": 8}, {"widht": 4}, origin)]
    ["s.yaml: cannot override parameter 'widht': the spec declares no parameter 'widht'; did you mean 'width'?"]
    """
    problems = []
    for name, value in overrides.items():
        if name not in declared:
            hint = did_you_mean(name, declared)
            known = f" (declared: {', '.join(declared)})" if declared and not hint else ""
            message = f"cannot override parameter {name!r}: the spec declares no parameter {name!r}{hint}{known}"
            problems.append(Diagnostic(Location(origin.source.file), message, _block_param_hint(name, blocks)))
        elif holds_expression(value):
            problems.append(Diagnostic(Location(origin.source.file),
                                       f"cannot override parameter {name!r} with {_shorten(str(value))!r}: "
                                       "an override is a value, not an expression",
                                       f"give the value itself; an expression belongs in the spec's `params:` "
                                       f"(`{name}: \"${{...}}\"`)"))
    return problems


def resolve_params(declared: Mapping[str, Any], overrides: Mapping[str, Any], origin: Origin,
                   diagnostics: list[Diagnostic]) -> Mapping[str, Any]:
    """Parameter values: declared defaults (which may use earlier params), then overrides, which
    `override_problems` found none wrong with.

    Where a parameter's expression failed (reported), the values are a `FailedNames`: what reads it
    (`scale:`, an input's shape) fails as `Unavailable`, quietly, instead of reading None.
    """
    failed: set[str] = set()
    values = evaluate_params(declared, overrides, lambda values: values, origin, diagnostics, failed=failed)
    return FailedNames(values, failed) if failed else values


def _block_param_hint(name: str, blocks: Mapping[str, Any] | None) -> str | None:
    """How to set block parameter `name` from outside, when one of `blocks` (spec data) declares it."""
    owners = [block for block, definition in (blocks or {}).items()
              if isinstance(definition, Mapping) and isinstance(definition.get("params"), Mapping)
              and name in definition["params"]]
    if not owners:
        return None
    return (f"{name!r} is a parameter of block {' and '.join(map(repr, owners[:3]))}, given by each call's `with:`; "
            f"to set it from outside, declare it in the spec's `params:` and pass it on: "
            f"`with: {{{name}: \"${{{name}}}\"}}`")


class FailedNames(Mapping[str, Any]):
    """Names some of which failed to evaluate (reported where they failed): reading one raises
    `Unavailable`, so an expression that reads it is dropped rather than reported again.

    >>> names = FailedNames({"a": 1, "b": None}, {"b"})
    >>> names["a"], "b" in names
    (1, True)
    """

    def __init__(self, values: Mapping[str, Any], failed: AbstractSet[str]) -> None:
        self.values = values
        self.failed = failed

    def __getitem__(self, key: str) -> Any:
        if key in self.failed:
            raise Unavailable(f"{key} is unknown: its own expression failed")
        return self.values[key]

    def __contains__(self, key: object) -> bool:
        return key in self.values  # (Mapping's own reads the value, which raises for a failed name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)


def evaluate_params(declared: Mapping[str, Any], given: Mapping[str, Any],
                    names: Callable[[dict[str, Any]], Mapping[str, Any]], origin: Origin,
                    diagnostics: list[Diagnostic], dependent: list[str] | None = None,
                    failed: set[str] | None = None) -> dict[str, Any]:
    """Parameter values in declared order: the given one, else the default evaluated in
    `names(values so far)` (so a default may use earlier parameters).

    A default that reads a parameter whose own expression failed is left None without a message of
    its own: the failure is reported once, where it happened, not again as `None * 2` in each
    parameter computed from it (a spec's `params:` and a block's alike). The names of the
    parameters that failed are added to `failed`, when given.
    """
    values: dict[str, Any] = {}
    failed = set() if failed is None else failed  # parameters whose own expressions failed (and are reported)
    for name, default in declared.items():
        if name in given:
            values[name] = given[name]
        elif _literal(default):
            values[name] = default  # what evaluating it gives, without making the names to evaluate it in
        elif (reads := _reads(default)) & failed:
            values[name] = None  # its inputs failed: a second error about it would only repeat theirs
            failed.add(name)
        else:
            known = (len(diagnostics), len(dependent) if dependent is not None else 0)
            scope = names(values)
            # (the parameters before this one have values already: a declared one without is after it)
            later = {read for read in reads if read != name and read in declared and read not in values}
            if later:  # (read from an outer scope, a block's `${b}` would be the spec's `b`, not its own)
                scope = _DeclaredLater(scope, later, name)
            values[name] = evaluate_tree(default, scope, origin.child(name), diagnostics, dependent=dependent)
            if (len(diagnostics), len(dependent) if dependent is not None else 0) != known:
                failed.add(name)
    return values


class _DeclaredLater(Mapping[str, Any]):
    """The names parameter `name`'s default is evaluated in: `names`, where each parameter declared
    after it (`later`) reads as an error. A default reads only the parameters before it; without
    this, a later parameter that shares its name with one of the spec's would read the spec's
    value, silently, and not the block's own (given in `with:` or defaulted)."""

    def __init__(self, names: Mapping[str, Any], later: AbstractSet[str], name: str) -> None:
        self.names = names
        self.later = later
        self.name = name

    def __getitem__(self, key: str) -> Any:
        if key in self.later:
            raise ExpressionError(f"parameter {key!r} is declared after {self.name!r}: a default reads only the "
                                  f"parameters declared before it; move {key!r} before {self.name!r}")
        return self.names[key]

    def __contains__(self, key: object) -> bool:
        return key in self.later or key in self.names

    def __iter__(self) -> Iterator[str]:
        yield from self.names
        yield from (key for key in self.later if key not in self.names)

    def __len__(self) -> int:
        return len(set(self))


def _reads(value: Any) -> set[str]:
    """The names every `${...}` in `value` (a parameter default, maybe a list of them) reads; one that
    does not parse reads nothing (it is reported where it is evaluated)."""
    return set().union(*(read or () for read in _expression_reads(value)))


def names_read(value: Any) -> set[str] | None:
    """The names every `${...}` in `value` (spec data: dicts, lists, scalars) reads; None when one of
    them does not parse."""
    names: set[str] = set()
    for read in _expression_reads(value):
        if read is None:
            return None
        names |= read
    return names


def holds_expression(value: Any) -> bool:
    """Whether `value` (spec data) has a `${...}` anywhere in it (found, not parsed)."""
    if not isinstance(value, (dict, list)):  # (a leaf, as most are: no walk to set up)
        return expression_body(value) is not None
    return next(_expression_bodies(value), None) is not None


def _expression_reads(value: Any) -> Iterator[set[str] | None]:
    """What each `${...}` in `value` reads (None for one that does not parse)."""
    return (expression_names(body) for body in _expression_bodies(value))


def _expression_bodies(value: Any) -> Iterator[str]:
    """The text inside each `${...}` in `value` (spec data), in no particular order."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif (body := expression_body(item)) is not None:
            yield body


def _shorten(text: str, limit: int = 60) -> str:
    """An expression as echoed in a message: long ones cut in the middle."""
    return text if len(text) <= limit else f"{text[:limit // 2]}...{text[-limit // 2:]}"


def is_left_out(body: Any) -> bool:
    """True for an entry body whose `when:` evaluated to false."""
    return isinstance(body, dict) and body.get("when") is False




def is_scaled_already(value: Any, prescaled: AbstractSet[str] = frozenset()) -> bool:
    """True when `value` is a `${}` expression whose width is scaled already: it reads a block
    input's size (`SHAPE_NAMES`), which follows the scaled input, or a block parameter given such
    a width (`prescaled`: `with: {c2: "${in_channels // 2}"}`), or calls `scaled(...)`.

    >>> is_scaled_already("${in_channels // 4}"), is_scaled_already("${c2}", {"c2"}), is_scaled_already("${c2}")
    (True, True, False)
    """
    body = expression_body(value)
    if body is None:
        return False
    names, calls = expression_names(body), expression_calls(body)
    reads_width = bool(names and (names.intersection(SHAPE_NAMES) or names.intersection(prescaled)))
    return reads_width or bool(calls and "scaled" in calls)


def scale_width(body: Any, scale: Scale, template: Any = None, prescaled: AbstractSet[str] = frozenset()) -> Any:
    """A layer body with `scale.width` applied: conv out_channels capped, times width, rounded (`Scale.channels`).

    A depthwise conv (`groups` equal to `out_channels` as written) stays depthwise. Layers opt out
    with `scale: false` (e.g. a head whose channels are class scores). An out_channels that the
    `template` (the body as written) computes from the block input's size, from a parameter in
    `prescaled` or with `scaled(...)`, already scaled, is left as computed (scaling it again would
    scale that width twice).
    """
    if (not scale.scales_widths or not isinstance(body, dict)
            or body.get("op") not in SCALED_OPS or body.get("scale", True) is False
            or not isinstance(body.get("out_channels"), (int, float))
            or (isinstance(template, dict) and is_scaled_already(template.get("out_channels"), prescaled))):
        return body
    channels = scale.scaled_width(body["out_channels"])
    scaled = {**body, "out_channels": channels}
    if body.get("groups") == body["out_channels"] and body["out_channels"] != 1:
        scaled["groups"] = channels
    return scaled


def _is_with(rel: Path) -> bool:
    return rel[:1] == ("with",)


LEFT_OUT: Any = type("LeftOut", (), {"__repr__": lambda self: "LEFT_OUT"})()  # what `when: false` gives


def concrete(template: Any, model: type[T] | TypeAdapter[T], names: Mapping[str, Any], origin: Origin,
             diagnostics: list[Diagnostic], scale: Scale | None = None,
             typed_bodies: dict[Any, Any] | None = None, prescaled: AbstractSet[str] = frozenset(),
             by_template: dict[int, tuple[Any, Any, Any]] | None = None) -> T | None:
    """One layer or skip entry body, evaluated and typed; `LEFT_OUT` when its `when:` is false, None
    when invalid (reported, or failing because of an error reported elsewhere).

    A block call's `with:` stays as written: it is evaluated per instance. With `scale`, the
    width multiplier applies (layers only; `prescaled`: the parameters in `names` that hold widths
    scaled already, see `is_scaled_already`). Problems are appended to `diagnostics`.

    `typed_bodies` (one expansion's, see `Expander`): bodies already typed, by value. An entry
    equal to one typed before gets that very object (typed entries are never modified), so a
    block repeated 200 times, or a chain of 10,000 equal layers, is typed once and held once.
    `by_template` (with `typed_bodies`): the templates met so far, by identity, each with its
    model and its typed body, or None where it holds an expression: a block's entries are met
    again at each of its instances, and finding one there is a look-up, where its key
    (`_written_key`) walks it, and fails by an exception where it holds an expression.
    """
    known = by_template.get(id(template)) if by_template is not None else None
    if known is not None and known[1] is not model:
        known = None  # (the template is kept there, so its id stays its own; one entry per model)
    if known is not None and known[2] is not None:
        return known[2]  # type: ignore[no-any-return]
    # A template without expressions types the same wherever it stands: one equal to a template
    # typed before gets that result without being evaluated again (a 10,000-layer chain: 1 of 10,000).
    written = _written_key(model, scale, template) if typed_bodies is not None and known is None else None
    if written is None and by_template is not None and known is None:
        by_template[id(template)] = (template, model, None)  # evaluated at each instance
    if written is not None:
        # (one lookup: a key of nested tuples is hashed anew each time; no typed body is None)
        typed_before = typed_bodies.get(written)  # type: ignore[union-attr]
        if typed_before is not None:
            if by_template is not None:
                by_template[id(template)] = (template, model, typed_before)
            return typed_before  # type: ignore[no-any-return]
    if written is not None:
        # Nothing to evaluate; typed from a copy all the same: the template may be the caller's own
        # data, and a typed body may keep its lists (a generic layer's arguments).
        body = copied = copy_data(template)
    else:
        known, dependent = len(diagnostics), []
        body = evaluate_tree(template, names, origin, diagnostics, _is_with, dependent)
        if len(diagnostics) > known or dependent:
            return None  # its expression errors are reported already (here or elsewhere)
    if is_left_out(body):
        return LEFT_OUT
    if scale is not None:
        body = scale_width(body, scale, template, prescaled)
    key = None
    if typed_bodies is not None:  # equal bodies of different templates (`${w}` and 8) share one object too
        if written is not None and body is copied:  # (without a scale, `written` is this key, missed above)
            key = written if scale is None else _body_key(model, written[-1])
        else:
            key = _frozen(model, body)
    if typed_bodies is not None and key is not None and key is not written:
        typed_before = typed_bodies.get(key)
        if typed_before is not None:
            return typed_before  # type: ignore[no-any-return]
    try:
        if isinstance(model, (TypeAdapter, _LayerModels)):
            typed = model.validate_python(body)
        else:
            assert issubclass(model, BaseModel)
            typed = _model_validate(model, body)
    except ValidationError as exc:
        diagnostics.extend(pydantic_diagnostics(exc, body, origin))
        return None
    if written is None and isinstance(template, dict) and isinstance(body, dict):
        coerced = coerced_diagnostics(typed, body, [key for key, value in template.items()
                                                    if holds_expression(value)], origin)
        if coerced:
            diagnostics.extend(coerced)
            return None
    if isinstance(typed, Layer):
        try:
            typed.check_static()
        except ShapeError as exc:
            field = getattr(exc, "field", None)
            where = (origin.child(field) if field is not None else origin).locate(key=True)
            diagnostics.append(Diagnostic(where, f"{subject(origin.path, None, typed.op)[0]}: {exc}",
                                          getattr(exc, "hint", None)))
            return None
    if typed_bodies is not None and key is not None:
        typed_bodies[key] = typed
    if written is not None and written is not key:
        typed_bodies[written] = typed  # type: ignore[index]
    if written is not None and by_template is not None:
        by_template[id(template)] = (template, model, typed)
    return typed  # type: ignore[no-any-return]


def _frozen(model: Any, body: Any) -> Any:
    """A hashable key equal for equal bodies typed by the same model, or None when `body` holds a
    value that cannot be a key."""
    try:
        return _body_key(model, freeze(body))
    except TypeError:
        return None


def _body_key(model: Any, frozen: Any) -> tuple[int, Any]:
    """The key of a body typed by `model`, from the body's `freeze`."""
    return (id(model), frozen)


def _written_key(model: Any, scale: Scale | None, template: Any) -> Any:
    """A hashable key equal for equal templates typed by the same model and scale, or None when the
    template holds an expression (its value depends on the names it reads) or an unhashable value.

    Without a scale (a skip; a layer where the spec's scale scales no widths, as in most specs), a
    template is typed as the body it is: its key is that body's (`_body_key`), so the one key is
    made, looked up and stored (a long chain's 100,000 layers and 50,000 skips).
    """
    try:
        frozen = freeze(template, refuse_expressions=True)
    except TypeError:
        return None
    return _body_key(model, frozen) if scale is None else ("as written", id(model), id(scale), frozen)


def freeze(value: Any, refuse_expressions: bool = False) -> Any:
    """`value` (spec data) as nested tuples: a key equal for equal values. Each leaf is keyed with its
    type: 1, 1.0 and True are equal in Python but not to the models.

    Raises:
        TypeError: a leaf cannot be a key, or is an expression (`${...}`) with `refuse_expressions`.
    """
    if isinstance(value, dict):
        pairs = []
        for key, member in value.items():
            kind = type(member)
            if kind in _KEYED_AS_GIVEN or (kind is str and not (refuse_expressions and member.startswith("${"))):
                pairs.append((key, (kind, member)))  # a common leaf, keyed here as below, without a call
            else:
                pairs.append((key, freeze(member, refuse_expressions)))
        return (dict, tuple(pairs))
    if isinstance(value, list):
        return (list, tuple([(kind, item) if (kind := type(item)) in _KEYED_AS_GIVEN
                             else freeze(item, refuse_expressions) for item in value]))
    hash(value)
    if refuse_expressions and expression_body(value) is not None:
        raise TypeError("an expression's value depends on the names it reads")
    if isinstance(value, float):  # -0.0 == 0.0, but a summary shows them apart
        return (float, value, math.copysign(1.0, value))
    return (type(value), value)


# Leaves whose key is (type, value) and that are never expressions: `freeze` keys them in place.
_KEYED_AS_GIVEN = frozenset({int, bool, type(None)})
# Leaves that are never expressions nor hold any: `_walk` keeps them without a call.
_SCALARS = frozenset({int, float, bool, type(None)})
