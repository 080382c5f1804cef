"""Stage 3, expand: a validated `Spec` -> a tree of concrete scopes (the top level and every block instance).

A `Scope` is one graph to resolve: the spec's top level (the root block), or one instance of a
block. Its layer bodies are typed (every expression evaluated, every block parameter bound, by
`evaluate.concrete`: the same path for both), and every piece remembers its `Origin`, so later
errors point at the line that wrote it, in whichever file.

Names an expression can use: the spec's `params`; inside a block, the block's params; and for
block instances `index` (position in its `repeat`), `repeats` (how many), `block_index` (the
position among all top-level block instances) and `num_blocks` (their number) - what
stochastic-depth schedules need.

>>> from resgraph.loader import load_text
>>> from resgraph.validate import validate
>>> loaded = load_text("resgraph: 1\\nname: M\\ninputs: {x: [4]}\\nlayers:\\n  - fc: {op: Linear, out_features: 2}\\n")
>>> scope = expand(validate(loaded), loaded.source)
>>> [(item.name, item.body.op) for item in scope.layers]
[('fc', 'Linear')]
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter, ValidationError

from .errors import Diagnostic, ResgraphError, SpecError
from .evaluate import LAYER, concrete, evaluate_tree
from .expressions import ExpressionError, evaluate, expression_body, expression_names
from .loader import LoadedSpec, Origin, SourceMap, load_import
from .ops import Layer
from .ops.tensor import SplitBase, pieces
from .resources import is_shipped
from .spec import REQUIRED, BlockCall, BlockDef, InputDecl, Projection, Skip, Spec
from .suggest import did_you_mean
from .translate import subject
from .validate import validate_library

__all__ = ["MAX_BLOCK_DEPTH", "MAX_EXPANDED_NODES", "LayerItem", "Reader", "Scope", "SkipItem", "class_name",
           "expand"]

MAX_BLOCK_DEPTH = 32
# Layers and skips in all scopes together, the top level's and every block instance's: nested
# `repeat:`s and `scale.depth` multiply, so the bound is on the total, not per call. A
# 100,000-layer chain has 150,000; ResNet-152 has about 500. Expanding takes ~0.1 ms a node.
MAX_EXPANDED_NODES = 200_000
INSTANCE_NAMES = ("index", "repeats", "block_index", "num_blocks")  # bound per block instance
_REPEAT: TypeAdapter[int | None] = TypeAdapter(BlockCall.model_fields["repeat"].annotation)

Reader = Callable[[str], LoadedSpec]  # reads an imported file: load_import, or a build record's copy


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
    projection: Projection  # the default policy of its skips
    origin: Origin
    block: str | None = None  # the block this scope instantiates; None at the top level
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Block:
    definition: BlockDef
    origin: Origin  # of `blocks.NAME` in the file that defined it


def expand(spec: Spec, source: SourceMap, *, read: Reader = load_import) -> Scope:
    """Expand a validated spec into its scope tree; `spec.params` hold the parameter values.

    The total number of layers and skips is bounded (MAX_EXPANDED_NODES): a block call's size is
    projected from its first instance before the others are expanded, so a `repeat:` that
    would exceed the bound is refused at its `repeat:` without being expanded.

    Args:
        read: how imported block libraries are read (by path, relative to the working directory).
    Raises:
        SpecError: unknown blocks or block parameters, missing required parameters, block cycles,
            expression errors, imports that cannot be read, layer or skip bodies that are invalid
            once their expressions are evaluated (in the top level or any block instance), and
            expansions over the bound.
    """
    return _Expander(spec, source, read).run()


class _Expander:
    def __init__(self, spec: Spec, source: SourceMap, read: Reader) -> None:
        self.spec = spec
        self.source = source
        self.read = read
        self.diagnostics: list[Diagnostic] = []
        self.blocks: dict[str, _Block] = {}
        self.block_index = 0
        self.num_blocks = 0
        self.expanded = 0  # layers and skips made so far, in all scopes
        self.exhausted = False  # the bound was hit (and reported): expand nothing more

    def run(self) -> Scope:
        root = Origin(self.source, ())
        self.load_imports(self.spec.imports, root, [os.path.abspath(self.source.file)])
        for name, definition in self.spec.blocks.items():
            self.add_block(name, definition, root.child("blocks", name))
        if self.diagnostics:
            raise SpecError(self.diagnostics)
        spec = self.spec
        top = BlockDef.model_construct(params={}, inputs=list(spec.inputs), layers=spec.layers, skips=spec.skips,
                                       outputs=spec.outputs)
        self.check_least_size(top, root)
        if self.diagnostics:
            raise SpecError(self.diagnostics)
        scope = self.scope(spec.name, top, root, dict(spec.params), [], inputs=dict(spec.input_decls()),
                           params=dict(spec.params))
        if self.diagnostics:
            raise SpecError(self.diagnostics)
        return scope

    # imports
    def load_imports(self, paths: list[str], origin: Origin, chain: list[str]) -> None:
        base = os.path.dirname(origin.source.file)
        for i, relative in enumerate(paths):
            where = origin.child("imports", i)
            path = relative if is_shipped(relative) else os.path.normpath(os.path.join(base, relative))
            if os.path.abspath(path) in chain:
                cycle = " -> ".join(os.path.relpath(p) for p in [*chain, os.path.abspath(path)])
                self.diagnostics.append(Diagnostic(where.locate(), f"import cycle: {cycle}"))
                continue
            try:
                loaded = self.read(path)
                library = validate_library(loaded)
            except SpecError as exc:
                self.diagnostics.extend(exc.diagnostics)
                continue
            except (ResgraphError, OSError, ValueError) as exc:  # the file cannot be read, or is not a library
                reason = str(exc) or type(exc).__name__
                self.diagnostics.append(Diagnostic(where.locate(), f"cannot import {relative!r}: {reason}"))
                continue
            library_origin = Origin(loaded.source, ())
            self.load_imports(library.imports, library_origin, [*chain, os.path.abspath(path)])
            for name, definition in library.blocks.items():
                self.add_block(name, definition, library_origin.child("blocks", name))

    def add_block(self, name: str, definition: BlockDef, origin: Origin) -> None:
        if name in self.blocks:
            first = self.blocks[name].origin.locate(key=True)
            self.diagnostics.append(Diagnostic(origin.locate(key=True), f"block {name!r} is defined twice "
                                                                        f"(first at {first})"))
            return
        self.blocks[name] = _Block(definition, origin)

    # scopes: the top level and block instances alike
    def scope(self, name: str, definition: BlockDef, origin: Origin, names: dict[str, Any], stack: list[str], *,
              inputs: dict[str, InputDecl | None], params: dict[str, Any], block: str | None = None) -> Scope:
        layers = []
        self.expanded += len(definition.layers) + len(definition.skips)
        for i, entry in enumerate(definition.layers):
            for layer_name, template in entry.items():
                where = origin.child("layers", i, layer_name)
                body = concrete(template, LAYER, names, where, self.diagnostics, self.spec.scale)
                if body is not None:
                    layers.append(LayerItem(layer_name, body, where))
        top_level = block is None
        if top_level:
            self.num_blocks = sum(self.repeats(item.body) for item in layers if isinstance(item.body, BlockCall))
        for item in layers:
            if isinstance(item.body, BlockCall):
                item.instances = self.instantiate(item, names, stack, top_level=top_level)
        skips = []
        for i, entry in enumerate(definition.skips):
            for skip_name, template in entry.items():
                where = origin.child("skips", i, skip_name)
                skip = concrete(template, Skip, names, where, self.diagnostics)
                if skip is not None:
                    skips.append(SkipItem(skip_name, skip, where))
        return Scope(name, inputs, with_pieces(layers, list(inputs)), skips, definition.outputs,
                     self.spec.defaults.projection, origin, block=block, params=params)

    def repeats(self, call: BlockCall) -> int:
        if call.repeat is None:
            return 1
        if not call.scale:
            return call.repeat
        return max(1, math.ceil(call.repeat * self.spec.scale.depth - 1e-9))

    @staticmethod
    def label(item: LayerItem) -> str:
        """`layer 'stage'`, or `block 'b', layer 'inner'` for a layer inside a block."""
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
        self.check_with(item, call, definition)
        count = self.repeats(call)
        instances: list[Scope] = []
        start = self.expanded
        for index in range(count):
            if self.exhausted:
                break
            if index == 1 or self.expanded > MAX_EXPANDED_NODES:
                # Project the whole call from its first instance before expanding the rest.
                projected = start + (self.expanded - start) * count
                if projected > MAX_EXPANDED_NODES:
                    self.refuse_size(item.origin, call.repeat, count, self.expanded - start if index == 1 else None)
                    break
            context = {"index": index, "repeats": count}
            if top_level:
                context |= {"block_index": self.block_index, "num_blocks": self.num_blocks}
                self.block_index += 1
            known = len(self.diagnostics)
            bound = evaluate_tree(call.with_, {**names, **context}, item.origin.child("with"), self.diagnostics)
            block_params = self.bind(definition, block, bound, {**self.spec.params, **context})
            if block_params is None or len(self.diagnostics) > known:
                continue  # its parameters failed (and are reported): the instance would only repeat that
            instances.append(self.scope(class_name(call.block), definition, block.origin,
                                        {**self.spec.params, **context, **block_params}, [*stack, call.block],
                                        inputs={name: None for name in definition.inputs}, params=block_params,
                                        block=call.block))
        return instances

    def check_least_size(self, top: BlockDef, root: Origin) -> None:
        """Refuse, before expanding anything, a spec whose literal repeats alone exceed the bound.

        A lower bound: only calls whose `when:` is not an expression count, and a `repeat:`
        expression counts only when it reads nothing but the spec's own parameters (anything
        else may vary per instance, so it counts as 1); what this misses, `instantiate` catches
        from each call's first instance.
        """
        sizes: dict[str, int] = {}

        def literal_repeat(value: Any, local: Iterable[str]) -> int:
            body = expression_body(value)
            if body is not None:
                names = expression_names(body)
                if names is None or not names <= set(self.spec.params) or names & {*local, *INSTANCE_NAMES}:
                    return 1
                try:
                    value = evaluate(body, self.spec.params)
                except ExpressionError:
                    return 1  # reported when the call is expanded
            try:
                return _REPEAT.validate_python(value, strict=True) or 1
            except ValidationError:
                return 1  # out of its own range: reported when the call is typed

        def least(definition: BlockDef) -> list[tuple[int, int, dict[str, Any]]]:
            """(instances, least size of one, template) of each block call that surely happens."""
            calls = []
            for entry in definition.layers:
                for body in entry.values():
                    callee = body.get("block") if isinstance(body, dict) else None
                    if not isinstance(callee, str) or "op" in body or body.get("when", True) is not True:
                        continue
                    repeat = literal_repeat(body.get("repeat", 1), definition.params)
                    count = repeat if body.get("scale", True) is False or "repeat" not in body else \
                        max(1, math.ceil(repeat * self.spec.scale.depth - 1e-9))
                    calls.append((count, block_size(callee), body))
            return calls

        def block_size(name: str) -> int:
            if name in sizes or name not in self.blocks:
                return sizes.get(name, 0)  # 0 while its own size is being computed: a cycle, reported later
            sizes[name] = 0
            definition = self.blocks[name].definition
            total = len(definition.layers) + len(definition.skips)
            sizes[name] = min(total + sum(count * size for count, size, _ in least(definition)), MAX_EXPANDED_NODES + 1)
            return sizes[name]

        calls = least(top)
        total = len(top.layers) + len(top.skips) + sum(count * size for count, size, _ in calls)
        if total <= MAX_EXPANDED_NODES:
            return
        count, size, body = max(calls, key=lambda call: call[0] * call[1])
        where = next(root.child("layers", i, name) for i, entry in enumerate(top.layers)
                     for name, template in entry.items() if template is body)
        repeat = literal_repeat(body["repeat"], ()) if "repeat" in body else None
        self.refuse_size(where, repeat, count, size)

    def refuse_size(self, origin: Origin, repeat: int | None, count: int, first: int | None) -> None:
        """Report the block call at `origin` that would take the expansion over MAX_EXPANDED_NODES
        (`count` instances, each `first` nodes when known); stop expanding."""
        self.exhausted = True
        scaled = f" (repeat {repeat} times scale.depth {self.spec.scale.depth:g})" \
            if repeat is not None and count != repeat else ""
        least = "at least " if first is not None and first > MAX_EXPANDED_NODES else ""
        each = f" of {least}{first:,} layers and skips each" if first is not None else ""
        where = (origin.child("repeat") if repeat is not None else origin).locate(key=True)
        self.diagnostics.append(Diagnostic(
            where, f"{subject(origin.path, None, '')[0]}: {count:,} instances{scaled}{each} would expand the model "
                   f"to more than {MAX_EXPANDED_NODES:,} layers and skips in all",
            "nested `repeat:`s (and scale.depth) multiply; make them smaller"))

    def check_with(self, item: LayerItem, call: BlockCall, definition: BlockDef) -> None:
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

    def bind(self, definition: BlockDef, block: _Block, given: dict[str, Any],
             names: dict[str, Any]) -> dict[str, Any] | None:
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


def class_name(block: str) -> str:
    """`bottleneck` -> `Bottleneck`, `mb_conv` -> `MbConv`: a block's generated module class."""
    return "".join(part[:1].upper() + part[1:] for part in block.split("_") if part) or "Block"
