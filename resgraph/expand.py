"""Stage 3, expand: parameters, `${...}` expressions and blocks -> a tree of concrete scopes.

A `Scope` is one graph to resolve: the spec's top level, or one instance of a block. Its layer
bodies are typed (every expression evaluated, every block parameter bound), and every piece
remembers its `Origin`, so later errors point at the line that wrote it, in whichever file.

Names an expression can use: the spec's `params`; inside a block, the block's params; and for
block instances `index` (position in its `repeat`), `repeats` (how many), `block_index` (the
position among all top-level block instances) and `num_blocks` (their number) - what
stochastic-depth schedules need.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter, ValidationError

from .errors import Diagnostic, Location, SpecError
from .expressions import ExpressionError, evaluate, expression_body, make_divisible
from .loader import Origin, SourceMap, load_file
from .ops import Layer
from .ops.tensor import SplitBase, pieces
from .spec import REQUIRED, BlockCall, BlockDef, BlockLibrary, InputDecl, LayerBody, Projection, Scale, Skip, Spec
from .suggest import did_you_mean

__all__ = ["LayerItem", "Scope", "SkipItem", "evaluate_tree", "expand", "resolve_params"]

MAX_BLOCK_DEPTH = 32
SCALED_OPS = ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d")


@dataclass
class LayerItem:
    name: str
    body: Layer | BlockCall
    origin: Origin
    instances: list[Scope] = field(default_factory=list)  # block calls only


@dataclass
class SkipItem:
    name: str
    skip: Skip
    origin: Origin


@dataclass
class Scope:
    """One graph to resolve: inputs, typed layers and skips, outputs, and where it came from."""

    name: str  # class name of the module it becomes
    inputs: dict[str, InputDecl | None]  # block inputs have no declared type: the caller supplies it
    layers: list[LayerItem]
    skips: list[SkipItem]
    outputs: list[str] | None
    projection: Projection
    origin: Origin
    block: str | None = None  # the block this scope instantiates
    params: dict[str, Any] = field(default_factory=dict)


_LAYER = TypeAdapter(LayerBody)


# --- expressions over data ---------------------------------------------------------------------

def evaluate_tree(value: Any, names: Mapping[str, Any], origin: Origin, diagnostics: list[Diagnostic],
                  skip: Callable[[tuple[str | int, ...]], bool] = lambda path: False) -> Any:
    """`value` with every `${...}` string replaced by its result; errors become diagnostics.

    `skip(relative_path)` leaves a subtree untouched (block-call `with:` values, evaluated per
    instance later).
    """

    def walk(item: Any, rel: tuple[str | int, ...]) -> Any:
        if skip(rel):
            return item
        if isinstance(item, dict):
            return {k: walk(v, (*rel, k)) for k, v in item.items()}
        if isinstance(item, list):
            return [walk(v, (*rel, i)) for i, v in enumerate(item)]
        body = expression_body(item)
        if body is None:
            return item
        try:
            result = evaluate(body, names)
        except ExpressionError as exc:
            where = origin.child(*rel).locate()
            column = where.column + 2 + exc.offset if where.line else 0
            diagnostics.append(Diagnostic(Location(where.file, where.line, column),
                                          f"in ${{{body.strip()}}}: {exc}"))
            return None
        if expression_body(result) is not None:
            diagnostics.append(Diagnostic(origin.child(*rel).locate(), "an expression may not produce an expression"))
            return None
        return result

    return walk(value, ())


def resolve_params(declared: Mapping[str, Any], overrides: Mapping[str, Any], origin: Origin,
                   diagnostics: list[Diagnostic]) -> dict[str, Any]:
    """Parameter values: declared defaults (which may use earlier params), then overrides.

    An override of an undeclared parameter is an error with suggestions.
    """
    for name in overrides:
        if name not in declared:
            hint = did_you_mean(name, declared)
            known = f" (declared: {', '.join(declared)})" if declared and not hint else ""
            diagnostics.append(Diagnostic(Location(origin.source.file), f"--set {name}: the spec declares no "
                                                                        f"parameter {name!r}{hint}{known}"))
    values: dict[str, Any] = {}
    for name, default in declared.items():
        if name in overrides:
            values[name] = overrides[name]
        else:
            values[name] = evaluate_tree(default, values, origin.child(name), diagnostics)
    return values


def _is_with(rel: tuple[str | int, ...]) -> bool:
    """Inside a layer entry, the `with:` of a block call is evaluated per instance, later."""
    return len(rel) >= 4 and rel[0] == "layers" and rel[3] == "with"


def evaluate_spec_data(data: dict[str, Any], names: Mapping[str, Any], origin: Origin,
                       diagnostics: list[Diagnostic]) -> dict[str, Any]:
    """The top level of a spec with its expressions evaluated and `when: false` entries left out.

    `params` and `blocks` stay as written (blocks are expanded per instance, later).
    """
    kept = {k: data[k] for k in ("params", "blocks") if k in data}
    rest = {k: v for k, v in data.items() if k not in kept}
    evaluated = evaluate_tree(rest, names, origin, diagnostics, _is_with)
    for section in ("layers", "skips"):
        if isinstance(evaluated.get(section), list):
            evaluated[section] = [entry for entry in evaluated[section] if not is_left_out(entry)]
    return {**evaluated, **kept}


def is_left_out(entry: Any) -> bool:
    """True for a `- NAME: {..., when: false}` entry (after evaluation)."""
    return (isinstance(entry, dict) and len(entry) == 1
            and isinstance(body := next(iter(entry.values())), dict) and body.get("when") is False)


# --- blocks -------------------------------------------------------------------------------------

@dataclass
class _Block:
    definition: BlockDef
    origin: Origin  # of `blocks.NAME` in the file that defined it


def expand(spec: Spec, source: SourceMap, params: dict[str, Any]) -> Scope:
    """Expand a validated spec into its scope tree.

    Raises:
        SpecError: unknown blocks or block parameters, missing required parameters, block cycles,
            expression errors, imports that cannot be read, and layer bodies that are invalid
            once a block's parameters are bound.
    """
    return _Expander(spec, source, params).run()


class _Expander:
    def __init__(self, spec: Spec, source: SourceMap, params: dict[str, Any]) -> None:
        self.spec = spec
        self.source = source
        self.params = params
        self.diagnostics: list[Diagnostic] = []
        self.blocks: dict[str, _Block] = {}
        self.block_index = 0
        self.num_blocks = 0

    def run(self) -> Scope:
        root = Origin(self.source, ())
        self.load_imports(self.spec.imports, root, [os.path.abspath(self.source.file)])
        for name, definition in self.spec.blocks.items():
            self.add_block(name, definition, root.child("blocks", name))
        if self.diagnostics:
            raise SpecError(self.diagnostics)
        self.num_blocks = sum(self.repeats(body) for entry in self.spec.layers for body in entry.values()
                              if isinstance(body, BlockCall))
        layers = with_pieces([LayerItem(name, body, root.child("layers", i, name))
                              for i, entry in enumerate(self.spec.layers) for name, body in entry.items()],
                             list(self.spec.inputs))
        skips = [SkipItem(name, skip, root.child("skips", i, name))
                 for i, entry in enumerate(self.spec.skips) for name, skip in entry.items()]
        scope = Scope(self.spec.name, dict(self.spec.input_decls()), layers, skips, self.spec.outputs,
                      self.spec.defaults.projection, root, params=self.params)
        for item in layers:
            if isinstance(item.body, BlockCall):
                item.instances = self.instantiate(item, self.params, [], top_level=True)
        if self.diagnostics:
            raise SpecError(self.diagnostics)
        return scope

    # imports
    def load_imports(self, paths: list[str], origin: Origin, chain: list[str]) -> None:
        base = os.path.dirname(origin.source.file)
        for i, relative in enumerate(paths):
            where = origin.child("imports", i)
            path = os.path.normpath(os.path.join(base, relative))
            if os.path.abspath(path) in chain:
                cycle = " -> ".join(os.path.relpath(p) for p in [*chain, os.path.abspath(path)])
                self.diagnostics.append(Diagnostic(where.locate(), f"import cycle: {cycle}"))
                continue
            try:
                loaded = load_file(path)
            except SpecError as exc:
                self.diagnostics.extend(exc.diagnostics)
                continue
            except Exception as exc:  # UsageError and OS errors: the file cannot be read
                self.diagnostics.append(Diagnostic(where.locate(), f"cannot import {relative!r}: {exc}"))
                continue
            library = self.validate_library(loaded.data, loaded.source)
            if library is None:
                continue
            library_origin = Origin(loaded.source, ())
            self.load_imports(library.imports, library_origin, [*chain, os.path.abspath(path)])
            for name, definition in library.blocks.items():
                self.add_block(name, definition, library_origin.child("blocks", name))

    def validate_library(self, data: Any, source: SourceMap) -> BlockLibrary | None:
        from .validate import pydantic_diagnostics, schema_diagnostics

        problems = schema_diagnostics(data, source, "library")
        if not problems:
            try:
                return BlockLibrary.model_validate(data)
            except ValidationError as exc:
                problems = list(pydantic_diagnostics(exc, data, Origin(source, ())))
        self.diagnostics.extend(problems)
        return None

    def add_block(self, name: str, definition: BlockDef, origin: Origin) -> None:
        if name in self.blocks:
            first = self.blocks[name].origin.locate(key=True)
            self.diagnostics.append(Diagnostic(origin.locate(key=True), f"block {name!r} is defined twice "
                                                                        f"(first at {first})"))
            return
        self.blocks[name] = _Block(definition, origin)

    # instances
    def repeats(self, call: BlockCall) -> int:
        if call.repeat is None:
            return 1
        if not call.scale:
            return call.repeat
        return max(1, math.ceil(call.repeat * self.spec.scale.depth - 1e-9))

    @staticmethod
    def label(item: LayerItem) -> str:
        """`layer 'stage'`, or `block 'b', layer 'inner'` for a layer inside a block."""
        from .validate import subject

        return subject(item.origin.path, None, "")[0]

    def instantiate(self, item: LayerItem, names: Mapping[str, Any], stack: list[str], *,
                    top_level: bool = False) -> list[Scope]:
        call = item.body
        assert isinstance(call, BlockCall)
        block = self.blocks.get(call.block)
        if block is None:
            self.diagnostics.append(Diagnostic(item.origin.child("block").locate(),
                                               f"{self.label(item)}: unknown block {call.block!r}"
                                               f"{did_you_mean(call.block, self.blocks)}"))
            return []
        if call.block in stack:
            cycle = " -> ".join([*stack[stack.index(call.block):], call.block])
            self.diagnostics.append(Diagnostic(item.origin.child("block").locate(),
                                               f"{self.label(item)}: block cycle {cycle}"))
            return []
        if len(stack) >= MAX_BLOCK_DEPTH:
            self.diagnostics.append(Diagnostic(item.origin.locate(key=True),
                                               f"blocks nest deeper than {MAX_BLOCK_DEPTH} levels"))
            return []
        definition = block.definition
        if call.repeat is not None and (len(definition.inputs) != 1 or len(definition.outputs or [None]) != 1):
            self.diagnostics.append(Diagnostic(item.origin.child("repeat").locate(key=True),
                                               f"{self.label(item)}: repeat chains instances, so block "
                                               f"{call.block!r} needs one input and one output"))
            return []
        self.check_with(item, call, definition, block)
        count = self.repeats(call)
        instances = []
        for index in range(count):
            context = {"index": index, "repeats": count}
            if top_level:
                context |= {"block_index": self.block_index, "num_blocks": self.num_blocks}
                self.block_index += 1
            scope_names = {**names, **context}
            known = len(self.diagnostics)
            bound = evaluate_tree(call.with_, scope_names, item.origin.child("with"), self.diagnostics)
            block_params = self.bind(definition, block, bound, {**self.params, **context}, item)
            if block_params is None or len(self.diagnostics) > known:
                continue  # its parameters failed (and are reported): the instance would only repeat that
            qualname = f"{index}" if call.repeat is not None else item.name
            instances.append(self.scope(call.block, definition, block.origin, {**self.params, **context,
                                                                               **block_params},
                                        [*stack, call.block], qualname, block_params))
        return instances

    def check_with(self, item: LayerItem, call: BlockCall, definition: BlockDef, block: _Block) -> None:
        for key in call.with_:
            if key not in definition.params:
                self.diagnostics.append(Diagnostic(
                    item.origin.child("with", key).locate(key=True),
                    f"{self.label(item)}: block {call.block!r} has no parameter {key!r}"
                    f"{did_you_mean(key, definition.params)}",
                    f"its parameters: {', '.join(definition.params) or 'none'}"))
        missing = [p for p, default in definition.params.items() if default == REQUIRED and p not in call.with_]
        if missing:
            self.diagnostics.append(Diagnostic(item.origin.locate(key=True),
                                               f"{self.label(item)}: block {call.block!r} needs "
                                               f"{', '.join(map(repr, missing))}",
                                               f"add `with: {{{', '.join(f'{m}: ...' for m in missing)}}}`"))

    def bind(self, definition: BlockDef, block: _Block, given: dict[str, Any], names: dict[str, Any],
             item: LayerItem) -> dict[str, Any] | None:
        """Block parameter values: given ones, else defaults (which may use earlier ones)."""
        values: dict[str, Any] = {}
        for name, default in definition.params.items():
            if name in given:
                values[name] = given[name]
            elif default == REQUIRED:
                return None  # reported by check_with
            else:
                values[name] = evaluate_tree(default, {**names, **values}, block.origin.child("params", name),
                                             self.diagnostics)
        return values

    def scope(self, block_name: str, definition: BlockDef, origin: Origin, names: dict[str, Any],
              stack: list[str], qualname: str, block_params: dict[str, Any]) -> Scope:
        layers = []
        for i, entry in enumerate(definition.layers):
            for name, template in entry.items():
                where = origin.child("layers", i, name)
                known = len(self.diagnostics)
                concrete = evaluate_tree(template, names, where, self.diagnostics, _is_with_here)
                if len(self.diagnostics) > known or is_left_out({name: concrete}):
                    continue  # left out by `when`, or its expression errors are reported already
                body = self.typed_layer(concrete, where)
                if body is None:
                    continue
                item = LayerItem(name, body, where)
                if isinstance(body, BlockCall):
                    item.instances = self.instantiate(item, names, stack)
                layers.append(item)
        skips = []
        for i, entry in enumerate(definition.skips):
            for name, template in entry.items():
                where = origin.child("skips", i, name)
                known = len(self.diagnostics)
                concrete = evaluate_tree(template, names, where, self.diagnostics)
                if len(self.diagnostics) > known or is_left_out({name: concrete}):
                    continue
                skip = self.typed(Skip, concrete, where)
                if skip is not None:
                    skips.append(SkipItem(name, skip, where))
        return Scope(class_name(block_name), {name: None for name in definition.inputs},
                     with_pieces(layers, definition.inputs), skips,
                     definition.outputs, self.spec.defaults.projection, origin, block=block_name,
                     params=block_params)

    def typed_layer(self, data: Any, origin: Origin) -> Layer | BlockCall | None:
        return self.typed(_LAYER, scale_width(data, self.spec.scale), origin)

    def typed(self, model: Any, data: Any, origin: Origin) -> Any:
        from .validate import pydantic_diagnostics

        try:
            return model.validate_python(data) if isinstance(model, TypeAdapter) else model.model_validate(data)
        except ValidationError as exc:
            self.diagnostics.extend(pydantic_diagnostics(exc, data, origin))
            return None


def with_pieces(items: list[LayerItem], inputs: list[str]) -> list[LayerItem]:
    """Layers with each chunk/split replaced by one item per named output.

    Every piece reads what the chunk/split itself reads: its `input`, else the layer before it,
    else the scope's sole input.
    """
    result: list[LayerItem] = []
    for item in items:
        body = item.body
        if not isinstance(body, SplitBase):
            result.append(item)
            continue
        source = body.input or (result[-1].name if result else inputs[0] if len(inputs) == 1 else None)
        result += [LayerItem(name, piece.model_copy(update={"input": source}), item.origin.child("outputs", i))
                   for i, (name, piece) in enumerate(pieces(item.name, body))]
    return result


def scale_width(body: Any, scale: Scale) -> Any:
    """A layer body with `scale.width` applied: conv out_channels times width, made divisible.

    Layers opt out with `scale: false` (e.g. a head whose channels are class scores).
    """
    if (scale.width == 1 or not isinstance(body, dict) or body.get("op") not in SCALED_OPS
            or body.get("scale", True) is False or not isinstance(body.get("out_channels"), (int, float))):
        return body
    return {**body, "out_channels": make_divisible(body["out_channels"] * scale.width, scale.divisor)}


def _is_with_here(rel: tuple[str | int, ...]) -> bool:
    return rel[:1] == ("with",)


def class_name(block: str) -> str:
    """`bottleneck` -> `Bottleneck`, `mb_conv` -> `MbConv`: a block's generated module class."""
    return "".join(part[:1].upper() + part[1:] for part in block.split("_") if part) or "Block"
