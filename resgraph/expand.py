"""Stage 3, expand: a validated `Spec` -> concrete scopes: the top level now, each block instance on demand.

A `Scope` is one graph to resolve: the spec's top level (the root block), or one instance of a
block. Its layer bodies are typed (every expression evaluated, every block parameter bound, by
`evaluate.concrete`: the same path for both), and every piece remembers its `Origin`, so later
errors point at the line that wrote it, in whichever file.

A block call expands to a `BlockRecipe`; `instantiate(recipe, index, input_types, qualname)` makes each
instance's scope once the types of its inputs are known, which shape inference does, instance
after instance. So a block's body may read its input's shape: `in_channels` (dim 0 of its first
input), `in_features` (its last dim), `in_shape` (its per-sample shape) and `in_shapes` (every
input's). A size read this way becomes a fixed number of the model (see `resgraph.symbolic`).

Names an expression can use: the spec's `params`; inside a block, the block's params and its
input's shape; and for block instances `index` (position in its `repeat`), `repeats` (how
many), `block_index` (the position among all top-level block instances, inherited by the blocks
inside one) and `num_blocks` (their number) - what stochastic-depth schedules need.

>>> from resgraph.loader import load_text
>>> from resgraph.validate import validate
>>> loaded = load_text("resgraph: 1\\nname: M\\ninputs: {x: [4]}\\nlayers:\\n  - fc: {op: Linear, out_features: 2}\\n")
>>> scope = expand(validate(loaded), loaded.source)
>>> [(item.name, item.body.op) for item in scope.layers]
[('fc', 'Linear')]
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pydantic import TypeAdapter, ValidationError

from .errors import Diagnostic, Location, ResgraphError, SpecError
from .evaluate import (
    LAYER,
    LEFT_OUT,
    SHAPE_NAMES,
    concrete,
    evaluate_params,
    evaluate_tree,
    is_scaled_already,
    names_read,
)
from .expressions import (
    ExpressionError,
    ReadOnRequest,
    Unavailable,
    evaluate,
    expression_body,
    expression_names,
    width_scaling,
)
from .loader import MAX_BYTES, MAX_NODES, LoadedSpec, Origin, SourceMap, load_import
from .ops import Layer, TensorType
from .ops.base import is_identifier
from .ops.tensor import SplitBase, pieces
from .resources import SHIPPED, is_shipped, shipped_libraries
from .spec import INSTANCE_NAMES, REQUIRED, BlockCall, BlockDef, BlockLibrary, InputDecl, Projection, Skip, Spec
from .suggest import did_you_mean
from .symbolic import specialize
from .translate import subject
from .validate import unknown_block_ops, validate_library

__all__ = ["MAX_BLOCK_DEPTH", "MAX_EXPANDED_NODES", "SHAPE_NAMES", "BlockRecipe", "Expander", "LayerItem", "Reader",
           "Scope", "SkipItem", "blind_scopes", "check_library_blocks", "check_unreached_blocks", "class_name",
           "expand", "first_reports", "instantiate"]

MAX_BLOCK_DEPTH = 32
# Layers and skips in all scopes together, the top level's and every block instance's: nested
# `repeat:`s and `scale.depth` multiply, so the bound is on the total, not per call. A
# 100,000-layer chain has 150,000; ResNet-152 has about 500. Expanding takes ~0.1 ms a node.
MAX_EXPANDED_NODES = 200_000
VARYING_NAMES = frozenset({"index", "block_index"})  # the instance names that differ between a call's instances
_REPEAT: TypeAdapter[int | None] = TypeAdapter(BlockCall.model_fields["repeat"].annotation)

Reader = Callable[[str], LoadedSpec]  # reads an imported file: load_import, or a build record's copy


@dataclass
class LayerItem:
    name: str
    body: Layer | BlockCall | None  # None: refused (and reported); what reads it is left out quietly
    origin: Origin
    recipe: BlockRecipe | None = None  # block calls: how their instances are made


@dataclass
class SkipItem:
    name: str
    skip: Skip | None  # None: refused (and reported)
    origin: Origin


class LeftOut(NamedTuple):
    """An entry its `when:` left out, for what reads it to say so: that `when:`, and whether the
    entry is a skip edge (which is no node to read even where it is kept)."""

    when: Origin
    skip: bool


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
    left_out: dict[str, LeftOut] = field(default_factory=dict)  # entries whose `when:` is false
    blind: bool = False  # made with nothing known of a call (`Expander.blind`): repeat counts unknown
    defined_blocks: tuple[str, ...] = ()  # the top level's: every block the spec defines or imports, called or not
    # Where else a name this scope does not know is declared (see `_declared_elsewhere`).
    elsewhere: Callable[[str], str | None] = field(default=lambda name: None, repr=False)


class _Body(NamedTuple):
    """What expanding a scope reads of a block definition: the top level's, the root block, taken
    from the spec as it is (`BlockDef.model_construct` took 3 us of a small spec's expansion)."""

    params: dict[str, Any]
    inputs: list[str]
    layers: list[dict[str, Any]]
    skips: list[dict[str, Any]]
    outputs: list[str] | None


@dataclass
class _Block:
    definition: BlockDef
    origin: Origin  # of `blocks.NAME` in the file that defined it


@dataclass
class BlockRecipe:
    """A block call, expanded as far as it can be before its input types are known.

    `instantiate(recipe, index, input_types, qualname)` makes instance `index`'s scope; shape inference
    calls it instance after instance, since each instance's input is the previous one's output.
    """

    call: BlockCall
    item: str  # the calling layer's name
    origin: Origin  # the calling layer's
    block: str
    definition: BlockDef
    block_origin: Origin
    names: Mapping[str, Any]  # the caller's names (its `with:` values are evaluated with them)
    stack: tuple[str, ...]  # the blocks being instantiated around this call (for cycles)
    count: int  # instances (`repeat`, scaled)
    first_block_index: int | None  # a top-level call's first instance's block_index
    expander: Expander  # the blocks known, the scale in force, the expansion bound
    # Found once per call by `equal_instances_by`: whether its block reads a name that changes per
    # instance, and its `with:` values where they read none (in a 1-tuple: the values may be None).
    varies: bool | None = field(default=None, repr=False)
    constant_with: tuple[Any] | None = field(default=None, repr=False)
    with_varies: bool | None = field(default=None, repr=False)  # its `with:` reads `index`/`block_index` (or may)
    # The `with:` values `equal_instances_by` just evaluated, with their instance's index: making
    # that instance, which follows, takes them instead of evaluating them again (see `Expander.instance`).
    evaluated_with: tuple[int, Any] | None = field(default=None, repr=False)

    def equal_instances_by(self, index: int) -> dict[str, Any] | None:
        """The `with:` values of instance `index`, when they and its input types are all it is made
        from (then equal values and types make equal instances); None when not.

        An instance is a function of the call, its `with:` values, the names of its context and
        its input types. When the block (or a block it calls, which inherits `block_index`) reads
        no name that changes from one instance to the next (`index`; `block_index` for a top-level
        call), two instances given the same `with:` values (`stride: ${2 if index == 0 else 1}`
        gives instances 1, 2, ... the same) and input types are equal. None also when a value
        fails to evaluate: making the instance reports it.
        """
        expander = self.expander
        if self.varies is None:
            self.varies = expander.reads_varying_names(self)
        if self.varies:
            return None
        if self.constant_with is not None:
            return self.constant_with[0]  # type: ignore[no-any-return]
        problems: list[Diagnostic] = []
        dependent: list[str] = []
        given = expander.given(self, expander.context(self, index), problems, dependent)
        if problems or dependent:
            return None
        if self.with_varies is None:
            read = names_read(self.call.with_)
            self.with_varies = read is None or bool(read & VARYING_NAMES)
        if not self.with_varies:  # the same for every instance: evaluated once
            self.constant_with = (given,)
        # (Evaluated here outside `width_scaling`: values that evaluated without a problem called no
        # `scaled(...)`, so the instance, evaluating them inside it, would get the same.)
        self.evaluated_with = (index, given)
        return given  # type: ignore[no-any-return]


def expand(spec: Spec, source: SourceMap, *, read: Reader = load_import,
           diagnostics: list[Diagnostic] | None = None) -> Scope:
    """Expand a validated spec into its top-level scope; its block calls carry recipes for their instances.

    `spec.params` hold the parameter values. The total number of layers and skips is bounded
    (MAX_EXPANDED_NODES): a block call's size is projected from its first instance before the
    others are made, so a `repeat:` that would exceed the bound is refused at its `repeat:`.

    Args:
        read: how imported block libraries are read (by path, relative to the working directory).
        diagnostics: where to report what leaves the rest usable (a layer that cannot be typed,
            a call to an unknown block: they are left out of the scope, their names listed in
            `Scope.invalid`); without it, any problem raises.
    Raises:
        SpecError: unknown blocks or block parameters, missing required parameters, block cycles,
            expression errors, imports that cannot be read, layer or skip bodies that are invalid
            once their expressions are evaluated, and expansions over the bound.
    """
    found: list[Diagnostic] = []
    scope = Expander(spec, source, read, found).root()
    if found and diagnostics is None:
        raise SpecError(found)
    if diagnostics is not None:
        diagnostics.extend(found)
    return scope


def instantiate(recipe: BlockRecipe, index: int, input_types: list[TensorType] | None, qualname: str) -> Scope:
    """Instance `index` of a block call, for inputs of these types (None: unknown, after an error
    elsewhere: the instance is still made, so its own mistakes are reported, but what reads its
    input's shape is left out silently).

    Args:
        qualname: how messages name the instance (`layer1.0.`); each of its problems ends with
            `(in 'layer1.0')`, since a block's body is written once for every call and instance,
            and its line alone does not say which one gave the value that failed. A problem
            another instance reported already, word for word (a misspelt op), is not repeated.
    Raises:
        SpecError: the instance's parameters or layers are invalid, or the expansion bound is hit;
            its diagnostics may be empty when all of them were reported already.
    """
    expander = recipe.expander
    known = len(expander.diagnostics)
    scope = expander.instance(recipe, index, input_types)
    problems = expander.diagnostics[known:]
    del expander.diagnostics[known:]
    if problems or scope is None:
        raise SpecError([Diagnostic(problem.location, f"{problem.message} (in {qualname.removesuffix('.')!r})",
                                    problem.hint) for problem in first_reports(recipe, problems)])
    return scope


def first_reports(recipe: BlockRecipe, problems: list[Diagnostic], qualname: str = "") -> list[Diagnostic]:
    """`problems` of an instance of `recipe`'s block less those another instance reported already.

    A block's body is written once for every call and instance, so a mistake in it is one error,
    reported in the first instance it shows in. Messages naming the instance's nodes by `qualname`
    (`layer 'a.fc'`) are compared without it: `layer 'c.fc': unknown node 'x'`, from another call of
    the same block, is the same mistake at the same line. (A message that depends on the instance,
    a shape from its input, differs, and is reported.)
    """
    seen = recipe.expander.instance_problems
    fresh = []
    for problem in problems:
        key = (problem.location, problem.message.replace(f"'{qualname}", "'") if qualname else problem.message)
        if key not in seen:
            seen.add(key)
            fresh.append(problem)
    return fresh


class _ShapeNames(Mapping[str, Any]):
    """A block instance's names, with its input's shape among them (`SHAPE_NAMES`), read lazily: a
    size becomes a plain number only when an expression reads it, which specialises it (a
    recorded decision; see `resgraph.symbolic`), so reading nothing keeps the model size-generic."""

    def __init__(self, base: Mapping[str, Any], inputs: list[TensorType] | None,
                 prescaled: frozenset[str] = frozenset(), unknown: frozenset[str] = frozenset()) -> None:
        self.base = base
        self.inputs = inputs
        self.prescaled = prescaled  # parameters holding widths scaled already (see `evaluate.is_scaled_already`)
        self.unknown = unknown  # names that exist but have no value here (a block checked with no call: `blind`)

    def __getitem__(self, key: str) -> Any:
        if key in self.unknown:
            raise Unavailable(f"{key} is unknown: the block is checked without a call that gives it")
        if key in self.base or key not in SHAPE_NAMES:
            return self.base[key]
        if self.inputs is None:
            raise Unavailable(f"{key} is unknown: the shape of the block's input could not be inferred")
        first = self.inputs[0]
        # (each size specialised where an expression reads it: `in_shapes[0][0]` fixes the channels alone)
        if key == "in_shapes":
            return [ReadOnRequest(t.shape, specialize) for t in self.inputs]
        if key == "in_shape":
            return ReadOnRequest(first.shape, specialize)
        if not first.rank:
            raise ExpressionError(f"{key}: the block's input {first} has no dims")
        return specialize(first.shape[0] if key == "in_channels" else first.shape[-1])

    def __contains__(self, key: object) -> bool:
        # (Mapping's own reads the value: a shape name's would be specialised, or fail, just to be tested)
        return key in self.base or key in SHAPE_NAMES or key in self.unknown

    def __iter__(self) -> Iterator[str]:
        yield from self.base
        yield from (name for name in (*SHAPE_NAMES, *sorted(self.unknown)) if name not in self.base)

    def __len__(self) -> int:
        return len(set(self.base) | set(SHAPE_NAMES) | self.unknown)


def _unknown(names: Mapping[str, Any]) -> frozenset[str]:
    """The names `names` holds without a value (see `Expander.blind`)."""
    return names.unknown if isinstance(names, _ShapeNames) else frozenset()


class _BlockTable:
    """The blocks a document knows: its own and those of the libraries it imports (transitively),
    each library read once; problems (unreadable imports, cycles, a name defined twice) reported."""

    def __init__(self, read: Reader, diagnostics: list[Diagnostic]) -> None:
        self.read = read
        self.diagnostics = diagnostics
        self.blocks: dict[str, _Block] = {}
        self.imported: set[str] = set()  # libraries read so far (absolute paths, shipped names)
        # What has been read, the document's own nodes included: each file is bounded on its own
        # (loader.MAX_BYTES, MAX_NODES), and so are all of them together, or a spec importing many
        # large libraries (12 of 1.9M nodes each: 6.7 GB, 74 s) could take any amount of memory.
        self.nodes_read = 0
        self.bytes_read = 0
        self.over_bound = False  # the bound was reached (and reported): read no more

    def add_document(self, imports: list[str], blocks: Mapping[str, BlockDef], root: Origin) -> None:
        """A document's imports, then its own blocks (an imported name defined again is reported here)."""
        self.nodes_read += len(root.source.values)
        if imports:  # (the path is for import cycles: found only where there are imports)
            self.load_imports(imports, root, [_absolute(root.source.file)])
        for name, definition in blocks.items():
            self.add_block(name, definition, root.child("blocks", name))

    def load_imports(self, paths: list[str], origin: Origin, chain: list[str]) -> None:
        base = os.path.dirname(origin.source.file)
        for i, relative in enumerate(paths):
            where = origin.child("imports", i)
            if not relative:  # (joined to the importing file's folder, it named that folder)
                self.diagnostics.append(Diagnostic(where.locate(), f"cannot import {relative!r}: the file name is "
                                                                   "empty", "name a block library file, or remove "
                                                                            "the entry"))
                continue
            path = relative if is_shipped(relative) else os.path.normpath(os.path.join(base, relative))
            absolute = _absolute(path)
            if absolute in chain:
                cycle = " -> ".join(_shown_path(p) for p in [*chain, absolute])
                self.diagnostics.append(Diagnostic(where.locate(), f"import cycle: {cycle}"))
                continue
            key = path if is_shipped(path) else absolute
            if key in self.imported or self.over_bound:  # a diamond (its blocks are defined once), or no room
                continue
            self.imported.add(key)
            try:
                loaded = self.read(path)
                self.nodes_read += len(loaded.source.values)
                self.bytes_read += len(loaded.text)
                if self.nodes_read > MAX_NODES or self.bytes_read > MAX_BYTES:
                    self.over_bound = True
                    over = (f"{self.nodes_read:,} YAML nodes, more than the {MAX_NODES:,}"
                            if self.nodes_read > MAX_NODES else f"{self.bytes_read / 2**20:.1f} MiB of library "
                                                                f"text, more than the {MAX_BYTES // 2**20} MiB")
                    self.diagnostics.append(Diagnostic(where.locate(), (
                        f"cannot import {relative!r}: with it, the spec and its libraries would hold {over} resgraph "
                        "reads for one spec (nothing further is imported)"),
                        "import only the libraries whose blocks the spec uses"))
                    continue
                library = validate_library(loaded)
            except SpecError as exc:
                self.diagnostics.extend(exc.diagnostics)
                continue
            except (ResgraphError, OSError, ValueError) as exc:  # the file cannot be read, or is not a library
                reason = str(exc) or type(exc).__name__
                self.diagnostics.append(Diagnostic(where.locate(), f"cannot import {relative!r}: {reason}",
                                                   _missing_import_hint(relative, path, origin.source.file)))
                continue
            library_origin = Origin(loaded.source, ())
            self.load_imports(library.imports, library_origin, [*chain, absolute])
            for name, definition in library.blocks.items():
                self.add_block(name, definition, library_origin.child("blocks", name))

    def add_block(self, name: str, definition: BlockDef, origin: Origin) -> None:
        if name in self.blocks:
            first = self.blocks[name].origin.locate(key=True)
            self.diagnostics.append(Diagnostic(origin.locate(key=True), f"block {name!r} is defined twice "
                                                                        f"(first at {first})"))
            return
        self.blocks[name] = _Block(definition, origin)


class Expander(_BlockTable):
    """Expansion's state: the blocks known, the spec's scale and defaults, and how much has been expanded."""

    def __init__(self, spec: Spec, source: SourceMap, read: Reader, diagnostics: list[Diagnostic]) -> None:
        super().__init__(read, diagnostics)
        self.spec = spec
        self.source = source
        self.num_blocks = 0
        self.expanded = 0  # layers and skips made so far, in all scopes
        self.exhausted = False  # the bound was hit (and reported): expand nothing more
        # Block cycles reported (each once, from whichever block it is entered), and blocks whose
        # cycles another run reported: a `blind` check's expander is given those the expansion reached.
        self.cycles: set[frozenset[str]] = set()
        self.cycles_reported_through: frozenset[str] = frozenset()
        self.first_sizes: dict[int, int] = {}  # id(recipe) -> nodes its first instance took
        self.typed_bodies: dict[Any, Any] = {}  # equal entry bodies share one typed object (see `concrete`)
        self.typed_templates: dict[int, tuple[Any, Any, Any]] = {}  # blocks' entries met, by id (`concrete`)
        self.block_reads: dict[str, tuple[frozenset[str], frozenset[str]] | None] = {}  # see `reads_of_block`
        self.spec_params: dict[str, Any] | None = None  # see `spec_params_in_blocks`
        self.instance_problems: set[tuple[Location, str]] = set()  # reported by an instance (see `instantiate`)

    # (root and instance are where expressions are evaluated: `scaled(...)` reads the spec's scale there)
    def root(self) -> Scope:
        with width_scaling(self.spec.scale.scaled_width):
            return self._root()

    def _root(self) -> Scope:
        root = Origin(self.source, ())
        self.add_document(self.spec.imports, self.spec.blocks, root)
        spec = self.spec
        top = _Body(params={}, inputs=list(spec.inputs), layers=spec.layers, skips=spec.skips, outputs=spec.outputs)
        if not self.diagnostics:
            self.check_least_size(top, root)
        if self.diagnostics:  # the blocks could not be read, or the spec is too big: nothing more to report
            return self.placeholder(top, root)
        inputs = {name: None if spec.invalid_input(name) else decl for name, decl in spec.input_decls().items()}
        scope = self.scope(spec.name, top, root, dict(spec.params), (), inputs=inputs,
                           params=dict(spec.params), top_level=True)
        scope.defined_blocks = tuple(self.blocks)
        self.check_training(root)
        return scope

    def check_training(self, root: Origin) -> None:
        """A diagnostic for each block the `training:` plan names that the spec neither defines nor
        imports. (One it defines but the parameters in force leave uncalled is no mistake: the plan
        chooses no instance of it.)"""
        known = list(self.blocks)
        for key in ("shard", "compile"):
            for index, name in enumerate(getattr(self.spec.training, key) or []):
                if name not in self.blocks:
                    self.diagnostics.append(Diagnostic(
                        root.child("training", key, index).locate(),
                        f"training.{key}: {self.spec.name} has no block named {name!r}{did_you_mean(name, known)}",
                        f"name a block it defines or imports: {', '.join(known) or 'none'}"))

    def placeholder(self, top: _Body, root: Origin) -> Scope:
        """The top level with every entry refused: resolving it reports nothing more."""
        layers = [LayerItem(name, None, root.child("layers", i, name)) for i, entry in enumerate(top.layers)
                  for name in entry]
        skips = [SkipItem(name, None, root.child("skips", i, name)) for i, entry in enumerate(top.skips)
                 for name in entry]
        return Scope(self.spec.name, dict(self.spec.input_decls()), layers, skips, None,
                     self.spec.defaults.projection, root, params=dict(self.spec.params))

    # scopes: the top level and block instances alike
    def scope(self, name: str, definition: BlockDef | _Body, origin: Origin, names: Mapping[str, Any],
              stack: tuple[str, ...], *, inputs: dict[str, InputDecl | None], params: dict[str, Any],
              block: str | None = None, top_level: bool = False) -> Scope:
        layers: list[LayerItem] = []
        left_out: dict[str, LeftOut] = {}
        self.expanded += len(definition.layers) + len(definition.skips)
        refused = self.spec.invalid_entries if top_level else frozenset()
        # (bound once: the loops below run once per layer and skip, 100,000 times in a long chain)
        diagnostics, typed_bodies = self.diagnostics, self.typed_bodies
        # (no width to scale: a layer is typed as the body it is, keyed once, as a skip is)
        scale = self.spec.scale if self.spec.scale.scales_widths else None
        # (a block's entries are met again at each instance; the top level's once, so it keeps none)
        by_template = self.typed_templates if block is not None else None
        prescaled = names.prescaled if isinstance(names, _ShapeNames) else frozenset()
        for i, entry in enumerate(definition.layers):
            for layer_name, template in entry.items():
                where = origin.child("layers", i, layer_name)
                if refused and ("layers", i) in refused:
                    layers += _refused_items(layer_name, template, where)  # refused by validation, and reported there
                    continue
                body = concrete(template, LAYER, names, where, diagnostics, scale, typed_bodies, prescaled, by_template)
                if body is None:  # its error is reported; what reads it would only repeat that
                    layers += _refused_items(layer_name, template, where)
                elif body is not LEFT_OUT:
                    layers.append(LayerItem(layer_name, body, where))
                else:  # (a chunk/split is read by the names of its outputs)
                    left_out.update({item.name: LeftOut(where.child("when"), skip=False)
                                     for item in _refused_items(layer_name, template, where)})
        calls = [item for item in layers if isinstance(item.body, BlockCall)]
        if top_level:
            self.num_blocks = sum(self.repeats(item.body) for item in calls)  # type: ignore[arg-type]
        block_index = 0
        for item in calls:
            item.recipe = self.recipe(item, names, stack, block_index if top_level else None)
            if item.recipe is None:
                item.body = None  # reported
            else:
                block_index += item.recipe.count
        skips = []
        for i, entry in enumerate(definition.skips):
            for skip_name, template in entry.items():
                where = origin.child("skips", i, skip_name)
                if refused and ("skips", i) in refused:
                    skips.append(SkipItem(skip_name, None, where))
                    continue
                skip = concrete(template, Skip, names, where, diagnostics, typed_bodies=typed_bodies,
                                by_template=by_template)
                if skip is not LEFT_OUT:
                    skips.append(SkipItem(skip_name, skip, where))
                else:
                    left_out[skip_name] = LeftOut(where.child("when"), skip=True)
        return Scope(name, inputs, with_pieces(layers, list(inputs)), skips, definition.outputs,
                     self.spec.defaults.projection, origin, block=block, params=params, left_out=left_out,
                     # (of the block table and spec alone: a bound method would keep this expander, and all it
                     # made, alive through resolution and shape inference: 16 MiB more at 100k layers)
                     elsewhere=functools.partial(_declared_elsewhere, self.blocks, self.spec, block))

    def repeats(self, call: BlockCall) -> int:
        if call.repeat is None:
            return 1
        if not call.scale:
            return call.repeat
        return self.spec.scale.repeats(call.repeat)

    @staticmethod
    def label(item: LayerItem) -> str:
        """`layer 'stage'`, or `block 'b', layer 'inner'` for a layer inside a block."""
        return subject(item.origin.path, None, "")[0]

    def recipe(self, item: LayerItem, names: Mapping[str, Any], stack: tuple[str, ...],
               first_block_index: int | None) -> BlockRecipe | None:
        """A block call's recipe, after the checks that need no instance; None (reported) when it fails."""
        call = item.body
        assert isinstance(call, BlockCall)
        block = self.blocks.get(call.block)
        if block is None:
            if not self.spec.invalid_block(call.block):  # an invalid block was reported where it is defined
                self.diagnostics.append(Diagnostic(item.origin.child("block").locate(),
                                                   f"{self.label(item)}: unknown block {call.block!r}"
                                                   f"{did_you_mean(call.block, self.blocks)}"))
            return None
        if self.spec.invalid_block(call.block):
            return None
        if call.block in stack:
            blocks = frozenset(stack[stack.index(call.block):])
            if blocks not in self.cycles and not blocks & self.cycles_reported_through:
                self.cycles.add(blocks)
                cycle = " -> ".join([*stack[stack.index(call.block):], call.block])
                self.diagnostics.append(Diagnostic(item.origin.child("block").locate(),
                                                   f"{self.label(item)}: block cycle {cycle}"))
            return None
        if len(stack) >= MAX_BLOCK_DEPTH:
            self.diagnostics.append(Diagnostic(item.origin.locate(key=True),
                                               f"blocks nest deeper than {MAX_BLOCK_DEPTH} levels"))
            return None
        definition = block.definition
        if call.repeat is not None and (len(definition.inputs) != 1 or len(definition.outputs or [None]) != 1):
            self.diagnostics.append(Diagnostic(item.origin.child("repeat").locate(key=True),
                                               f"{self.label(item)}: repeat chains instances, so block "
                                               f"{call.block!r} needs one input and one output"))
            return None
        if call.collect and call.repeat is None:
            self.diagnostics.append(Diagnostic(item.origin.child("collect").locate(key=True),
                                               f"{self.label(item)}: collect keeps the output of every instance "
                                               "of a repeat, and this call has no `repeat:`",
                                               "add `repeat: N`, or remove `collect: true`"))
            return None
        known = len(self.diagnostics)
        self.check_with(item, call, definition)
        if len(self.diagnostics) > known:
            return None
        return BlockRecipe(call, item.name, item.origin, call.block, definition, block.origin, names, stack,
                           self.repeats(call), first_block_index, self)

    def instance(self, recipe: BlockRecipe, index: int, input_types: list[TensorType] | None) -> Scope | None:
        """Instance `index` of a block call (see `instantiate`); None (reported) when it cannot be made."""
        with width_scaling(self.spec.scale.scaled_width):
            return self._instance(recipe, index, input_types)

    def _instance(self, recipe: BlockRecipe, index: int, input_types: list[TensorType] | None) -> Scope | None:
        if self.exhausted:
            return None
        if self.projected_past_bound(recipe, index):
            self.refuse_size(recipe.origin, recipe.call.repeat, recipe.count, self.first_sizes[id(recipe)])
            return None
        context = self.context(recipe, index)
        known = len(self.diagnostics)
        dependent: list[str] = []
        evaluated, recipe.evaluated_with = recipe.evaluated_with, None
        if evaluated is not None and evaluated[0] == index:
            bound = evaluated[1]  # evaluated by `equal_instances_by` just before, without a problem
        else:
            bound = self.given(recipe, context, self.diagnostics, dependent)
        if len(self.diagnostics) > known or dependent:
            return None  # a `with:` value failed: the defaults computed from it would only repeat it
        spec_params = self.spec_params_in_blocks()
        unknown = _unknown(recipe.names) & {"block_index", "num_blocks"}  # inside a block checked `blind`
        own = _ShapeNames({**spec_params, **context}, input_types, unknown=unknown)
        block = _Block(recipe.definition, recipe.block_origin)
        block_params = self.bind(recipe.definition, block, bound, own, dependent)
        if block_params is None or len(self.diagnostics) > known or dependent:
            return None  # its parameters failed (reported here, or depending on an error reported elsewhere)
        before = self.expanded
        # (which parameters hold scaled widths matters only where widths are scaled: see `scale_width`)
        prescaled = prescaled_params(recipe.definition.params, recipe.call.with_ or {},
                                     recipe.names.prescaled if isinstance(recipe.names, _ShapeNames)
                                     else frozenset()) if self.spec.scale.scales_widths else frozenset()
        names = _ShapeNames({**spec_params, **context, **block_params}, input_types, prescaled, unknown)
        scope = self.scope(class_name(recipe.block), recipe.definition, recipe.block_origin, names,
                           (*recipe.stack, recipe.block), inputs={name: None for name in recipe.definition.inputs},
                           params=block_params, block=recipe.block)
        if index == 0:
            self.first_sizes[id(recipe)] = self.expanded - before
        if self.expanded > MAX_EXPANDED_NODES:
            self.refuse_size(recipe.origin, recipe.call.repeat, recipe.count, self.expanded - before)
            return None
        return scope

    def blind(self, block: str) -> Scope | None:
        """An instance of `block` made with nothing known of a call (no call made one, after errors
        elsewhere): its parameters, instance names and input shape have no value, so what reads
        them is left out quietly, and its own mistakes (unknown names, invalid bodies) are reported.
        None when nothing can be made (the block is unknown, or the expansion bound was reached)."""
        entry = self.blocks.get(block)
        if entry is None or self.exhausted:
            return None
        definition = entry.definition
        spec_params = self.spec_params_in_blocks()
        unknown = frozenset({*definition.params, *INSTANCE_NAMES})
        names = _ShapeNames({k: v for k, v in spec_params.items() if k not in unknown}, None, unknown=unknown)
        with width_scaling(self.spec.scale.scaled_width):
            scope = self.scope(class_name(block), definition, entry.origin, names, (block,),
                               inputs={name: None for name in definition.inputs}, params={}, block=block)
        scope.blind = True
        return scope

    def spec_params_in_blocks(self) -> dict[str, Any]:
        """The spec's parameters as block instances read them, found once per expansion: inside a
        block the built-in names win over top-level parameters of the same name (a spec's
        `in_channels: 1` sizes its input; a block's `${in_channels}` is still its own input's)."""
        if self.spec_params is None:
            self.spec_params = {k: v for k, v in self.spec.params.items() if k not in SHAPE_NAMES}
        return self.spec_params

    def context(self, recipe: BlockRecipe, index: int) -> dict[str, Any]:
        """The names bound for instance `index` of a call (`INSTANCE_NAMES`)."""
        context: dict[str, Any] = {"index": index, "repeats": recipe.count}
        if recipe.first_block_index is not None:
            context |= {"block_index": recipe.first_block_index + index, "num_blocks": self.num_blocks}
        else:  # a nested call: the blocks inside a top-level instance share its block_index
            context |= {name: recipe.names[name] for name in ("block_index", "num_blocks")
                    if name in recipe.names and name not in _unknown(recipe.names)}
        return context

    def given(self, recipe: BlockRecipe, context: dict[str, Any], diagnostics: list[Diagnostic],
              dependent: list[str]) -> Any:
        """A call's `with:` values for one instance, evaluated in the caller's names and its context."""
        caller = {**recipe.names, **context} if not isinstance(recipe.names, _ShapeNames) else \
            _ShapeNames({**recipe.names.base, **context}, recipe.names.inputs,
                        unknown=recipe.names.unknown - set(context))
        return evaluate_tree(recipe.call.with_, caller, recipe.origin.child("with"), diagnostics, dependent=dependent)

    def reserve(self, recipe: BlockRecipe, index: int, size: int) -> bool:
        """Count instance `index` of a call as expanded without expanding it (it equals one made
        before, which took `size` layers and skips with the instances inside it); False, counting
        nothing, where expanding it would hit the bound, so that `instantiate` reports it as usual."""
        if self.exhausted or self.expanded + size > MAX_EXPANDED_NODES or self.projected_past_bound(recipe, index):
            return False
        self.expanded += size
        return True

    def projected_past_bound(self, recipe: BlockRecipe, index: int) -> bool:
        """At a call's second instance, whether its instances, each the size of its first, would pass
        the expansion bound: the whole call is refused then, before expanding the rest."""
        first = self.first_sizes.get(id(recipe))
        return index == 1 and first is not None and self.expanded + first * (recipe.count - 1) > MAX_EXPANDED_NODES

    def reads_varying_names(self, recipe: BlockRecipe) -> bool:
        """Whether the block of a call reads a name that changes from one instance to the next
        (see `BlockRecipe.equal_instances_by`)."""
        changing = VARYING_NAMES if recipe.first_block_index is not None else {"index"}
        reads = self.reads_of_block(recipe.block, ())
        return reads is None or bool(reads[0] & changing or reads[1] & changing & {"block_index"})

    def reads_of_block(self, block: str, stack: tuple[str, ...]) -> tuple[frozenset[str], frozenset[str]] | None:
        """(names a block's own expressions read, names the blocks it calls read, at any depth);
        None when that cannot be told: an expression that does not parse, a call of an unknown
        block or of a block named by an expression, a cycle."""
        if block in self.block_reads:
            return self.block_reads[block]
        known = self.blocks.get(block)
        answer: tuple[frozenset[str], frozenset[str]] | None = None
        if known is not None and block not in stack:
            definition = known.definition
            parts: list[Any] = [definition.params, definition.skips, definition.outputs]
            given: list[Any] = []  # a call's `with:`: evaluated per instance of that call, whose `index` it reads
            callees: list[Any] = []
            for entry in definition.layers:
                for template in entry.values():
                    if not isinstance(template, dict) or "op" in template:
                        parts.append(template)  # a layer
                        continue
                    parts.append({key: value for key, value in template.items() if key != "with"})
                    given.append(template.get("with"))
                    callees.append(template.get("block"))
            own, in_given = names_read(parts), names_read(given)
            own = None if own is None or in_given is None else own | (in_given - {"index"})
            inner: set[str] | None = set()
            for callee in callees:
                if callee is None:
                    continue
                reads = self.reads_of_block(callee, (*stack, block)) if isinstance(callee, str) else None
                if reads is None:
                    inner = None
                    break
                inner |= reads[0] | reads[1]
            if own is not None and inner is not None:
                answer = (frozenset(own), frozenset(inner))
        self.block_reads[block] = answer
        return answer

    def check_least_size(self, top: _Body, root: Origin) -> None:
        """Refuse, before expanding anything, a spec whose literal repeats alone exceed the bound.

        A lower bound: only calls whose `when:` is not an expression count, and a `repeat:`
        expression counts only when it reads nothing but the spec's own parameters (anything
        else may vary per instance, so it counts as 1); what this misses, `instantiate` catches
        from each call's first instance.
        """
        sizes: dict[str, int] = {}  # block -> its least size, 0 while it is being computed
        # (a call to a block not known counts 0: with none known, only the entries themselves count)
        calls = self._surely_called(top, sizes) if self.blocks else []
        entries = len(top.layers) + len(top.skips)
        total = entries + sum(count * size for count, size, _ in calls)
        if total <= MAX_EXPANDED_NODES:
            return
        if entries > MAX_EXPANDED_NODES:  # the spec's own entries, whatever its calls add
            self.exhausted = True
            section = "layers" if len(top.layers) > MAX_EXPANDED_NODES or not top.skips else "skips"
            self.diagnostics.append(Diagnostic(
                root.child(section).locate(key=True),
                f"the spec has {entries:,} layers and skips of its own, more than the {MAX_EXPANDED_NODES:,} a model "
                "may have", "write repeated parts once as a block called with `repeat:`"))
            return
        count, size, body = max(calls, key=lambda call: call[0] * call[1])
        where = next(root.child("layers", i, name) for i, entry in enumerate(top.layers)
                     for name, template in entry.items() if template is body)
        repeat = self._literal_repeat(body["repeat"], ()) if "repeat" in body else None
        self.refuse_size(where, repeat, count, size)

    # (Methods, not functions nested in check_least_size: two nested functions calling each other
    # are a reference cycle, which kept the expander, and every typed body it holds, alive until
    # the next garbage collection.)

    def _surely_called(self, definition: BlockDef | _Body,
                       sizes: dict[str, int]) -> list[tuple[int, int, dict[str, Any]]]:
        """(instances, least size of one, template) of each block call in `definition` that surely happens."""
        calls = []
        for entry in definition.layers:
            for body in entry.values():
                callee = body.get("block") if isinstance(body, dict) else None
                if not isinstance(callee, str) or "op" in body or body.get("when", True) is not True:
                    continue
                repeat = self._literal_repeat(body.get("repeat", 1), definition.params)
                count = repeat if body.get("scale", True) is False or "repeat" not in body else \
                    self.spec.scale.repeats(repeat)
                calls.append((count, self._least_size(callee, sizes), body))
        return calls

    def _least_size(self, name: str, sizes: dict[str, int]) -> int:
        if name in sizes or name not in self.blocks:
            return sizes.get(name, 0)  # 0 while its own size is being computed: a cycle, reported later
        sizes[name] = 0
        definition = self.blocks[name].definition
        total = len(definition.layers) + len(definition.skips)
        least = sum(count * size for count, size, _ in self._surely_called(definition, sizes))
        sizes[name] = min(total + least, MAX_EXPANDED_NODES + 1)
        return sizes[name]

    def _literal_repeat(self, value: Any, local: Iterable[str]) -> int:
        """A call's `repeat:` where it is known before expanding (a literal, or an expression of the
        spec's own parameters), else 1."""
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

    def bind(self, definition: BlockDef, block: _Block, given: dict[str, Any], names: _ShapeNames,
             dependent: list[str]) -> dict[str, Any] | None:
        """Block parameter values: given ones, else defaults (which may use earlier ones and the
        block's input shape)."""
        if any(default == REQUIRED and name not in given for name, default in definition.params.items()):
            return None  # reported by check_with
        return evaluate_params(definition.params, given,
                               lambda values: _ShapeNames({**names.base, **values}, names.inputs),
                               block.origin.child("params"), self.diagnostics, dependent)


def _shown_path(path: str) -> str:
    """An absolute path as a message shows it: relative to the current directory when it lies under it
    (`lib/a.yaml`), else absolute (not `../../tmp/lib/a.yaml`)."""
    try:
        relative = os.path.relpath(path)
    except (ValueError, OSError):  # (another drive, on Windows; the current directory was removed)
        return path
    return path if relative.startswith(os.pardir) else relative


def _absolute(path: str) -> str:
    """`os.path.abspath(path)`; `path` normalised where the current directory was removed (abspath
    asks for it): an import relative to it then fails where it is read, with a located message."""
    try:
        return os.path.abspath(path)
    except OSError:
        return os.path.normpath(path)


def _current_directory() -> str:
    """The current directory, as a hint names it (or that it was removed)."""
    try:
        return os.getcwd()
    except OSError:
        return "which was removed"


def _missing_import_hint(relative: str, path: str, importer: str) -> str | None:
    """How to fix an import whose file is not there: the shipped library of that name, and where a
    spec given as text or a dict (no file of its own) looked for it."""
    if is_shipped(path) or os.path.exists(path):
        return None  # there, but unreadable or not a library: the reason says so
    hints = []
    shipped = f"{SHIPPED}{relative.removeprefix('./')}"
    if shipped in shipped_libraries():
        hints.append(f"resgraph ships this library: import it as `{shipped}`")
    if not os.path.dirname(importer) and importer.startswith("<"):
        hints.append(f"a spec given as text or a dict has no file of its own, so its imports are read relative to "
                     f"the current directory ({_current_directory()}); build it from its path to import relative "
                     "to it")
    return "; ".join(hints) or None


def prescaled_params(params: Mapping[str, Any], given: Mapping[str, Any], caller: frozenset[str]) -> frozenset[str]:
    """The parameters of a block instance that hold widths scaled already: given (`with:`) by an
    expression that reads the caller's input size, a caller's such parameter or `scaled(...)`, or
    not given and defaulting to an expression that reads the block's input size or such a
    parameter before it (`hidden: "${in_channels // 2}"`). A conv whose width reads one is not
    scaled again (see `evaluate.is_scaled_already`).

    >>> sorted(prescaled_params({"c2": REQUIRED, "hidden": "${c2 // 2}", "k": 1}, {"c2": "${in_channels}"},
    ...                         frozenset()))
    ['c2', 'hidden']
    """
    found: set[str] = set()
    for name, default in params.items():
        if name in given:
            if is_scaled_already(given[name], caller):
                found.add(name)
        elif is_scaled_already(default, found):
            found.add(name)
    return frozenset(found)


def _refused_items(name: str, template: Any, where: Origin) -> list[LayerItem]:
    """The items standing for a refused layer (body None), so that what reads it is left out quietly:
    the layer itself, or, for a chunk/split, each of the outputs it names (which readers use instead
    of its own name; without them, each reader of a refused split said "unknown node 'y0'")."""
    pieces = template.get("outputs") if isinstance(template, dict) and "block" not in template else None
    if isinstance(pieces, list) and pieces and all(isinstance(p, str) and is_identifier(p) for p in pieces):
        return [LayerItem(piece, None, where.child("outputs", k)) for k, piece in enumerate(pieces)]
    return [LayerItem(name, None, where)]


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


def check_unreached_blocks(spec: Spec, source: SourceMap, reached: set[str]) -> list[Diagnostic]:
    """Unknown ops in the spec's own blocks that no instance was made of.

    A block's body is typed when an instance of it is made; a block whose every call failed (or
    that no layer calls) is never typed, so a misspelt op in it would surface only on the next
    run. This names those ops without instantiating anything: ops written as literals only (a
    `${}` op depends on parameters the failed call did not supply).
    """
    unreached = {block: definition for block, definition in spec.blocks.items()
                 if block not in reached and not spec.invalid_block(block)}
    return unknown_block_ops(unreached, source)


def blind_scopes(spec: Spec, source: SourceMap, blocks: Iterable[str], reached: Iterable[str] = (),
                 read: Reader = load_import) -> tuple[list[tuple[str, Scope]], list[Diagnostic]]:
    """Scopes of the spec's `blocks` made with nothing known of a call (`Expander.blind`), for a run
    that failed before any call made one, and the problems making them found. None when the imports
    cannot all be read (expansion reported that, and checked nothing more either); cycles through a
    `reached` block are not repeated (one of its instances was made: expansion met the cycle)."""
    expander = Expander(spec, source, read, [])
    expander.cycles_reported_through = frozenset(reached)
    expander.add_document(spec.imports, spec.blocks, Origin(source, ()))
    if expander.diagnostics:  # the blocks could not all be read: a call could name one that is missing
        return [], []
    scopes = [(block, scope) for block in blocks if not spec.invalid_block(block)
              for scope in [expander.blind(block)] if scope is not None]
    return scopes, expander.diagnostics


def check_library_blocks(library: BlockLibrary, source: SourceMap, read: Reader = load_import) -> list[Diagnostic]:
    """What a block library's own check can tell before any call gives its blocks' parameters
    values: imports that cannot be read (or define a name twice), ops that do not exist, and block
    calls naming a block that neither the library nor its imports define (literal names only)."""
    table = _BlockTable(read, [])
    table.add_document(library.imports, library.blocks, Origin(source, ()))
    found = table.diagnostics + unknown_block_ops(library.blocks, source)
    for block, definition in library.blocks.items():
        for i, entry in enumerate(definition.layers):
            for name, template in entry.items():
                called = template.get("block")
                if isinstance(called, str) and "${" not in called and called not in table.blocks:
                    where = Origin(source, ("blocks", block, "layers", i, name, "block"))
                    found.append(Diagnostic(where.locate(), f"block {block!r}, layer {name!r}: unknown block "
                                                            f"{called!r}{did_you_mean(called, table.blocks)}"))
    return sorted(found, key=lambda d: (d.location.file, d.location.line, d.location.column))


def _declared_elsewhere(blocks: Mapping[str, Any], spec: Spec, block: str | None, name: str) -> str | None:
    """Where `name`, which the scope of `block` (None: the top level) does not know, is declared
    instead: as a layer of other blocks, or at the top level; None where it is nowhere. Each
    scope reads only its own inputs and layers, so a skip or input naming another scope's
    layer is unknown there, and a message saying only that would send one looking for a typo."""
    owners = [other for other, entry in blocks.items()
              if other != block and any(name in layer for layer in entry.definition.layers)]
    top = block is not None and (name in spec.inputs or any(name in layer for layer in spec.layers))
    places, fixes = [], []
    if owners:
        named = " and ".join(repr(owner) for owner in owners[:3]) + (" and others" if owners[3:] else "")
        places.append(f"a layer of block {named}")
        fixes.append(f"read what a call of that block returns (to return {name!r}, add it to the block's "
                     f"`outputs:` and read `CALL.{name}`)")
    if top:
        inputs = ", ".join([*blocks[block].definition.inputs, name]) if block in blocks else f"x, {name}"
        places.append("a node of the spec's top level")
        fixes.append(f"give block {block!r} another input (`inputs: [{inputs}]`) and pass {name!r} in its "
                     "call's `input:` list")
    if not places:
        return None
    own = f" ({', '.join(blocks[block].definition.inputs)})" if block in blocks else ""
    here = f"block {block!r}" if block is not None else "the top level"
    return (f"{name!r} is {' and '.join(places)}, and {here} reads only its own inputs{own} and layers: "
            f"{'; or '.join(fixes)}")
