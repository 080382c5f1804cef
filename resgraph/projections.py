"""Projection planning: how a skip's source tensor is made to fit its target, as plain data.

`plan_projection` is a pure function of the merge, the policy and the two tensor types. Its
result lists steps from a closed vocabulary; the lowering turns parameter-free steps into code
(slicing, zero padding) and the others into an `nn.Sequential` named after the skip, so a skip
named `downsample` has torchvision's keys (`downsample.0.weight`, `downsample.1.running_mean`).

| policy  | channels-first (C, *spatial)                                  | features-last (..., F)   |
|---------|----------------------------------------------------------------|--------------------------|
| auto    | 1x1 ConvNd(stride=ratio, bias=False) + BatchNormNd             | Linear(bias=False)       |
| conv    | 1x1 ConvNd(stride=ratio, bias=False)                           | Linear(bias=False)       |
| avgpool | AvgPoolNd(ratio) then, if channels differ, 1x1 ConvNd + BatchNormNd | error               |
| pad     | subsample by ratio, zero-pad channels (no parameters)          | zero-pad features        |
| crop    | center-crop spatial dims, then 1x1 ConvNd if channels differ   | error                    |
| none    | identity; any mismatch is an error                            | same                     |

Every policy is the identity when the shapes already fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .ops import Merge, ShapeError, TensorType, broadcast_shape
from .ops.base import sample_dim
from .spec import Projection

__all__ = ["ProjectionError", "ProjectionPlan", "Step", "StepKind", "plan_projection", "projection_parameters",
           "step_constructor",
           "wanted_shape"]


class StepKind(str, Enum):
    """The closed set of projection steps. The first three are code, the rest are modules."""

    subsample = "subsample"  # x[:, :, ::r, ::r]
    crop = "crop"  # center crop of the spatial dims
    pad = "pad"  # zero padding of the channel (or feature) dim
    avgpool = "avgpool"  # AvgPoolNd(kernel=r, stride=r, ceil_mode=True, count_include_pad=False)
    conv = "conv"  # ConvNd(c_in, c_out, 1, stride=r, bias=False)
    norm = "norm"  # BatchNormNd(c_out)
    linear = "linear"  # Linear(f_in, f_out, bias=False)

    @property
    def is_code(self) -> bool:
        return self in (StepKind.subsample, StepKind.crop, StepKind.pad)


@dataclass(frozen=True)
class Step:
    kind: StepKind
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProjectionPlan:
    """What reconciles a skip: steps (code steps first), why, and the projected type."""

    policy: Projection
    steps: tuple[Step, ...]
    reason: str
    output: TensorType

    @property
    def is_identity(self) -> bool:
        return not self.steps

    @property
    def code_steps(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.kind.is_code)

    @property
    def module_steps(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if not s.kind.is_code)


def step_constructor(step: Step) -> tuple[str, dict[str, Any]]:
    """The torch.nn class and keyword arguments of a module step (lowering and export share it)."""
    a = step.args
    if step.kind is StepKind.conv:
        return f"Conv{a['dims']}d", {"in_channels": a["in"], "out_channels": a["out"], "kernel_size": 1,
                                     "stride": a["stride"], "bias": False}
    if step.kind is StepKind.norm:
        return f"BatchNorm{a['dims']}d", {"num_features": a["features"]}
    if step.kind is StepKind.avgpool:
        return f"AvgPool{a['dims']}d", {"kernel_size": a["kernel"], "stride": a["kernel"], "ceil_mode": True,
                                        "count_include_pad": False}
    assert step.kind is StepKind.linear, step
    return "Linear", {"in_features": a["in"], "out_features": a["out"], "bias": False}


def projection_parameters(plan: ProjectionPlan) -> int:
    """Parameters of a projection's modules (running statistics are buffers, not parameters)."""
    total = 0
    for step in plan.module_steps:
        a = step.args
        if step.kind in (StepKind.conv, StepKind.linear):
            total += a["in"] * a["out"]
        elif step.kind is StepKind.norm:
            total += 2 * a["features"]
    return total


class ProjectionError(ShapeError):
    """A mismatch the policy cannot reconcile. `non_integer` marks a fractional spatial ratio."""

    def __init__(self, message: str, hint: str | None = None, *, non_integer: bool = False) -> None:
        super().__init__(message)
        self.hint = hint
        self.non_integer = non_integer


def wanted_shape(merge: Merge, source: TensorType, target: TensorType, dim: int = 1) -> tuple[int, ...] | None:
    """The shape the source must have to merge into the target, or None when it already fits.

    add needs the target's shape; mul needs a shape that broadcasts with the target's (or, failing
    that, the target's own); concat needs the target's shape except along `dim`.
    """
    if merge is Merge.mul and broadcast_shape(source.shape, target.shape) is not None:
        return None
    if merge is Merge.concat and source.rank == target.rank:
        axis = sample_dim(dim, target.rank)
        want = (*target.shape[:axis], source.shape[axis], *target.shape[axis + 1:])
        return None if want == source.shape else want
    return None if source.shape == target.shape else target.shape


def plan_projection(policy: Projection, merge: Merge, source: TensorType, target: TensorType,
                    dim: int = 1) -> ProjectionPlan:
    """Plan the steps that make `source` fit `target` under `policy`.

    Raises:
        ProjectionError: the policy cannot reconcile the shapes (the message says why).
    """
    want = wanted_shape(merge, source, target, dim)
    if want is None:
        return ProjectionPlan(policy, (), "shapes match", source)
    if policy is Projection.none:
        raise ProjectionError("shapes differ and projection is 'none'",
                              "set `projection: auto` on the skip (or under defaults:) to insert one")
    if source.rank != len(want):
        raise ProjectionError(f"their ranks differ ({source.rank} vs {len(want)} dims per sample); "
                              "no projection changes the number of dims",
                              "merge tensors of the same kind, e.g. add a Flatten before the target")
    if source.rank >= 2 and target.layout == "channels_first":
        return _plan_channels_first(policy, source, want)
    return _plan_features_last(policy, source, want)


def _plan_channels_first(policy: Projection, source: TensorType, want: tuple[int, ...]) -> ProjectionPlan:
    c_in, c_out = source.shape[0], want[0]
    spatial_in, spatial_out = source.shape[1:], want[1:]
    n = len(spatial_in)
    channels = f"{c_in}->{c_out} channels" if c_in != c_out else ""
    output = source.with_shape(want, "channels_first")

    if policy is Projection.crop:
        if any(s < w for s, w in zip(spatial_in, spatial_out)):
            raise ProjectionError(f"crop cannot enlarge spatial size {_size(spatial_in)} to {_size(spatial_out)}")
        steps = []
        if spatial_in != spatial_out:
            starts = tuple((s - w) // 2 for s, w in zip(spatial_in, spatial_out))
            steps.append(Step(StepKind.crop, {"start": starts, "size": spatial_out}))
        if c_in != c_out:
            steps.append(Step(StepKind.conv, {"dims": n, "in": c_in, "out": c_out, "stride": 1}))
        crop = f"crop {_size(spatial_in)}->{_size(spatial_out)}" if spatial_in != spatial_out else ""
        return ProjectionPlan(policy, tuple(steps), _join(crop, channels), output)

    stride = _integer_ratio(spatial_in, spatial_out)
    strided = any(r != 1 for r in stride)
    down = f"/{_show_stride(stride)}" if strided else ""
    reason = _join(channels, down)
    stride_arg = stride[0] if len(set(stride)) == 1 else stride

    if policy in (Projection.auto, Projection.conv):
        steps = [Step(StepKind.conv, {"dims": n, "in": c_in, "out": c_out, "stride": stride_arg})]
        if policy is Projection.auto:
            steps.append(Step(StepKind.norm, {"dims": n, "features": c_out}))
        return ProjectionPlan(policy, tuple(steps), reason, output)

    if policy is Projection.avgpool:
        steps = [Step(StepKind.avgpool, {"dims": n, "kernel": stride_arg})] if strided else []
        if c_in != c_out:
            steps += [Step(StepKind.conv, {"dims": n, "in": c_in, "out": c_out, "stride": 1}),
                      Step(StepKind.norm, {"dims": n, "features": c_out})]
        return ProjectionPlan(policy, tuple(steps), reason, output)

    assert policy is Projection.pad, policy
    if c_out < c_in:
        raise ProjectionError(f"pad cannot reduce {c_in} channels to {c_out}",
                              "use projection: auto or conv, which learn a 1x1 projection")
    steps = [Step(StepKind.subsample, {"stride": stride})] if strided else []
    if c_out > c_in:
        extra = c_out - c_in
        steps.append(Step(StepKind.pad, {"dim": 1, "before": extra // 2, "after": extra - extra // 2}))
    return ProjectionPlan(policy, tuple(steps), reason, output)


def _plan_features_last(policy: Projection, source: TensorType, want: tuple[int, ...]) -> ProjectionPlan:
    f_in, f_out = source.shape[-1], want[-1]
    if source.shape[:-1] != want[:-1]:
        raise ProjectionError(f"their leading dims differ ({_size(source.shape[:-1])} vs {_size(want[:-1])}); "
                              "a feature projection only changes the last dim")
    reason = f"{f_in}->{f_out} features"
    output = source.with_shape(want, "features_last")
    if policy in (Projection.auto, Projection.conv):
        return ProjectionPlan(policy, (Step(StepKind.linear, {"in": f_in, "out": f_out}),), reason, output)
    if policy is Projection.pad:
        if f_out < f_in:
            raise ProjectionError(f"pad cannot reduce {f_in} features to {f_out}", "use projection: auto")
        extra = f_out - f_in
        step = Step(StepKind.pad, {"dim": -1, "before": extra // 2, "after": extra - extra // 2})
        return ProjectionPlan(policy, (step,), reason, output)
    raise ProjectionError(f"projection {policy.value!r} needs spatial dims, but these are feature tensors "
                          f"({_size(source.shape)} -> {_size(want)})", "use projection: auto, conv or pad")


def _integer_ratio(spatial_in: tuple[int, ...], spatial_out: tuple[int, ...]) -> tuple[int, ...]:
    if any(o > i for i, o in zip(spatial_in, spatial_out)):
        raise ProjectionError(f"the target is larger ({_size(spatial_in)} -> {_size(spatial_out)}); "
                              "projections only downsample",
                              "upsample the source first (e.g. an Upsample or ConvTranspose2d layer)")
    if any(i % o for i, o in zip(spatial_in, spatial_out)):
        raise ProjectionError(f"spatial size {_size(spatial_in)} -> {_size(spatial_out)} is not an integer "
                              "stride", non_integer=True)
    return tuple(i // o for i, o in zip(spatial_in, spatial_out))


def _size(dims: tuple[int, ...]) -> str:
    return "x".join(map(str, dims)) if dims else "()"


def _show_stride(stride: tuple[int, ...]) -> str:
    return str(stride[0]) if len(set(stride)) == 1 else "x".join(map(str, stride))


def _join(*parts: str) -> str:
    return ", ".join(p for p in parts if p)
