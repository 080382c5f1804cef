"""Summaries of a compiled module: one row per node, projections marked, totals; table or JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .errors import printable
from .graph import BlockNode, Graph, InputNode, LayerNode, SkipNode
from .ownership import graph_parameters, owned_parameters
from .projections import ProjectionPlan, describe_steps

__all__ = ["ProjectionRow", "Row", "Summary", "format_summary", "instance_title", "short_value", "summarize"]


@dataclass(frozen=True)
class ProjectionRow:
    policy: str
    reason: str
    steps: str
    params: int


@dataclass(frozen=True)
class Row:
    name: str  # dotted: `layer1.0.conv1` inside block instances
    kind: str  # input | layer | block | instance | skip
    op: str
    shape: list[int]
    params: int
    depth: int = 0
    projection: ProjectionRow | None = None


@dataclass(frozen=True)
class Summary:
    name: str
    file: str
    rows: list[Row]
    total_params: int
    trainable_params: int
    outputs: list[str]

    @property
    def projections(self) -> list[str]:
        return [row.name for row in self.rows if row.projection and row.projection.steps != "identity"]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["projections"] = self.projections
        return data


def summarize(module: Any, depth: int | None = None) -> Summary:
    """Rows for every node of a module built by resgraph, block instances nested (dotted names).

    Args:
        depth: module levels to show, as torchinfo counts them (1: only the top level).
    """
    graph: Graph = module.graph
    rows: list[Row] = []
    _rows(module, graph, "", 0, rows)
    if depth is not None:
        rows = [row for row in rows if row.depth < depth]
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return Summary(graph.name, module.build_record.file, rows, total, trainable, list(graph.outputs))


def _rows(module: Any, graph: Graph, prefix: str, level: int, rows: list[Row]) -> None:
    for node in graph.nodes.values():
        name, shape = prefix + node.name, list(node.meta["type"].shape)
        params = owned_parameters(module, node, prefix)
        if isinstance(node, InputNode):
            if not prefix:
                rows.append(Row(name, "input", f"input {node.meta['type'].dtype}", shape, 0, level))
        elif isinstance(node, LayerNode):
            layer = node.layer
            args = ", ".join(f"{k}={short_value(v)}" for k, v in layer.args().items())
            if layer.code_only:
                args = ", ".join([*node.inputs, *([args] if args else [])])
            rows.append(Row(name, "layer", f"{layer.op}({args})", shape, params, level))
        elif isinstance(node, BlockNode):
            instances = node.instances
            repeat = f" x{len(instances)}" if node.repeated else ""
            rows.append(Row(name, "block", f"{node.call.block}{repeat}", shape, params, level))
            for instance in instances:
                if node.repeated:
                    qualified = instance.qualname.rstrip(".")
                    rows.append(Row(qualified, "instance", instance_title(instance),
                                    list(instance.nodes[instance.outputs[0]].meta["type"].shape),
                                    graph_parameters(module, instance), level + 1))
                _rows(module, instance, instance.qualname, level + 1 + node.repeated, rows)
        elif isinstance(node, SkipNode):
            plan: ProjectionPlan = node.meta["projection"]
            projection = ProjectionRow(plan.policy.value, plan.reason, describe_steps(plan.steps), params)
            rows.append(Row(name, "skip", f"skip {node.skip.merge.value} <- {node.skip.source}", shape, params, level,
                            projection))


def instance_title(instance: Graph) -> str:
    """`basic(planes=64, stride=2)`: a block instance's block and the parameters it was built with."""
    params = ", ".join(f"{k}={short_value(v)}" for k, v in instance.params.items())
    return f"{instance.block}({params})"


def short_value(value: Any) -> str:
    """`3` for (3, 3), `3x1` for (3, 1); other values as written (nested lists, mappings), with
    characters a terminal would act on escaped (a spec's strings reach the summary)."""
    if isinstance(value, (tuple, list)) and value and all(isinstance(v, (int, float, str)) for v in value):
        text = str(value[0]) if len(set(value)) == 1 else "x".join(map(str, value))
    else:
        text = str(value)
    return printable(text)


def format_summary(summary: Summary) -> str:
    """A torchinfo-like table: layer, op, output shape (batch as N) and parameter count."""
    table = [("Layer", "Op", "Output shape", "Params")]
    for row in summary.rows:
        shape = "(N" + "".join(f", {d}" for d in row.shape) + ")"
        table.append(("  " * row.depth + row.name, row.op, shape, f"{row.params:,}"))
        if row.projection and row.projection.steps != "identity":
            table.append(("  " * row.depth + "  └ projection", f"{row.projection.policy}: {row.projection.steps}",
                          f"[{row.projection.reason}]", ""))
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    line = "-" * (sum(widths) + 6)

    def fmt(r: tuple[str, ...]) -> str:
        return f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]:>{widths[3]}}".rstrip()

    out = [f"{summary.name} ({summary.file})", line, fmt(table[0]), line, *(fmt(r) for r in table[1:]), line,
           f"Total params: {summary.total_params:,}",
           f"Trainable params: {summary.trainable_params:,}",
           f"Non-trainable params: {summary.total_params - summary.trainable_params:,}"]
    projected = summary.projections
    out.append(f"Projections inserted: {len(projected)}" + (f" ({', '.join(projected)})" if projected else ""))
    return printable("\n".join(out))  # the file name may come from a saved model
