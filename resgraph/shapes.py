"""Stage 5, infer shapes: type every node statically and plan every skip's projection.

Runs before any weight exists (curated ops use pure shape functions; uncurated torch.nn classes
run on the meta device). Results go to `node.meta`: `type` (TensorType), `args` (the full
constructor arguments, inferred sizes included), `params` (parameter count, None where only
building can tell) and, for skips, `projection` (ProjectionPlan).
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

from .errors import Diagnostic, SpecError
from .graph import BlockNode, Graph, InputNode, LayerNode, Node, SkipNode
from .ops import GenericLayer, GenericOpError, ShapeError, TensorType, merge_type
from .projections import ProjectionError, plan_projection, projection_parameters

__all__ = ["infer_shapes", "total_parameters"]


def infer_shapes(graph: Graph, input_types: list[TensorType] | None = None) -> Graph:
    """Annotate every node (and every block instance's nodes) with its type; return the graph.

    Args:
        input_types: the types of a block instance's inputs, which its caller determines.
    Raises:
        SpecError: every shape the spec gets wrong, each at its layer or skip.
    """
    diagnostics: list[Diagnostic] = []
    given = iter(input_types or [])
    for node in graph.nodes.values():
        if isinstance(node, InputNode):
            node.meta["type"] = _input_type(node) if node.decl is not None else next(given)
            continue
        inputs = [graph.nodes[name].meta.get("type") for name in node.inputs]
        if any(t is None for t in inputs):
            continue
        try:
            if isinstance(node, LayerNode):
                _infer_layer(node, inputs)
            elif isinstance(node, BlockNode):
                _infer_block(node, inputs, diagnostics)
            else:
                assert isinstance(node, SkipNode)
                _infer_skip(graph, node, inputs, diagnostics)
        except ShapeError as exc:
            diagnostics.append(_located(graph, node, exc))
    diagnostics += _inplace_hazards(graph)
    if diagnostics:
        raise SpecError(diagnostics)
    return graph


def _input_type(node: InputNode) -> TensorType:
    decl = node.decl
    assert decl is not None
    layout = decl.layout or ("channels_first" if len(decl.shape) >= 3 else "features_last")
    return TensorType(tuple(decl.shape), decl.dtype, layout)


def _infer_block(node: BlockNode, inputs: list[TensorType], diagnostics: list[Diagnostic]) -> None:
    """Chain the instances: each one's output type is the next one's input type."""
    current = inputs
    for instance in node.instances:
        try:
            infer_shapes(instance, current)
        except SpecError as exc:
            diagnostics.extend(exc.diagnostics)
            return
        current = [instance.nodes[instance.outputs[0]].meta["type"]]
    node.meta["type"] = current[0]
    counts = [total_parameters(instance) for instance in node.instances]
    node.meta["params"] = None if None in counts else sum(counts)


def _infer_layer(node: LayerNode, inputs: list[TensorType]) -> None:
    layer = node.layer
    node.meta["type"] = layer.output_type(inputs)
    node.meta["args"] = layer.module_args(inputs)
    node.meta["params"] = layer.parameter_count(node.meta["args"])


def total_parameters(graph: Graph) -> int | None:
    """The graph's parameter count from the per-node counts, or None if any node cannot tell."""
    counts = [node.meta.get("params", 0) for node in graph.nodes.values()]
    return None if None in counts else sum(counts)


def _infer_skip(graph: Graph, node: SkipNode, inputs: list[TensorType], diagnostics: list[Diagnostic]) -> None:
    skip = node.skip
    target, source = inputs
    try:
        plan = plan_projection(node.policy, skip.merge, source, target, skip.concat_dim)
    except ProjectionError as exc:
        diagnostics.append(_skip_error(graph, node, target, source, exc))
        if skip.merge.value == "add":
            node.meta["type"] = target  # the merge's type is known: later layers can still be checked
        return
    node.meta["projection"] = plan
    node.meta["params"] = projection_parameters(plan)
    node.meta["type"] = merge_type(skip.merge, [target, plan.output], skip.concat_dim)


def _skip_error(graph: Graph, node: SkipNode, target: TensorType, source: TensorType,
                exc: ProjectionError) -> Diagnostic:
    skip = node.skip
    hint = exc.hint
    if exc.non_integer:
        shrinking = _shrinking_layers(graph, skip.source, skip.to)
        where = f" (shrunk by {', '.join(shrinking)})" if shrinking else ""
        hint = (f"keep the spatial size with `padding: 1` on 3x3 convs (or `padding: same`) between "
                f"{skip.source!r} and {skip.to!r}{where}, or set `projection: crop` on this skip")
    message = (f"{graph.label(node)}: cannot {skip.merge.value} {skip.source!r} {source} "
               f"{'into' if skip.merge.value != 'add' else 'to'} {skip.to!r} {target}: {exc}")
    return Diagnostic(graph.where(node), message, hint)


def _shrinking_layers(graph: Graph, source: str, target: str) -> list[str]:
    """Layers from `source` up to `target` whose output is spatially smaller than their input."""
    names = list(graph.nodes)
    start, stop = names.index(source), names.index(target)
    found = []
    for name in names[start + 1:stop + 1]:
        node = graph.nodes[name]
        out = node.meta.get("type")
        if not isinstance(node, LayerNode) or out is None or not node.inputs:
            continue
        before = graph.nodes[node.inputs[0]].meta.get("type")
        if before and before.rank == out.rank >= 2 and out.shape[1:] < before.shape[1:]:
            found.append(f"{name}: {'x'.join(map(str, before.shape[1:]))}->{'x'.join(map(str, out.shape[1:]))}")
    return found


def _located(graph: Graph, node: Node, exc: ShapeError) -> Diagnostic:
    """A shape error at its layer; an uncurated op's name or argument error at that key."""
    key = exc.field if isinstance(exc, GenericOpError) else None
    return Diagnostic(graph.where(node, key), f"{graph.label(node)}: {exc}")


def _inplace_hazards(graph: Graph) -> list[Diagnostic]:
    """An in-place op must not overwrite a value that something else still reads."""
    readers = graph.consumers()
    diagnostics = []
    for node in graph.nodes.values():
        if (not isinstance(node, LayerNode) or not node.layer.args().get("inplace")
                or isinstance(node.layer, GenericLayer)):
            continue
        (source,) = node.inputs
        others = [r for r in readers[source] if r != node.name]
        if others or source in graph.outputs or isinstance(graph.nodes[source], InputNode):
            why = (f"{', '.join(repr(o) for o in others)} also read{'s' if len(others) == 1 else ''} it" if others
                   else "it is an input or output of the model")
            diagnostics.append(Diagnostic(graph.where(node, "inplace"),
                                          f"{graph.label(node)}: inplace: true would overwrite "
                                          f"{graph.nodes[source].var!r}, but {why}",
                                          "remove `inplace: true`"))
    return diagnostics
