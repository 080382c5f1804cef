"""Rendering: a typed graph -> a `graphviz.Digraph` (pure), and writing it to a file.

What a tracer cannot show, the spec can: skip edges are dashed and coloured, labelled with
their name and merge; each skip meets its target in a small merge node (`+`, `×`, `cat`), so
it is visible that later layers read the merged value; an inserted projection is a node of its
own on the skip edge, with its policy, reason and parameter count. Block instances are
clusters. Node ids are qualified names and nodes are emitted in graph order, so the same spec
always gives byte-identical DOT.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .errors import ResgraphError, UsageError
from .files import atomic_write
from .graph import BlockNode, Graph, LayerNode, Node, SkipNode
from .ownership import graph_parameters, owned_parameters
from .projections import ProjectionPlan, describe_steps
from .summarize import instance_title, short_value

__all__ = ["RenderOptions", "render_graph", "write_diagram"]

SKIP_COLOR = "#d1495b"
MERGE_SYMBOL = {"add": "+", "mul": "×", "concat": "cat"}
KEY_ARGS = {"kernel_size": "k", "stride": "s", "padding": "p", "dilation": "d", "groups": "g"}


@dataclass(frozen=True)
class RenderOptions:
    """What a diagram shows."""

    shapes: bool = True  # each node's output shape
    param_counts: bool = True  # each node's parameter count
    args: bool = True  # an op's key arguments (kernel, stride, ...)
    depth: int | None = None  # module levels shown (1: top level only); deeper blocks are one node
    fold_repeats: bool = False  # draw a repeated block once, labelled xN
    rankdir: str = "TB"


def render_graph(graph: Graph, module: Any, options: RenderOptions = RenderOptions()) -> Any:
    """The diagram of a typed graph. `module` supplies parameter counts (it may live on `meta`)."""
    import graphviz

    if options.rankdir not in ("TB", "LR", "BT", "RL"):
        raise UsageError(f"rankdir must be TB, LR, BT or RL, not {options.rankdir!r}")
    dot = graphviz.Digraph(name=graph.name, graph_attr={
        "rankdir": options.rankdir, "fontname": "Helvetica", "fontsize": "12", "labelloc": "t",
        "label": graph.name, "nodesep": "0.25", "ranksep": "0.3"},
        node_attr={"shape": "box", "style": "rounded,filled", "fillcolor": "#f4f4f4", "color": "#555555",
                   "fontname": "Helvetica", "fontsize": "10", "margin": "0.1,0.04", "height": "0.3"},
        edge_attr={"color": "#555555", "arrowsize": "0.6", "fontname": "Helvetica", "fontsize": "9"})
    renderer = _Renderer(module, options)
    renderer.graph(dot, graph, "", [], 1)
    # Edges go to the root graph: an edge written inside a cluster would pull both ends into it.
    for tail, head, attrs in renderer.edges:
        dot.edge(tail, head, **attrs)
    return dot


class _Renderer:
    def __init__(self, module: Any, options: RenderOptions) -> None:
        self.module = module
        self.options = options
        self.edges: list[tuple[str, str, dict[str, str]]] = []

    def edge(self, tail: str, head: str, **attrs: str) -> None:
        self.edges.append((tail, head, attrs))

    def label(self, *lines: str | None) -> str:
        return "\n".join(line for line in lines if line)

    def shape(self, node: Node) -> str | None:
        if not self.options.shapes:
            return None
        return "(" + ", ".join(map(str, node.meta["type"].shape)) + ")"

    def count(self, node: Node | Graph, prefix: str = "") -> str | None:
        """'1,792 params' for what a node owns (or a whole block instance); None when nothing."""
        if not self.options.param_counts:
            return None
        if isinstance(node, Graph):
            n = graph_parameters(self.module, node)
        else:
            n = owned_parameters(self.module, node, prefix)
        return f"{n:,} params" if n else None

    def graph(self, dot: Any, graph: Graph, prefix: str, inputs: list[str], level: int) -> list[str]:
        """Emit `graph`'s nodes into `dot`; return the ids producing its outputs."""
        producer: dict[str, str] = {}
        top = not prefix
        for index, name in enumerate(graph.inputs):
            if top:
                node = graph.nodes[name]
                dot.node(name, self.label(name, "input", self.shape(node)), shape="invhouse",
                         fillcolor="#dbe9f6", style="filled")
                producer[name] = name
            else:
                producer[name] = inputs[index]
        for node in graph.nodes.values():
            sources = [producer[name] for name in node.inputs]
            if isinstance(node, LayerNode):
                producer[node.name] = self.layer(dot, node, prefix, sources)
            elif isinstance(node, BlockNode):
                producer[node.name] = self.block(dot, node, prefix, sources, level)
            elif isinstance(node, SkipNode):
                producer[node.name] = self.skip(dot, node, prefix, sources)
        outputs = [producer[name] for name in graph.outputs]
        if top:
            for name, source in zip(graph.outputs, outputs):
                out_id = f"output/{graph.nodes[name].var}"
                dot.node(out_id, self.label(graph.nodes[name].var, "output"), shape="house", fillcolor="#e3f1df",
                         style="filled")
                self.edge(source, out_id)
        return outputs

    def layer(self, dot: Any, node: LayerNode, prefix: str, sources: list[str]) -> str:
        layer = node.layer
        node_id = prefix + node.name
        if layer.code_only and layer.op in MERGE_SYMBOL:
            dot.node(node_id, self.label(node.name, layer.op, self.shape(node)), fillcolor="#fff7e0")
        else:
            dot.node(node_id, self.label(node.name, self.op_text(node), self.shape(node), self.count(node, prefix)))
        for source in sources:
            self.edge(source, node_id)
        return node_id

    def op_text(self, node: LayerNode) -> str:
        layer = node.layer
        if not self.options.args:
            return layer.op
        args = layer.args()
        key = [f"{KEY_ARGS[k]}={short_value(v)}" for k, v in args.items() if k in KEY_ARGS and not
               (k in ("stride", "dilation", "groups") and short_value(v) == "1")]
        return f"{layer.op} {' '.join(key)}".strip()

    def skip(self, dot: Any, node: SkipNode, prefix: str, sources: list[str]) -> str:
        skip = node.skip
        target, source = sources
        node_id = prefix + node.name
        dot.node(node_id, MERGE_SYMBOL[skip.merge.value], shape="circle", width="0.3", height="0.3",
                 fixedsize="true", fillcolor="#ffffff", color=SKIP_COLOR, fontcolor=SKIP_COLOR)
        self.edge(target, node_id)
        plan: ProjectionPlan = node.meta["projection"]
        style = {"style": "dashed", "color": SKIP_COLOR, "fontcolor": SKIP_COLOR}
        edge_label = f"{node.name} ({skip.merge.value})"
        if plan.is_identity:
            self.edge(source, node_id, label=edge_label, **style)
        else:
            projection_id = f"{node_id}/projection"
            dot.node(projection_id, self.label(f"{node.name}: {plan.policy.value} projection",
                                               describe_steps(plan.steps), plan.reason, self.count(node, prefix)),
                     style="rounded,dashed,filled", fillcolor="#fde8ea", color=SKIP_COLOR)
            self.edge(source, projection_id, label=edge_label, **style)
            self.edge(projection_id, node_id, **style)
        return node_id

    def collapsed(self, dot: Any, node_id: str, name: str, what: str, node: Node, sources: list[str],
                  repeated: bool, count: str | None) -> str:
        dot.node(node_id, self.label(name, what, self.shape(node), count), fillcolor="#e8e4f3",
                 peripheries="2" if repeated else "1")
        for source in sources:
            self.edge(source, node_id)
        return node_id

    def block(self, dot: Any, node: BlockNode, prefix: str, sources: list[str], level: int) -> str:
        """A block call at module level `level` (top = 1): one node, instance nodes, or clusters."""
        call = node.call
        instances = node.instances
        node_id = prefix + node.name
        repeated = node.repeated
        times = f" ×{len(instances)}" if repeated else ""
        depth = self.options.depth
        if depth is not None and depth <= level:
            return self.collapsed(dot, node_id, node.name, f"{call.block}{times}", node, sources, repeated,
                                  self.count(node, prefix))
        shown = instances[:1] if self.options.fold_repeats and repeated else instances
        folded = " (first shown)" if len(shown) < len(instances) else ""
        current = sources
        with dot.subgraph(name=f"cluster_{node_id}") as stage:
            stage.attr(label=f"{node_id}: {call.block}{times}{folded}", style="rounded", color="#8a7fb5",
                       fontname="Helvetica", fontsize="11")
            if not repeated:
                return self.graph(stage, instances[0], instances[0].qualname, current, level + 1)[0]
            for instance in shown:
                inner, title = instance.qualname.rstrip("."), instance_title(instance)
                if depth is not None and depth <= level + 1:
                    out = instance.nodes[instance.outputs[0]]
                    short = inner[len(prefix):]  # `layer1.0` within its parent
                    current = [self.collapsed(stage, inner, short, title, out, current, False, self.count(instance))]
                    continue
                with stage.subgraph(name=f"cluster_{inner}") as box:
                    box.attr(label=f"{inner}: {title}", style="rounded,dashed", color="#b3acd1", fontsize="10")
                    current = self.graph(box, instance, instance.qualname, current, level + 2)
        return current[0]


def write_diagram(dot: Any, path: str) -> str | None:
    """Write `dot` to `path` in the format its extension names (see `formats`), atomically.

    Returns:
        None on success; when Graphviz's `dot` program is missing and the format needs it, the
        path of the .dot file written instead (and the caller should exit non-zero).
    Raises:
        ResgraphError: Graphviz failed.
        OSError: the path cannot be written.
    """
    import graphviz

    fmt = os.path.splitext(path)[1].lower().lstrip(".")
    if fmt == "dot":
        atomic_write(path, lambda tmp: _write_text(tmp, dot.source))
        return None
    try:
        data = dot.pipe(format=fmt)
    except graphviz.ExecutableNotFound:
        fallback = os.path.splitext(path)[0] + ".dot"
        atomic_write(fallback, lambda tmp: _write_text(tmp, dot.source))
        return fallback
    except graphviz.CalledProcessError as exc:
        detail = exc.stderr.decode(errors="replace").strip() if exc.stderr else str(exc)
        raise ResgraphError(f"Graphviz failed to draw {path}: {detail}") from None
    atomic_write(path, lambda tmp: _write_bytes(tmp, data))
    return None


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def _write_bytes(path: str, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
