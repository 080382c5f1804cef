"""Projection planning: how a skip's source tensor is made to fit its target, as plain data.

`plan_projection` is a pure function of the merge, the policy and the two tensor types. Each
policy is one small planning function in `POLICIES`; its result lists steps from a closed
vocabulary, and everything about a step kind (its torch module or its code, its parameter count,
how the summary names it) is one row of `STEPS`. Lowering, export, code generation and the
summary all read that table, so a new policy or step is written in one place.

Code steps (slicing, zero padding) are written into the generated forward; module steps become
an `nn.Sequential` named after the skip, so a skip named `downsample` has torchvision's keys
(`downsample.0.weight`, `downsample.1.running_mean`).

| policy  | channels-first (C, *spatial)                                  | features-last (..., F)   |
|---------|----------------------------------------------------------------|--------------------------|
| auto    | 1x1 ConvNd(stride=ratio, bias=False) + BatchNormNd             | Linear(bias=False)       |
| conv    | 1x1 ConvNd(stride=ratio, bias=False)                           | Linear(bias=False)       |
| avgpool | AvgPoolNd(ratio) then, if channels differ, 1x1 ConvNd + BatchNormNd | error               |
| pad     | subsample by ratio, zero-pad channels (no parameters)          | zero-pad features        |
| crop    | center-crop spatial dims, then 1x1 ConvNd if channels differ   | error                    |
| none    | identity; any mismatch is an error                            | same                     |

Every policy is the identity when the shapes already fit.

>>> from resgraph.ops import Merge, TensorType
>>> plan = plan_projection(Projection.auto, Merge.add, TensorType((64, 56, 56)), TensorType((128, 28, 28)))
>>> [step.kind.value for step in plan.steps], plan.reason, describe_steps(plan.steps)
(['conv', 'norm'], '64->128 channels, /2', 'Conv2d 1x1 /2 + BatchNorm2d')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .ops import Merge, ShapeError, TensorType, broadcast_shape
from .ops.base import sample_dim
from .spec import Projection

__all__ = ["POLICIES", "STEPS", "ProjectionError", "ProjectionPlan", "Step", "StepKind", "StepRule",
           "describe_steps", "plan_projection", "projection_parameters", "step_code", "step_constructor",
           "wanted_shape"]


class StepKind(str, Enum):
    """The closed set of projection steps; `STEPS` says what each one is."""

    subsample = "subsample"  # x[:, :, ::r, ::r]
    crop = "crop"  # center crop of the spatial dims
    pad = "pad"  # zero padding of the channel (or feature) dim
    avgpool = "avgpool"  # AvgPoolNd(kernel=r, stride=r, ceil_mode=True, count_include_pad=False)
    conv = "conv"  # ConvNd(c_in, c_out, 1, stride=r, bias=False)
    norm = "norm"  # BatchNormNd(c_out)
    linear = "linear"  # Linear(f_in, f_out, bias=False)


@dataclass(frozen=True)
class Step:
    kind: StepKind
    args: dict[str, Any] = field(default_factory=dict)

    @property
    def is_code(self) -> bool:
        return STEPS[self.kind].code is not None


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
        return tuple(s for s in self.steps if s.is_code)

    @property
    def module_steps(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if not s.is_code)


# --- the step table -------------------------------------------------------------------------------

@dataclass(frozen=True)
class StepRule:
    """Everything about one step kind. A step is either code or a module, never both.

    - `describe(args)`: how the summary and the diagram name it (`Conv2d 1x1 /2`).
    - `module(args)`: the torch.nn class name and keyword arguments of a module step.
    - `parameters(args)`: the module's parameter count (buffers are not parameters).
    - `code(expr, args, rank)`: for a code step, the expression applying it to `expr`, a tensor
      of `rank` dims, batch included.
    """

    describe: Callable[[dict[str, Any]], str]
    module: Callable[[dict[str, Any]], tuple[str, dict[str, Any]]] | None = None
    parameters: Callable[[dict[str, Any]], int] = lambda args: 0
    code: Callable[[str, dict[str, Any], int], str] | None = None


def _short(value: Any) -> str:
    """`2` for (2, 2), `2x1` for (2, 1): a per-dim value as the summary shows it."""
    if isinstance(value, (tuple, list)):
        return str(value[0]) if len(set(value)) == 1 else "x".join(map(str, value))
    return str(value)


def _pad_code(expr: str, args: dict[str, Any], rank: int) -> str:
    # F.pad lists (before, after) pairs from the last dim backwards.
    trailing = 0 if args["dim"] == -1 else rank - 2
    pads = [0, 0] * trailing + [args["before"], args["after"]]
    return f"torch.nn.functional.pad({expr}, ({', '.join(map(str, pads))}))"


STEPS: dict[StepKind, StepRule] = {
    StepKind.subsample: StepRule(
        describe=lambda a: f"subsample /{_short(a['stride'])}",
        code=lambda expr, a, rank: f"{expr}[:, :, {', '.join(f'::{s}' for s in a['stride'])}]"),
    StepKind.crop: StepRule(
        describe=lambda a: f"center-crop to {'x'.join(map(str, a['size']))}",
        code=lambda expr, a, rank: f"{expr}[:, :, {', '.join(f'{s}:{s + n}' for s, n in zip(a['start'], a['size']))}]"),
    StepKind.pad: StepRule(
        describe=lambda a: "zero-pad " + ("features" if a["dim"] == -1 else "channels"),
        code=_pad_code),
    StepKind.avgpool: StepRule(
        describe=lambda a: f"AvgPool{a['dims']}d /{_short(a['kernel'])}",
        module=lambda a: (f"AvgPool{a['dims']}d", {"kernel_size": a["kernel"], "stride": a["kernel"],
                                                    "ceil_mode": True, "count_include_pad": False})),
    StepKind.conv: StepRule(
        describe=lambda a: f"Conv{a['dims']}d 1x1" + (f" /{_short(a['stride'])}" if a["stride"] not in (1, (1,))
                                                      else ""),
        module=lambda a: (f"Conv{a['dims']}d", {"in_channels": a["in"], "out_channels": a["out"], "kernel_size": 1,
                                                "stride": a["stride"], "bias": False}),
        parameters=lambda a: a["in"] * a["out"]),
    StepKind.norm: StepRule(
        describe=lambda a: f"BatchNorm{a['dims']}d",
        module=lambda a: (f"BatchNorm{a['dims']}d", {"num_features": a["features"]}),
        parameters=lambda a: 2 * a["features"]),
    StepKind.linear: StepRule(
        describe=lambda a: "Linear",
        module=lambda a: ("Linear", {"in_features": a["in"], "out_features": a["out"], "bias": False}),
        parameters=lambda a: a["in"] * a["out"]),
}


def step_constructor(step: Step) -> tuple[str, dict[str, Any]]:
    """The torch.nn class and keyword arguments of a module step (lowering and export share it)."""
    build = STEPS[step.kind].module
    assert build is not None, f"{step.kind} is a code step"
    return build(step.args)


def step_code(step: Step, expr: str, rank: int) -> str:
    """The expression applying a code step to `expr` (a tensor of `rank` dims, batch included)."""
    write = STEPS[step.kind].code
    assert write is not None, f"{step.kind} is a module step"
    return write(expr, step.args, rank)


def describe_steps(steps: tuple[Step, ...]) -> str:
    """'Conv2d 1x1 /2 + BatchNorm2d', or 'identity' when nothing is needed."""
    return " + ".join(STEPS[step.kind].describe(step.args) for step in steps) or "identity"


def projection_parameters(plan: ProjectionPlan) -> int:
    """Parameters of a projection's modules (running statistics are buffers, not parameters)."""
    return sum(STEPS[step.kind].parameters(step.args) for step in plan.steps)


# --- planning -------------------------------------------------------------------------------------

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


@dataclass(frozen=True)
class Mismatch:
    """A source that must become shape `want`: what every policy plans from."""

    source: TensorType
    want: tuple[int, ...]
    spatial: bool  # a channels-first map (C, *spatial); else features-last (..., F)

    @property
    def channels(self) -> tuple[int, int]:
        """(in, out) channels of a map, or features of a features-last tensor."""
        return (self.source.shape[0], self.want[0]) if self.spatial else (self.source.shape[-1], self.want[-1])

    @property
    def dims(self) -> int:
        return self.source.rank - 1

    @property
    def sizes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(in, out) spatial sizes of a map."""
        return self.source.shape[1:], self.want[1:]

    def stride(self) -> tuple[int, ...]:
        """The integer spatial ratio in/out. Raises ProjectionError when there is none."""
        spatial_in, spatial_out = self.sizes
        if any(o > i for i, o in zip(spatial_in, spatial_out)):
            raise ProjectionError(f"the target is larger ({_size(spatial_in)} -> {_size(spatial_out)}); "
                                  "projections only downsample",
                                  "upsample the source first (e.g. an Upsample or ConvTranspose2d layer)")
        if any(i % o for i, o in zip(spatial_in, spatial_out)):
            raise ProjectionError(f"spatial size {_size(spatial_in)} -> {_size(spatial_out)} is not an integer "
                                  "stride", non_integer=True)
        return tuple(i // o for i, o in zip(spatial_in, spatial_out))

    def reason(self) -> str:
        """'64->128 channels, /2': what the projection changes."""
        c_in, c_out = self.channels
        if not self.spatial:
            return f"{c_in}->{c_out} features"
        stride = self.stride()
        return _join(f"{c_in}->{c_out} channels" if c_in != c_out else "",
                     f"/{_short(stride)}" if any(r != 1 for r in stride) else "")

    def conv(self, stride: Any = 1) -> Step:
        c_in, c_out = self.channels
        return Step(StepKind.conv, {"dims": self.dims, "in": c_in, "out": c_out, "stride": stride})

    def norm(self) -> Step:
        return Step(StepKind.norm, {"dims": self.dims, "features": self.channels[1]})

    def linear(self) -> Step:
        c_in, c_out = self.channels
        return Step(StepKind.linear, {"in": c_in, "out": c_out})

    def stride_arg(self) -> int | tuple[int, ...]:
        """The stride as a module argument: an int when it is the same in every dim."""
        stride = self.stride()
        return stride[0] if len(set(stride)) == 1 else stride

    def needs_spatial(self, policy: Projection) -> None:
        if not self.spatial:
            raise ProjectionError(f"projection {policy.value!r} needs spatial dims, but these are feature tensors "
                                  f"({_size(self.source.shape)} -> {_size(self.want)})",
                                  "use projection: auto, conv or pad")


Plan = tuple[tuple[Step, ...], str]  # steps and reason


def _auto(m: Mismatch) -> Plan:
    if not m.spatial:
        return (m.linear(),), m.reason()
    return (m.conv(m.stride_arg()), m.norm()), m.reason()


def _conv(m: Mismatch) -> Plan:
    if not m.spatial:
        return (m.linear(),), m.reason()
    return (m.conv(m.stride_arg()),), m.reason()


def _avgpool(m: Mismatch) -> Plan:
    m.needs_spatial(Projection.avgpool)
    stride, (c_in, c_out) = m.stride(), m.channels
    steps = [Step(StepKind.avgpool, {"dims": m.dims, "kernel": m.stride_arg()})] if any(r != 1 for r in stride) else []
    if c_in != c_out:
        steps += [m.conv(), m.norm()]
    return tuple(steps), m.reason()


def _pad(m: Mismatch) -> Plan:
    c_in, c_out = m.channels
    stride = m.stride() if m.spatial else ()
    what = "channels" if m.spatial else "features"
    if c_out < c_in:
        raise ProjectionError(f"pad cannot reduce {c_in} {what} to {c_out}",
                              "use projection: auto or conv, which learn a 1x1 projection" if m.spatial
                              else "use projection: auto")
    steps = []
    if any(r != 1 for r in stride):
        steps.append(Step(StepKind.subsample, {"stride": stride}))
    if c_out > c_in:
        extra = c_out - c_in
        steps.append(Step(StepKind.pad, {"dim": 1 if m.spatial else -1, "before": extra // 2,
                                         "after": extra - extra // 2}))
    return tuple(steps), m.reason()


def _crop(m: Mismatch) -> Plan:
    m.needs_spatial(Projection.crop)
    (spatial_in, spatial_out), (c_in, c_out) = m.sizes, m.channels
    if any(s < w for s, w in zip(spatial_in, spatial_out)):
        raise ProjectionError(f"crop cannot enlarge spatial size {_size(spatial_in)} to {_size(spatial_out)}")
    steps = []
    if spatial_in != spatial_out:
        starts = tuple((s - w) // 2 for s, w in zip(spatial_in, spatial_out))
        steps.append(Step(StepKind.crop, {"start": starts, "size": spatial_out}))
    if c_in != c_out:
        steps.append(m.conv())
    crop = f"crop {_size(spatial_in)}->{_size(spatial_out)}" if spatial_in != spatial_out else ""
    return tuple(steps), _join(crop, f"{c_in}->{c_out} channels" if c_in != c_out else "")


def _none(m: Mismatch) -> Plan:
    raise ProjectionError("shapes differ and projection is 'none'",
                          "set `projection: auto` on the skip (or under defaults:) to insert one")


# One planning function per policy (see the module's table).
POLICIES: dict[Projection, Callable[[Mismatch], Plan]] = {
    Projection.auto: _auto,
    Projection.conv: _conv,
    Projection.avgpool: _avgpool,
    Projection.pad: _pad,
    Projection.crop: _crop,
    Projection.none: _none,
}


def plan_projection(policy: Projection, merge: Merge, source: TensorType, target: TensorType,
                    dim: int = 1) -> ProjectionPlan:
    """Plan the steps that make `source` fit `target` under `policy`.

    Raises:
        ProjectionError: the policy cannot reconcile the shapes (the message says why).
    """
    want = wanted_shape(merge, source, target, dim)
    if want is None:
        return ProjectionPlan(policy, (), "shapes match", source)
    if policy is not Projection.none and source.rank != len(want):
        raise ProjectionError(f"their ranks differ ({source.rank} vs {len(want)} dims per sample); "
                              "no projection changes the number of dims",
                              "merge tensors of the same kind, e.g. add a Flatten before the target")
    spatial = source.rank >= 2 and target.layout == "channels_first"
    if policy is not Projection.none and not spatial and source.shape[:-1] != want[:-1]:
        raise ProjectionError(f"their leading dims differ ({_size(source.shape[:-1])} vs {_size(want[:-1])}); "
                              "a feature projection only changes the last dim")
    steps, reason = POLICIES[policy](Mismatch(source, want, spatial))
    return ProjectionPlan(policy, steps, reason, source.with_shape(want, "channels_first" if spatial
                                                                    else "features_last"))


def _size(dims: tuple[int, ...]) -> str:
    return "x".join(map(str, dims)) if dims else "()"


def _join(*parts: str) -> str:
    return ", ".join(p for p in parts if p)
