"""Summaries of a compiled module: one row per node, projections marked, totals; table or JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .graph import Graph, NodeKind
from .projections import ProjectionPlan, Step, StepKind

__all__ = ["ProjectionRow", "Row", "Summary", "format_summary", "summarize"]


@dataclass(frozen=True)
class ProjectionRow:
    policy: str
    reason: str
    steps: str
    params: int


@dataclass(frozen=True)
class Row:
    name: str
    kind: str
    op: str
    shape: list[int]
    params: int
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


def summarize(module: Any) -> Summary:
    """Rows for every node of a module built by resgraph, with parameter counts from its weights."""
    graph: Graph = module._resgraph_graph
    rows = []
    for node in graph.nodes.values():
        shape = list(node.meta["type"].shape)
        if node.kind is NodeKind.input:
            rows.append(Row(node.name, "input", f"input {node.meta['type'].dtype}", shape, 0))
        elif node.kind is NodeKind.layer:
            layer = node.layer
            assert layer is not None
            args = ", ".join(f"{k}={_value(v)}" for k, v in layer.args().items())
            rows.append(Row(node.name, "layer", f"{layer.op}({args})", shape, _params(module, node.name)))
        else:
            skip = node.skip
            assert skip is not None
            plan: ProjectionPlan = node.meta["projection"]
            params = _params(module, node.name)
            projection = ProjectionRow(plan.policy.value, plan.reason, describe_steps(plan.steps), params)
            rows.append(Row(node.name, "skip", f"skip {skip.merge.value} <- {skip.source}", shape, params,
                            projection))
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return Summary(graph.name, graph.source.file, rows, total, trainable, list(graph.outputs))


def describe_steps(steps: tuple[Step, ...]) -> str:
    """'Conv2d 1x1 /2 + BatchNorm2d', or 'identity' when nothing is needed."""
    if not steps:
        return "identity"
    parts = []
    for step in steps:
        a = step.args
        if step.kind is StepKind.conv:
            stride = a["stride"]
            parts.append(f"Conv{a['dims']}d 1x1" + (f" /{_value(stride)}" if stride not in (1, (1,)) else ""))
        elif step.kind is StepKind.norm:
            parts.append(f"BatchNorm{a['dims']}d")
        elif step.kind is StepKind.avgpool:
            parts.append(f"AvgPool{a['dims']}d /{_value(a['kernel'])}")
        elif step.kind is StepKind.linear:
            parts.append("Linear")
        elif step.kind is StepKind.subsample:
            parts.append(f"subsample /{_value(a['stride'])}")
        elif step.kind is StepKind.crop:
            parts.append(f"center-crop to {'x'.join(map(str, a['size']))}")
        else:
            parts.append("zero-pad " + ("features" if a["dim"] == -1 else "channels"))
    return " + ".join(parts)


def _value(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return str(value[0]) if len(set(value)) == 1 else "x".join(map(str, value))
    return str(value)


def _params(module: Any, name: str) -> int:
    sub = getattr(module, name, None) if name in module._modules else None
    return sum(p.numel() for p in sub.parameters()) if sub is not None else 0


def format_summary(summary: Summary) -> str:
    """A torchinfo-like table: layer, op, output shape (batch as N) and parameter count."""
    table = [("Layer", "Op", "Output shape", "Params")]
    for row in summary.rows:
        table.append((row.name, row.op, "(N" + "".join(f", {d}" for d in row.shape) + ")", f"{row.params:,}"))
        if row.projection and row.projection.steps != "identity":
            table.append(("  └ projection", f"{row.projection.policy}: {row.projection.steps}",
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
    return "\n".join(out)
