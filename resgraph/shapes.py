"""Stage 5, infer shapes: type every node statically and plan every skip's projection.

Runs before any weight exists (curated ops use pure shape functions; uncurated torch.nn classes
run on the meta device). Results go to `node.meta`: `type` (TensorType), `args` (the full
constructor arguments, inferred sizes included), `params` (parameter count, None where only
building can tell), `storage` (a layer's or block's `Storage`: how its output shares memory with
its inputs, which the in-place check follows) and, for skips, `projection` (ProjectionPlan).
A node whose inputs failed is skipped silently, so each reported error is an independent one.

>>> from resgraph.graph import GraphBuilder
>>> b = GraphBuilder("Net")
>>> _ = b.input("x", [3, 8, 8]), b.layer("conv", "Conv2d", out_channels=4, kernel_size=3, stride=2, padding=1)
>>> _ = b.skip("res", "x", "conv")
>>> graph = infer_shapes(b.build())
>>> graph.nodes["conv"].meta["type"].shape, graph.nodes["res"].meta["projection"].reason
((4, 4, 4), '3->4 channels, /2')
"""

from __future__ import annotations

import contextvars
import operator
from collections.abc import Iterable
from fractions import Fraction
from typing import Any

from .errors import Diagnostic, SpecError
from .evaluate import freeze
from .expand import MAX_BLOCK_DEPTH, BlockRecipe, Reader, blind_scopes, first_reports, instantiate
from .fitting import refused, trying
from .graph import BlockNode, Graph, InputNode, LayerNode, Node, SkipNode, is_block_value
from .hints import skip_hint, stored_layout_hint
from .loader import Origin, SourceMap
from .ops import OPS, ShapeError, TensorType, merge_type
from .ops.base import (
    FLOAT_DTYPES,
    FRESH,
    WEIGHTED_DTYPES,
    DtypeError,
    FeatureMapLayer,
    LayoutError,
    Storage,
    dtype_hint,
)
from .ops.elementwise import RETURNS_INPUT
from .ops.tensor import BlockOutput, SplitBase
from .projections import ProjectionError, describe_steps, plan_projection, projection_dtypes, projection_parameters
from .resolve import resolve
from .spec import MAX_DIM, MAX_RANK, BlockDef, InputDecl, Spec
from .symbolic import (
    Guard,
    SizeOverflowError,
    SymInt,
    recorded,
    recorded_count,
    recording,
    site,
    size_symbols,
    specialize,
)

# The top-level graph's input symbols while it is inferred (hints for mismatches use them).
_SYMBOLS: contextvars.ContextVar[dict[str, tuple[str, int, int]] | None] = contextvars.ContextVar("symbols",
                                                                                                 default=None)

# The symbolic sizes read by layers whose sizes torch.export specialises (`Layer.export_static`), while
# the top-level graph is inferred.
_EXPORT_STATIC: contextvars.ContextVar[list[SymInt] | None] = contextvars.ContextVar("export_static", default=None)

__all__ = ["check_uncalled_blocks", "declared_type", "free_dims", "infer_shapes", "total_parameters"]

# What typing a layer or skip wrote to `node.meta`, by what it depends on: the layer (by identity:
# expansion gives equal bodies one object) or the skip's settings, and its input types (see
# `_type_key`: a symbolic size by its expression, whose guards the first typing recorded already).
# A chain of 10,000 equal layers, 200 instances of a block, or the layers after the first conv of
# ResNet's second bottleneck of each stage (equal to the first's), are typed once per distinct case.
# A layer's or skip's entry is kept once its typing has passed every check (`_check_size` too), so
# an equal node reuses it without checking again (and without entering its site: it records nothing).
_Memo = dict[tuple[Any, ...], Any]

# The `node.meta` entries typing a layer or a skip writes (what an equal node reuses).
_LAYER_META = ("type", "storage", "args", "params")
_SKIP_META = ("projection", "params", "type", "concat_dim")
# Each as (key, value) pairs, read in one call: every typed node is kept, most never reused.
_KEPT_META = {LayerNode: (_LAYER_META, operator.itemgetter(*_LAYER_META)),
              SkipNode: (_SKIP_META, operator.itemgetter(*_SKIP_META))}


def infer_shapes(graph: Graph, input_types: list[TensorType] | None = None,
                 diagnostics: list[Diagnostic] | None = None) -> Graph:
    """Annotate every node (and every block instance's nodes) with its type; return the graph.

    Each input's free dims (see `free_dims`) are symbols, so every size is known as a function of
    them; the decisions made on them are recorded in `graph.meta["guards"]` (with the symbols in
    `graph.meta["symbols"]`), from which `resgraph.sizes` tells every input size the model admits.
    The types left in `node.meta["type"]` hold the sizes at the declared input size.

    Args:
        input_types: the types of the graph's inputs, instead of their declarations (symbolic
            sizes allowed).
        diagnostics: where to report problems instead of raising (the graph is then typed only
            partly).
    Raises:
        SpecError: every shape the spec gets wrong, each at its layer or skip (and every problem
            in the block instances it makes).
    """
    symbols: dict[str, tuple[str, int, int]] = {}
    if input_types is None:
        input_types = []
        readers = graph.consumers(graph.inputs)
        for name in graph.inputs:
            node = graph.nodes[name]
            assert isinstance(node, InputNode)
            if node.decl is None:  # validation refused its declaration (and reported it): no type
                input_types.append(None)  # type: ignore[arg-type]
                continue
            reads = _reads(graph, name, readers)
            declared = declared_type(node.decl, bool(reads) and all(_reads_1d_map(op) for op, _ in reads),
                                     bool(reads) and all(role == "sequence" for _, role in reads))
            shape = list(declared.shape)
            for axis, label in free_dims(declared, positions=bool(reads) and all(role == "mask" for _, role in reads)):
                symbol = f"{name}.{label}"
                symbols[symbol] = (name, axis, shape[axis])
                shape[axis] = SymInt.symbol(symbol, shape[axis])
            input_types.append(declared.with_shape(tuple(shape)))
    export_static: list[SymInt] = []
    with recording() as guards:
        token, static_token = _SYMBOLS.set(symbols), _EXPORT_STATIC.set(export_static)
        try:
            problems = _infer(graph, input_types, {})
        finally:
            _SYMBOLS.reset(token)
            _EXPORT_STATIC.reset(static_token)
    if problems or None in input_types:
        if diagnostics is None:
            raise SpecError(problems)
        diagnostics.extend(problems)
        return graph
    graph.meta["size_exprs"] = list(_to_hints(graph).values())  # every symbolic size a node had
    graph.meta["symbols"] = symbols
    graph.meta["export_static"] = size_symbols([size.expr for size in export_static])
    graph.meta["guards"] = [guard for guard in guards if guard.left.op != "const" or guard.right.op != "const"]
    return graph


def _infer(graph: Graph, input_types: list[TensorType], memo: _Memo) -> list[Diagnostic]:
    diagnostics: list[Diagnostic] = []
    failed_splits: set[tuple[int, str]] = set()
    given = iter(input_types)
    nodes, qualname = graph.nodes, graph.qualname
    for node in nodes.values():
        kind = type(node)  # (one of the four node classes, which have no subclasses: see graph.py)
        if kind is InputNode:
            node.meta["type"] = next(given)
            try:
                _check_size(node)
            except ShapeError as exc:  # (its readers are then left out: their errors would only repeat it)
                diagnostics.append(_located(graph, node, exc))
                del node.meta["type"]
            continue
        inputs = [nodes[name].meta.get("type") for name in node.inputs]
        if not all(inputs):  # (an input failed: a type is always true; `None in` would call each type's __eq__)
            if kind is BlockNode:  # its body's own mistakes do not depend on its input
                diagnostics += _check_blind(graph, node)
            continue
        key = None if kind is BlockNode else _memo_key(node, inputs)
        if key is not None:
            known = memo.get(key)
            if known is not None and known[0] is (node.layer if kind is LayerNode else None):  # (see _memo_key)
                node.meta.update(known[1])
                continue
        try:
            with site(qualname + node.name):
                if kind is LayerNode:
                    if isinstance(node.layer, BlockOutput):
                        _infer_block_output(graph, node)
                    else:
                        _infer_layer(graph, node, inputs)
                elif kind is BlockNode:
                    _infer_block(graph, node, inputs, diagnostics, memo)
                else:
                    assert kind is SkipNode
                    _infer_skip(graph, node, inputs, diagnostics)
                try:
                    _check_size(node, inputs)
                except ShapeError:  # no tensor has that type: its readers are left out, as an input's are
                    node.meta.pop("type", None)
                    raise
            # The meta's values are never modified after typing: nodes may share them. (A skip refused
            # with a diagnostic of its own has no projection: it is not kept, so an equal one says it too.)
            if key is not None and (kind is not SkipNode or "projection" in node.meta):
                fields, read = _KEPT_META[kind]
                memo[key] = (node.layer if kind is LayerNode else None, tuple(zip(fields, read(node.meta))), inputs)
        except (ShapeError, SizeOverflowError) as exc:
            problem = _located(graph, node, exc)
            group = _split_group(node)
            if group is not None:  # every piece of a chunk or split fails alike: say it once, of the layer
                said = (id(group), str(exc))
                if said in failed_splits:
                    continue
                failed_splits.add(said)
                problem = _split_located(graph, node, group, exc)
            diagnostics.append(problem)
    diagnostics += _inplace_hazards(graph)
    return diagnostics


def _split_group(node: Node) -> SplitBase | None:
    """The chunk or split a node is one piece of (`ops.tensor_ops.Piece`), else None."""
    group = getattr(node.layer, "group", None) if isinstance(node, LayerNode) else None
    return group if isinstance(group, SplitBase) else None


def _check_size(node: Node, inputs: Iterable[TensorType] = ()) -> None:
    """Refuse an output no tensor can have: more than MAX_RANK dims (64, the batch dim included), or
    a size, or a number of elements per sample, above MAX_DIM (2^62). torch counts sizes in 64 bits
    and refuses more dims in its reductions, so such a model would pass every check here and fail at
    its first forward; and the sizes solver, which works in int64, would overflow.

    Raises:
        ShapeError: which, with the shape (sizes too large to print are shown as `>2^62`).
    """
    kind = node.meta.get("type")
    if kind is None:  # (a skip refused with its own diagnostic, a block call whose values are typed apart)
        return
    for given in inputs:  # an input's type passed on (a norm's, an activation's, a residual sum's) was checked
        if given is kind:
            return
    if len(kind.shape) >= MAX_RANK:  # (with the batch dim, more than MAX_RANK)
        subject, fix = (("the shape", "declare fewer dims") if isinstance(node, InputNode)
                        else ("its output", "check the arguments that add dims (a reshape's or unsqueeze's)"))
        raise ShapeError(f"{subject} would have {len(kind.shape) + 1:,} dims with the batch dim; a torch tensor has "
                         f"at most {MAX_RANK} (its reductions and others refuse more); {fix}")
    elements = 1
    for d in kind.shape:  # (hint() inlined, a loop: every dim of every node)
        elements *= d.hint if type(d) is SymInt else d
    if elements <= MAX_DIM:  # (every size is at least 1, so no size is larger either)
        return
    sizes = [d.hint if type(d) is SymInt else d for d in kind.shape]
    shown = "(" + ", ".join(["N", *(str(s) if s <= MAX_DIM else ">2^62" for s in sizes)]) + ")"
    what = "a size above 2^62" if max(sizes) > MAX_DIM else "more than 2^62 elements per sample"
    subject, fix = (("the shape", "declare a smaller input") if isinstance(node, InputNode)
                    else ("its output", "check the arguments that grow it"))
    raise ShapeError(f"{subject} {shown} would have {what} ({MAX_DIM:,}), more than a tensor can hold (torch "
                     f"counts sizes in 64 bits); {fix}")


_UNIT = Fraction(1)  # an input's grid step (one object: a Fraction takes microseconds to make)


def declared_type(decl: InputDecl, map_read: bool = False, sequence_read: bool = False) -> TensorType:
    """An input's declared type: its layout by rank unless given; a channels-first map's grid at scale 1.

    `map_read`: its readers take it as a `(C, L)` map (1-d map ops), so a 2-dim input is one.
    `sequence_read`: its readers take it as `(..., seq, features)` (attention), so an input of any
    rank is features-last: a `(heads, L, head_dim)` query is not an image.

    >>> query = InputDecl(shape=[8, 16, 4])
    >>> declared_type(query).layout, declared_type(query, sequence_read=True).layout
    ('channels_first', 'features_last')
    """
    rank = len(decl.shape)
    layout = decl.layout or ("features_last" if sequence_read else "channels_first" if rank >= 3 or (
        map_read and rank == 2) else "features_last")
    scale = (_UNIT,) * (len(decl.shape) - 1) if layout == "channels_first" and len(decl.shape) >= 2 else None
    return TensorType(tuple(decl.shape), decl.dtype, layout, scale)


def _reads(graph: Graph, name: str, readers: dict[str, list[str]]) -> list[tuple[Any, str]]:
    """How input `name` is read: per reading layer (a block call's layers that read it included), its
    op (None where it cannot be told) and its role there (`_role`: a sequence, a mask, or neither).
    An input read only by 1-d map ops (Conv1d, BatchNorm1d, a 1-d pool...) is a `(C, L)` map whose
    length is free, not a sequence of fixed features; one read only as attention's q, k or v is a
    sequence whatever its rank (see `declared_type`); one read only as masks has positions alone."""
    reads: list[tuple[Any, str]] = []
    for reader in readers[name]:
        node = graph.nodes[reader]
        if isinstance(node, LayerNode):
            reads.append((node.layer.op, _role(node.layer.op, node.inputs, name, len(_masks(node.layer)))))
        elif isinstance(node, BlockNode) and node.recipe is not None:
            # the block's layers that read it say how (its first input, also the first layer with no `input:`)
            definition = node.recipe.definition
            if len(definition.inputs) != len(node.inputs):
                reads.append((None, ""))
                continue
            for inner, outer in zip(definition.inputs, node.inputs):
                if outer == name:
                    reads += _naming_reads(definition, inner, node.recipe.expander.blocks)
    return reads


def _masks(layer: Any) -> Any:
    """`getattr(layer, "masks", ())`: attention's mask inputs, an uncurated op's `masks` key, else none;
    read without the AttributeError pydantic raises inside getattr for an op with no such field (6 us)."""
    extra = layer.__pydantic_extra__
    return extra["masks"] if extra and "masks" in extra else layer.field_value("masks", ())


def _role(op: Any, inputs: list[str], name: str, masks: int) -> str:
    """How the op named `op`, reading `inputs`, reads `name`: "sequence" where only as attention's q, k
    or v (see `Layer.sequence_inputs`); "mask" where only as one of attention's masks, which follow
    them and whose every dim is a position (a float mask's last is the key positions, not features);
    else ""."""
    cls = OPS.get(op) if isinstance(op, str) else None
    if cls is None:
        return ""
    count = cls.sequence_inputs(len(inputs), masks)
    places = [index for index, read in enumerate(inputs) if read == name]
    if all(index < count for index in places):
        return "sequence"
    return "mask" if count and all(index >= count for index in places) else ""


def _naming_reads(definition: BlockDef, name: str, blocks: dict[str, Any], depth: int = 0) -> list[tuple[Any, str]]:
    """`_reads` of a block's input `name` from its layers' templates, through the blocks they call
    ((None, "") where it cannot be told before expansion: an op written as an expression). The
    first layer reads the block's first input when it names no input."""
    reads: list[tuple[Any, str]] = []
    for index, entry in enumerate(definition.layers):
        body = next(iter(entry.values()))
        read = body.get("input") if isinstance(body, dict) else None
        if read is None and index == 0:
            read = definition.inputs[0]
        names = read if isinstance(read, list) else [read]
        if name not in names:
            continue
        if not isinstance(body, dict):
            reads.append((None, ""))
            continue
        called = blocks.get(body["block"]) if isinstance(body.get("block"), str) else None
        op = body.get("op")
        if called is not None and depth < MAX_BLOCK_DEPTH and len(called.definition.inputs) == len(names):
            reads += _naming_reads(called.definition, called.definition.inputs[names.index(name)], blocks, depth + 1)
        elif isinstance(op, str) and "block" not in body:
            masks = body.get("masks")
            reads.append((op, _role(op, names, name, len(masks) if isinstance(masks, list) else 0)))
        else:
            reads.append((None, ""))
    return reads or [(None, "")]


def _reads_1d_map(op: Any) -> bool:
    """Whether the op named `op` reads a 2-dim input as a `(C, L)` map: a feature-map op of one spatial
    dim (Conv1d, BatchNorm1d, a 1-d pool...), as its class declares (`FeatureMapLayer.spatial_dims`), or
    a channels-first op of any number of spatial dims (`Upsample`: torch resizes the last dim of an
    `(N, C, L)` tensor)."""
    cls = OPS.get(op) if isinstance(op, str) else None
    if cls is None or cls.layout != "channels_first":
        return False
    return not issubclass(cls, FeatureMapLayer) or cls.spatial_dims == 1


_SPATIAL_NAMES = {1: ("L",), 2: ("H", "W"), 3: ("D", "H", "W")}


def free_dims(declared: TensorType, positions: bool = False) -> list[tuple[int, str]]:
    """(axis, name) of the per-sample dims a model may be called with at other sizes.

    A channels-first map's spatial dims (`H`, `W`; `L`; `D`, `H`, `W`) and a features-last
    tensor's leading (sequence) dims (`L`, or `L1`, `L2`...) are free; its channels or features are
    fixed by the layers' parameters. Every dim of an integer input (token ids), and of one read only
    as attention masks (`positions`: a float `(L, S)` mask's S is the key positions, not features; a
    `(heads, L, S)` one's first dim the heads, which only the mask's readers fix), is free; a
    channels-first mask keeps its dims' names (`C`, `H`, `W`: T5's `(1, 1, L)` mask has `mask.W`).
    """
    rank = declared.rank
    if declared.dtype not in FLOAT_DTYPES or (positions and declared.layout != "channels_first"):
        axes = list(range(rank))
    elif declared.layout == "channels_first":
        axes = list(range(0 if positions else 1, rank))
    else:
        axes = list(range(rank - 1))
    if not axes:
        return []
    if declared.layout == "channels_first" and len(axes) in _SPATIAL_NAMES and axes[0] == 1:
        names = _SPATIAL_NAMES[len(axes)]
    elif declared.layout == "channels_first" and positions and declared.dtype in FLOAT_DTYPES \
            and len(axes) - 1 in _SPATIAL_NAMES:
        names = ("C", *_SPATIAL_NAMES[len(axes) - 1])
    else:
        names = ("L",) if len(axes) == 1 else tuple(f"L{i + 1}" for i in range(len(axes)))
    return list(zip(axes, names))


def _to_hints(graph: Graph, sizes: dict[int, Any] | None = None,
              hinted: dict[int, tuple[TensorType, TensorType]] | None = None) -> dict[int, Any]:
    """Every node's type at the declared size, in block instances too; returns the distinct symbolic
    sizes the nodes had (by identity of their expressions)."""
    sizes = {} if sizes is None else sizes
    hinted = {} if hinted is None else hinted  # id(type) -> (type, kept alive; its hints), so shared stays shared
    # A type of plain ints is its own hint: it is kept (and stays shared, see _Memo), not copied.
    for node in graph.nodes.values():
        meta = node.meta
        kind = meta.get("type")  # (present, never None, on a graph typed without problems)
        if kind is not None:
            known = hinted.get(id(kind))  # (most nodes: copies and memoised layers share their types)
            meta["type"] = known[1] if known is not None else _hinted(kind, sizes, hinted)
        cls = type(node)
        if cls is LayerNode or cls is InputNode:  # (most nodes: none of the cases below)
            continue
        if "types" in meta and not _plain(meta["types"]):
            meta["types"] = [_hinted(t, sizes, hinted) for t in meta["types"]]
        if cls is SkipNode and "projection" in meta:
            plan = meta["projection"]
            output = _hinted(plan.output, sizes, hinted)
            if output is not plan.output:  # (a plain type is its own hint)
                meta["projection"] = plan.with_output(output)
        if cls is BlockNode:
            for instance in node.instances:
                _to_hints(instance, sizes, hinted)
    return sizes


def _hinted(kind: TensorType, sizes: dict[int, Any], hinted: dict[int, tuple[TensorType, TensorType]]) -> TensorType:
    """`kind.hints()`, once per type object (equal instances' copies and memoised layers share their
    types: most nodes cost one look-up), recording its symbolic sizes in `sizes`; a type of plain
    ints is itself."""
    key = id(kind)
    known = hinted.get(key)
    if known is None:
        plain = True
        for dim in kind.shape:
            if type(dim) is not int:
                plain = False
                if type(dim) is SymInt:
                    sizes.setdefault(id(dim.expr), dim.expr)
        known = hinted[key] = (kind, kind if plain else kind.hints())
    return known[1]


def _infer_block(graph: Graph, node: BlockNode, inputs: list[TensorType], diagnostics: list[Diagnostic],
                 memo: _Memo) -> None:
    """Make and chain the instances: each one's output type is the next one's input type.

    An instance is made (expanded and resolved) only once its input types are known, since its
    body may read them; a block node built by hand brings its instances instead.
    """
    current = inputs
    values: list[TensorType] = []  # each instance's output type (its last output's)
    counts: list[int | None] = []  # each instance's parameter count
    recipe = node.recipe
    count = recipe.count if recipe is not None else len(node.instances)
    for index in range(count):
        given = current  # (kept with the instance's memo entry: see `_type_key`)
        # (a call's own instances are the only ones with its key: a single one has no equal to copy)
        key = _instance_key(recipe, index, current) if recipe is not None and recipe.count > 1 else None
        if recipe is not None:
            qualname = _instance_qualname(graph, node, index)
            known = memo.get(key) if key is not None else None
            if known is not None and recipe.expander.reserve(recipe, index, known["size"]):
                node.instances.append(_copy_instance(known["graph"], qualname))
                counts.append(known["params"])
                current = known["outputs"]
                values.append(current[-1])
                continue
            expanded = recipe.expander.expanded
            problems: list[Diagnostic] = []
            try:
                scope = instantiate(recipe, index, current, qualname)
            except SpecError as exc:
                diagnostics.extend(exc.diagnostics)
                return
            instance = resolve(scope, qualname, problems)
            node.instances.append(instance)
        else:
            instance, problems = node.instances[index], []
        problems += _infer(instance, current, memo)
        typed = [instance.nodes[output].meta.get("type") for output in instance.outputs]
        if problems or not all(typed):
            # Said once: another call of the block may have reported its body's mistakes already, and an
            # instance may fail with nothing left to say (an inner call's problems were reported by another).
            diagnostics.extend(first_reports(recipe, problems, qualname) if recipe is not None else problems)
            return
        current = typed
        values.append(current[-1])
        counts.append(total_parameters(instance))
        if key is not None and recipe is not None:  # (the recipe is kept there, so its id stays its own)
            memo[key] = {"recipe": recipe, "graph": instance, "inputs": given, "outputs": current, "params": counts[-1],
                         "size": recipe.expander.expanded - expanded}
    # A call with several outputs has the types of its one instance's outputs; a collected repeat
    # one per instance. Its own type is its first output's, or the chain's (its last instance's).
    node.meta["types"] = current if not node.repeated else values
    node.meta["type"] = current[-1] if node.repeated else current[0]
    node.meta["storage"] = _block_storage(node.instances)
    node.meta["params"] = None if None in counts else sum(counts)


def _instance_key(recipe: BlockRecipe, index: int, inputs: list[TensorType]) -> tuple[Any, ...] | None:
    """A key equal for equal instances of a call (see `BlockRecipe.equal_instances_by`), or None.

    A symbolic size counts by the identity of its expression (comparing it with `==` would record a
    guard): `resgraph.symbolic` makes equal expressions one object while shapes are inferred, so
    the guards an equal instance would record are recorded already.
    """
    given = recipe.equal_instances_by(index)
    if given is None:
        return None
    try:
        return ("instance", id(recipe), freeze(given), *map(_type_key, inputs))
    except TypeError:  # a value that cannot be a key
        return None


def _type_key(kind: TensorType) -> tuple[Any, ...]:
    """A key equal for types that every typing treats alike (memo keys: see `_Memo`, `_instance_key`).

    A symbolic size counts by the identity of its expression (comparing it with `==` would record a
    guard; one expression object has one hint): `resgraph.symbolic` makes equal expressions one
    object while shapes are inferred, so the guards a node given the same expressions would record
    are recorded already, at the first one's site (where a guard decided twice is kept anyway). It
    holds `ids_below` and `ids_from` too, which type equality leaves out: an Embedding's check of its
    ids reads them. The grid scale counts by identity (hashing a Fraction takes microseconds, and a
    scale passes from layer to layer as one object), so an entry keeps the types its key was made
    of: the id stays that scale's.
    """
    bound = kind.ids_below
    return (kind.dtype, kind.layout, id(kind.scale),
            tuple([size.expr if type(size) is SymInt else size for size in kind.shape]),
            bound.expr if type(bound) is SymInt else bound, kind.ids_from)


def _copy_instance(template: Graph, qualname: str) -> Graph:
    """A block instance equal to `template` (made from the same call, with the same input types:
    see `_instance_key` and `BlockRecipe.equal_instances_by`), named `qualname`, without expanding,
    resolving and typing it again. Its nodes and every `meta` dict are its own (later stages write
    per instance: weights, sizes, messages naming `layer1.3.conv1`); the values in them are shared,
    as `_Memo`'s are, and never modified. The instances inside it are copied too, under the new name.

    Equal instances share one `meta["shared"]` dict, where results that follow from the structure
    alone may be kept (codegen keeps the forward's source there).
    """
    nodes: dict[str, Node] = {}
    for name, node in template.nodes.items():
        copied = node.shallow_copy()
        if isinstance(copied, BlockNode):
            copied.values = list(copied.values)
            copied.instances = [_copy_instance(instance, qualname + instance.qualname[len(template.qualname):])
                                for instance in copied.instances]
        nodes[name] = copied
    template.meta.setdefault("shared", {})
    return Graph(template.name, nodes, list(template.inputs), list(template.outputs), template.origin, qualname,
                 template.block, dict(template.params), dict(template.meta))


def _infer_block_output(graph: Graph, node: LayerNode) -> None:
    """One value of a block call with several: its type is the call's type of that value.

    A value the instance passes through from its input (the input itself, a chunk of it) is that
    input's memory: `meta["alias_of"]` names the caller's node it shares, for the in-place check.
    Values made inside that are one memory (`[box, idn]` with idn an Identity of box, or a chunk
    piece of it) name each other in `meta["shares_with"]`: writing one in place writes the others.
    """
    assert isinstance(node.layer, BlockOutput)
    call = graph.nodes[node.inputs[0]]
    assert isinstance(call, BlockNode)
    index = node.layer.index
    node.meta.update(type=call.meta["types"][index], args={}, params=0)
    instance = call.instances[index if call.repeated else 0]
    path = _alias_path(instance, instance.outputs[-1 if call.repeated else index])
    node.meta["storage"] = _returned_storage(instance, path)
    if path[0] not in instance.inputs:
        if not call.repeated:  # (a collected repeat's values are made by instances of their own)
            shares = tuple(value for other, value in enumerate(call.values)
                           if other != index and _alias_path(instance, instance.outputs[other])[0] == path[0])
            if shares:
                node.meta["shares_with"] = shares
    else:
        given = instance.inputs.index(path[0])
        if not call.repeated or index == 0:
            node.meta["alias_of"] = call.inputs[given]
        elif given == 0:  # a later instance of a collected repeat is given the one before's output
            node.meta["alias_of"] = call.values[index - 1]


def _instance_qualname(graph: Graph, node: BlockNode, index: int) -> str:
    """`layer1.0.` for an instance of a repeated call, `stem.` for a single one."""
    return f"{graph.qualname}{node.name}." + (f"{index}." if node.repeated else "")


def _check_blind(graph: Graph, node: BlockNode) -> list[Diagnostic]:
    """The mistakes of a block call's body that do not depend on its input, whose shape is unknown
    after an error elsewhere: its first instance is made and resolved without input types (what
    reads them is left out quietly), and so are the blocks it calls."""
    if node.recipe is None:
        return []
    qualname = _instance_qualname(graph, node, 0)
    try:
        scope = instantiate(node.recipe, 0, None, qualname)
    except SpecError as exc:
        return exc.diagnostics
    problems: list[Diagnostic] = []
    instance = resolve(scope, qualname, problems)
    for inner in instance.nodes.values():
        if isinstance(inner, BlockNode):
            problems += _check_blind(instance, inner)
    return first_reports(node.recipe, problems, qualname)


def check_uncalled_blocks(spec: Spec, source: SourceMap, blocks: Iterable[str], reached: Iterable[str],
                          read: Reader) -> list[Diagnostic]:
    """The mistakes of the spec's `blocks` that no call made an instance of (every call failed, or
    none is written), for a run that failed: each is made with nothing known of a call and resolved
    (what reads its parameters or input shape is left out quietly), and so are the blocks it calls.
    `reached` are the blocks an instance was made of (a cycle through them is reported already).
    Without it, a `repeat: 0` hid every unknown name inside the block it repeats."""
    scopes, problems = blind_scopes(spec, source, blocks, reached, read)
    for block, scope in scopes:
        instance = resolve(scope, f"{block}.", problems)
        for inner in instance.nodes.values():
            if isinstance(inner, BlockNode):
                problems += _check_blind(instance, inner)
    return problems


def _plain(types: list[TensorType]) -> bool:
    """True when every size is a plain int (no symbolic size: typing records nothing)."""
    for t in types:  # (loops, not all() over a generator: typing a layer asks this twice)
        for size in t.shape:
            if type(size) is not int:
                return False
    return True


def _memo_key(node: LayerNode | SkipNode, inputs: list[TensorType]) -> tuple[Any, ...] | None:
    """The key of a layer's or skip's typing in `_Memo`, or None where it is not memoised (a call's
    value; a block call has none). A layer counts by identity: its entry keeps the layer, so its id
    stays its own, and a hit checks it is the same layer."""
    if type(node) is LayerNode:
        layer = node.layer
        return None if isinstance(layer, BlockOutput) else ("layer", id(layer), *map(_type_key, inputs))
    assert type(node) is SkipNode
    skip = node.skip
    return ("skip", node.policy, skip.merge, skip.dim, *map(_type_key, inputs))


def _infer_layer(graph: Graph, node: LayerNode, inputs: list[TensorType]) -> None:
    layer = node.layer
    try:
        layer.check_dtypes(inputs)
    except DtypeError as exc:  # name where the value comes from: its dtype was decided there
        source = graph.nodes[node.inputs[exc.index]]
        exc.args = (f"{exc}: {source.var!r} is {exc.dtype}{_dtype_origin(graph, source)}",)
        raise
    try:
        out = layer.output_type(inputs)
    except LayoutError as exc:  # name the operands: a stored tensor among them may declare its layout
        names = node.inputs
        exc.hint = stored_layout_hint(graph, (names[exc.gate], inputs[exc.gate]),
                                      (names[exc.target], inputs[exc.target]))
        raise
    if layer.export_static:
        static = _EXPORT_STATIC.get()
        if static is not None:
            static += [size for size in layer.export_static_sizes(inputs) if type(size) is SymInt]
    if out.ids_from is not None and layer.op not in RETURNS_INPUT and any(out is t for t in inputs):
        # An op returning its input's type may still map its values (neg, ReLU): the least id is unknown then
        out = TensorType(out.shape, out.dtype, out.layout, out.scale, ids_below=out.ids_below)
    node.meta["type"] = out
    node.meta["storage"] = layer.storage(inputs)
    # A module's arguments are fixed numbers: a size that reaches one is specialised (recorded).
    node.meta["args"] = _specialized(layer.module_args(inputs))
    count = layer.parameter_count(node.meta["args"])
    node.meta["params"] = None if count is None else specialize(count)


def _specialized(value: Any) -> Any:
    if type(value) in _ATOMS:  # (most arguments: one test, not four)
        return value
    if isinstance(value, SymInt):
        return specialize(value)
    if isinstance(value, dict):  # (a layer's arguments: their plain values are not passed down one by one)
        return {k: v if type(v) in _ATOMS else _specialized(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_specialized(v) for v in value)
    return value


_ATOMS = frozenset({int, float, bool, str, type(None)})


def total_parameters(graph: Graph) -> int | None:
    """The graph's parameter count from the per-node counts, or None if any node cannot tell."""
    counts = [node.meta.get("params", 0) for node in graph.nodes.values()]
    return None if None in counts else sum(counts)


def _infer_skip(graph: Graph, node: SkipNode, inputs: list[TensorType], diagnostics: list[Diagnostic]) -> None:
    skip = node.skip
    target, source = inputs
    decided = recorded_count()  # the decisions before this skip: sizes that fit it must keep them
    dim = node.meta["concat_dim"] = skip.concat_dim(target.layout)  # (codegen reads it: decided here, once)
    try:
        plan = plan_projection(node.policy, skip.merge, source, target, dim)
    except ProjectionError as exc:
        diagnostics.append(_skip_error(graph, node, target, source, exc, recorded()[:decided]))
        if skip.merge.value == "add":
            node.meta["type"] = target  # the merge's type is known: later layers can still be checked
        return
    accepted = projection_dtypes(plan)
    if accepted is not None and source.dtype not in accepted:  # torch: "expected scalar type Float"
        origin = _dtype_origin(graph, graph.nodes[node.inputs[1]])
        integers = source.dtype not in FLOAT_DTYPES
        weights = "floating-point weights" if integers else "float32 weights, and torch needs the input's dtype " \
            "to match" if accepted == WEIGHTED_DTYPES else "float32 state, which torch has no float64 kernel for"
        diagnostics.append(Diagnostic(graph.where(node, "from"), (
            f"{graph.label(node)}: {skip.source!r} is {source.dtype}{origin}, but its projection "
            f"({describe_steps(plan.module_steps)}) computes with {weights}"), dtype_hint(source.dtype, accepted)))
        return
    node.meta["projection"] = plan
    node.meta["params"] = projection_parameters(plan)
    node.meta["type"] = merge_type(skip.merge, [target, plan.output], dim)


def _skip_error(graph: Graph, node: SkipNode, target: TensorType, source: TensorType, exc: ProjectionError,
                decided: list[Guard]) -> Diagnostic:
    skip = node.skip
    conditions = [*decided, *exc.required]
    if exc.required:
        refused(conditions)  # (a check of the spec at other sizes tries sizes that meet these next)
    hint = None if trying() else skip_hint(graph, node, exc, conditions, _SYMBOLS.get() or {})
    message = (f"{graph.label(node)}: cannot {skip.merge.value} {skip.source!r} {source} "
               f"{'into' if skip.merge.value != 'add' else 'to'} {skip.to!r} {target}: {exc}")
    return Diagnostic(graph.where(node), message, hint)


def _located(graph: Graph, node: Node, exc: ShapeError | SizeOverflowError) -> Diagnostic:
    """A shape error at its layer, or at the key it names (an uncurated op's argument, a curated op's
    argument that torch would refuse at the first forward), with its hint if it has one."""
    key = getattr(exc, "field", None)
    return Diagnostic(graph.where(node, key), f"{graph.label(node)}: {exc}", getattr(exc, "hint", None))


def _split_located(graph: Graph, node: LayerNode, group: SplitBase, exc: ShapeError | SizeOverflowError) -> Diagnostic:
    """A chunk's or split's shape error, said of the layer the spec wrote (`parts`), not of the piece
    (`value`) that found it: a piece's origin is `<the layer's>.outputs.<i>` (see `expand.with_pieces`)."""
    layer = Origin(node.origin.source, node.origin.path[:-2])
    key = getattr(exc, "field", None)
    where = (layer.child(key) if key is not None else layer).locate(key=True)
    return Diagnostic(where, f"layer {graph.qualname + node.layer.split!r} ({group.op}): {exc}",
                      getattr(exc, "hint", None))


def _dtype_origin(graph: Graph, node: Node) -> str:
    """Where a value's dtype comes from, for messages: a declared input, or the op that made it."""
    if isinstance(node, InputNode):
        return " (its declared dtype)" if graph.qualname == "" else " (the block's input)"
    return f" (the output of {node.layer.op})" if isinstance(node, LayerNode) else ""


def _storage(node: Node) -> Storage:
    """How a node's value shares memory (see `Storage`): inputs are the caller's memory, a skip's
    merge makes a new tensor, a layer's or block's was found when it was typed."""
    return node.meta.get("storage", FRESH) if isinstance(node, (LayerNode, BlockNode)) else FRESH


def _alias_path(graph: Graph, name: str) -> list[str]:
    """The nodes whose values are one memory with `name`'s, from the one that made it to `name`
    (`['fc', 'flat']` for a reshape of fc)."""
    path = [name]
    while True:
        node = graph.nodes[path[-1]]
        index = _storage(node).aliases
        shared = node.meta.get("alias_of") if index is None else node.inputs[index]
        if shared is None:
            return path[::-1]
        path.append(shared)


def _block_storage(instances: list[Graph]) -> Storage:
    """A block call's output shares an input's memory when every instance passes it through (an
    Identity, a reshape): the first instance any of its inputs, the later ones (chained by `repeat`)
    the one they are given. Autograd keeps it when a node on the way does. It may never be
    overwritten when the last instance returns a stored tensor (or a view of one)."""
    aliases: int | None = None
    saves = False
    fixed = None
    for position, instance in enumerate(instances):
        path = _alias_path(instance, instance.outputs[0])
        kept = any(_storage(instance.nodes[n]).saves_output for n in path)
        index = instance.inputs.index(path[0]) if path[0] in instance.inputs else None
        if index is None or (position > 0 and index != 0):  # a value of its own
            aliases, saves, fixed = None, kept, _returned_storage(instance, path).fixed
        else:  # passed through: one memory with what this instance was given
            aliases = index if position == 0 else aliases
            saves = saves or kept
    return Storage(aliases, None, saves, fixed)


def _returned_storage(instance: Graph, path: list[str]) -> Storage:
    """What a value an instance returns along `path` (see `_alias_path`) forbids its caller: to be
    overwritten when autograd keeps it (`saves_output`), or ever, when it is (a view of) a stored
    tensor (`fixed`: `expand` makes one element every sample's; overwriting it would write the
    parameter itself). Its aliasing of the caller's memory is told by `meta["alias_of"]`."""
    saves = any(_storage(instance.nodes[n]).saves_output for n in path)
    fixed = None if path[0] in instance.inputs else _storage(instance.nodes[path[0]]).fixed
    return Storage(None, None, saves, fixed)


def _inplace_hazards(graph: Graph) -> list[Diagnostic]:
    """An in-place op must not overwrite memory that something else still reads, that is an input or
    output of the model, that a stored tensor broadcasts, or whose values autograd keeps.

    Memory is followed through aliases (`Storage.aliases`): views (reshape, transpose, a chunk piece),
    ops that return their input (Identity, a dropout in eval mode) and earlier in-place ops all share
    their input's memory, so the op overwrites every value on that chain, and every reader of one of
    them (other than the next on the chain) reads what it wrote. A reader that runs before it is
    refused too: most ops keep their input for the backward pass, where it would be wrong.
    """
    # Most graphs write nothing in place: who reads what is built only for those that do.
    writers = [node for node in graph.nodes.values()
               if isinstance(node, LayerNode) and node.meta.get("storage", FRESH).writes is not None]
    if not writers:
        return []
    readers = graph.consumers()
    diagnostics = []
    for node in writers:
        source = node.inputs[node.meta["storage"].writes]
        path = _alias_path(graph, source)
        others: list[str] = []
        outputs = [p for p in path if p in graph.outputs]
        for index, value in enumerate(path):
            following = path[index + 1] if index + 1 < len(path) else node.name
            for reader in readers[value]:
                if reader != following:
                    _effective_readers(graph, readers, reader, value, others, outputs)
            for sibling in graph.nodes[value].meta.get("shares_with", ()):  # one memory, made inside a call
                if sibling in graph.outputs and sibling not in outputs:
                    outputs.append(sibling)
                for reader in readers[sibling]:
                    _effective_readers(graph, readers, reader, sibling, others, outputs)
        root = graph.nodes[path[0]]
        # (a value of a call with several is named as the spec reads it, `head.box`, not by its variable)
        shown = root.name if is_block_value(root) else root.var
        kept = next((p for p in path if _storage(graph.nodes[p]).saves_output), None)
        if others:
            why = f"{', '.join(repr(o) for o in others)} also read{'s' if len(others) == 1 else ''} it"
        elif outputs or isinstance(root, InputNode):
            # (a block instance's inputs and outputs are its caller's values, read there too)
            why = f"it is an input or output of {'block ' + repr(graph.block) if graph.block else 'the model'}"
        elif _storage(root).fixed:
            returned = isinstance(root, BlockNode) or is_block_value(root)
            why = f"{shown!r} is a stored tensor{' the block returns' if returned else ''} and {_storage(root).fixed}"
        elif kept is not None:
            holder = graph.nodes[kept]
            # (one value of a call with several, `b.a`, is made by a layer inside the call)
            inside = is_block_value(holder)
            why = ((f"the layer in block call {holder.name.split('.')[0]!r} that makes {holder.name!r} keeps it"
                    if inside else f"{graph.label(holder)} keeps its output")
                   + " for the backward pass, which would then fail (autograd: modified by an inplace operation)")
        else:
            continue
        target = repr(shown) if len(path) == 1 else (
            f"{shown!r} (through {graph.nodes[source].var!r}, which shares its memory)")
        keyed = "inplace" in node.layer.args()
        what = "inplace: true would overwrite" if keyed else "would overwrite its input"
        diagnostics.append(Diagnostic(graph.where(node, "inplace" if keyed else None),
                                      f"{graph.label(node)}: {what} {target}, but {why}",
                                      "remove `inplace: true`" if keyed else None))
    return diagnostics


def _effective_readers(graph: Graph, readers: dict[str, list[str]], reader: str, value: str, found: list[str],
                       outputs: list[str]) -> None:
    """Add to `found` who really reads `value` through `reader`: a view of it is no read by itself, so
    its readers are named instead (and it counts in `outputs` if the model returns it)."""
    storage = _storage(graph.nodes[reader])
    node = graph.nodes[reader]
    is_view = storage.aliases is not None and storage.writes is None and node.inputs[storage.aliases] == value
    is_view = is_view and not (isinstance(node, BlockNode) and node.values)  # a call with several values reads it
    if not is_view:
        if reader not in found:
            found.append(reader)
        return
    if reader in graph.outputs and reader not in outputs:
        outputs.append(reader)
    for further in readers[reader]:
        _effective_readers(graph, readers, further, reader, found, outputs)
