"""Summaries of a compiled module: one row per node, projections marked, totals; table or JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .graph import Graph, NodeKind
from .projections import ProjectionPlan, Step, StepKind

__all__ = ["ProjectionRow", "Row", "Summary", "describe_steps", "format_summary", "instance_title", "parameter_count",
           "short_value", "summarize"]


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
    graph: Graph = module._resgraph_graph
    rows: list[Row] = []
    _rows(module, graph, "", 0, rows)
    if depth is not None:
        rows = [row for row in rows if row.depth < depth]
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return Summary(graph.name, graph.scope.origin.source.file, rows, total, trainable, list(graph.outputs))


def _rows(module: Any, graph: Graph, prefix: str, level: int, rows: list[Row]) -> None:
    for node in graph.nodes.values():
        name, shape = prefix + node.name, list(node.meta["type"].shape)
        if node.kind is NodeKind.input:
            if not prefix:
                rows.append(Row(name, "input", f"input {node.meta['type'].dtype}", shape, 0, level))
        elif node.kind is NodeKind.layer:
            layer = node.layer
            assert layer is not None
            args = ", ".join(f"{k}={short_value(v)}" for k, v in layer.args().items())
            if layer.code_only:
                args = ", ".join([*node.inputs, *([args] if args else [])])
            rows.append(Row(name, "layer", f"{layer.op}({args})", shape, parameter_count(module, name), level))
        elif node.kind is NodeKind.block:
            call = node.call
            assert call is not None
            instances = node.meta["instances"]
            repeat = f" x{len(instances)}" if call.repeat is not None else ""
            rows.append(Row(name, "block", f"{call.block}{repeat}", shape, parameter_count(module, name), level))
            for instance in instances:
                if call.repeat is not None:
                    qualified = instance.qualname.rstrip(".")
                    rows.append(Row(qualified, "instance", instance_title(instance),
                                    list(instance.nodes[instance.outputs[0]].meta["type"].shape),
                                    parameter_count(module, qualified), level + 1))
                _rows(module, instance, instance.qualname, level + 1 + (call.repeat is not None), rows)
        else:
            skip = node.skip
            assert skip is not None
            plan: ProjectionPlan = node.meta["projection"]
            params = parameter_count(module, name)
            projection = ProjectionRow(plan.policy.value, plan.reason, describe_steps(plan.steps), params)
            rows.append(Row(name, "skip", f"skip {skip.merge.value} <- {skip.source}", shape, params, level,
                            projection))


def instance_title(instance: Graph) -> str:
    """`basic(planes=64, stride=2)`: a block instance's block and the parameters it was built with."""
    params = ", ".join(f"{k}={short_value(v)}" for k, v in instance.scope.params.items())
    return f"{instance.scope.block}({params})"


def describe_steps(steps: tuple[Step, ...]) -> str:
    """'Conv2d 1x1 /2 + BatchNorm2d', or 'identity' when nothing is needed."""
    if not steps:
        return "identity"
    parts = []
    for step in steps:
        a = step.args
        if step.kind is StepKind.conv:
            stride = a["stride"]
            parts.append(f"Conv{a['dims']}d 1x1" + (f" /{short_value(stride)}" if stride not in (1, (1,)) else ""))
        elif step.kind is StepKind.norm:
            parts.append(f"BatchNorm{a['dims']}d")
        elif step.kind is StepKind.avgpool:
            parts.append(f"AvgPool{a['dims']}d /{short_value(a['kernel'])}")
        elif step.kind is StepKind.linear:
            parts.append("Linear")
        elif step.kind is StepKind.subsample:
            parts.append(f"subsample /{short_value(a['stride'])}")
        elif step.kind is StepKind.crop:
            parts.append(f"center-crop to {'x'.join(map(str, a['size']))}")
        else:
            parts.append("zero-pad " + ("features" if a["dim"] == -1 else "channels"))
    return " + ".join(parts)


def short_value(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return str(value[0]) if len(set(value)) == 1 else "x".join(map(str, value))
    return str(value)


def parameter_count(module: Any, name: str) -> int:
    """Parameters under `name`: a submodule's, or a learned tensor's (`parameter` layers)."""
    try:
        return sum(p.numel() for p in module.get_submodule(name).parameters())
    except AttributeError:
        pass
    try:
        return module.get_parameter(name).numel()
    except AttributeError:  # parameter-free nodes own nothing
        return 0


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
    return "\n".join(out)
