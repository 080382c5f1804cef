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
from .ops.base import FLOAT_DTYPES, NORM_DTYPES, WEIGHTED_DTYPES, Scale, grid_origin, sample_dim
from .ops.merge import check_gate_layouts
from .ops.pool import check_avg_pool3d_input
from .spec import Projection
from .symbolic import Guard, SymInt, hint, hints, requirement, same_sizes, specialize, sym_max

__all__ = ["POLICIES", "STEPS", "Mismatch", "ProjectionError", "ProjectionPlan", "Step", "StepKind", "StepRule",
           "describe_steps", "plan_projection", "projection_dtypes", "projection_parameters", "step_code",
           "step_constructor", "step_kernel", "wanted_shape"]


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

    def with_output(self, output: TensorType) -> ProjectionPlan:
        """This plan with another projected type (its sizes at the declared input size, say).
        (Not dataclasses.replace, which takes several times as long.)"""
        return ProjectionPlan(self.policy, self.steps, self.reason, output)

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
    - `input_dtypes`: the dtypes a module step computes with (its weights are float32; see
      `ops.base.WEIGHTED_DTYPES`); a code step takes any.
    - `kernel(args)`: a convolution's kernel as the summary spells it over the spatial dims (`1x1`,
      a Conv1d's `1`), None for other steps.
    - `code(expr, args, rank, target)`: for a code step, the expression applying it to `expr`, a
      tensor of `rank` dims (batch included) merging into the variable `target`. Nothing that
      depends on the input size is a constant in it: such sizes are read from the tensors at run
      time (a crop crops to whatever size the target has), so the model works at every size
      its input admits. It may call the helpers in `codegen.HELPERS`.
    """

    describe: Callable[[dict[str, Any]], str]
    module: Callable[[dict[str, Any]], tuple[str, dict[str, Any]]] | None = None
    parameters: Callable[[dict[str, Any]], int] = lambda args: 0
    code: Callable[[str, dict[str, Any], int, str], str] | None = None
    input_dtypes: frozenset[str] = FLOAT_DTYPES
    kernel: Callable[[dict[str, Any]], str | None] = lambda args: None


def _short(value: Any) -> str:
    """`2` for (2, 2), `2x1` for (2, 1): a per-dim value as the summary shows it."""
    if isinstance(value, (tuple, list)):
        return str(value[0]) if len(set(value)) == 1 else "x".join(map(str, value))
    return str(value)


def _unit_kernel(args: dict[str, Any]) -> str:
    """A 1-wide kernel over each spatial dim, as a convolution layer's kernel is spelled (`1x1`; `1`)."""
    return "x".join(["1"] * args["dims"])


def step_kernel(steps: tuple[Step, ...]) -> str | None:
    """The kernel of a projection's convolution step, as the summary shows it; None where it has none."""
    return next((kernel for step in steps if (kernel := STEPS[step.kind].kernel(step.args)) is not None), None)


def _pad_code(expr: str, args: dict[str, Any], rank: int, target: str) -> str:
    # F.pad lists (before, after) pairs from the last dim backwards.
    trailing = 0 if args["dim"] == -1 else rank - 2
    pads = [0, 0] * trailing + [args["before"], args["after"]]
    return f"torch.nn.functional.pad({expr}, ({', '.join(map(str, pads))}))"


STEPS: dict[StepKind, StepRule] = {
    StepKind.subsample: StepRule(
        describe=lambda a: f"subsample /{_short(a['stride'])}",
        code=lambda expr, a, rank, target: f"{expr}[:, :, {', '.join(f'::{s}' for s in a['stride'])}]"),
    StepKind.crop: StepRule(
        describe=lambda a: f"center-crop to {'x'.join(map(str, a['size']))}",
        code=lambda expr, a, rank, target: f"_center_crop({expr}, {target})"),
    StepKind.pad: StepRule(
        describe=lambda a: "zero-pad " + ("features" if a["dim"] == -1 else "channels"),
        code=_pad_code),
    StepKind.avgpool: StepRule(
        describe=lambda a: f"AvgPool{a['dims']}d /{_short(a['kernel'])}",
        module=lambda a: (f"AvgPool{a['dims']}d", {"kernel_size": a["kernel"], "stride": a["kernel"],
                                                    "ceil_mode": True, "count_include_pad": False})),
    StepKind.conv: StepRule(
        describe=lambda a: f"Conv{a['dims']}d {_unit_kernel(a)}" + (
            f" /{_short(a['stride'])}" if a["stride"] not in (1, (1,)) else ""),
        module=lambda a: (f"Conv{a['dims']}d", {"in_channels": a["in"], "out_channels": a["out"], "kernel_size": 1,
                                                "stride": a["stride"], "bias": False}),
        parameters=lambda a: a["in"] * a["out"], input_dtypes=WEIGHTED_DTYPES, kernel=_unit_kernel),
    StepKind.norm: StepRule(
        describe=lambda a: f"BatchNorm{a['dims']}d",
        module=lambda a: (f"BatchNorm{a['dims']}d", {"num_features": a["features"]}),
        parameters=lambda a: 2 * a["features"], input_dtypes=NORM_DTYPES),
    StepKind.linear: StepRule(
        describe=lambda a: "Linear",
        module=lambda a: ("Linear", {"in_features": a["in"], "out_features": a["out"], "bias": False}),
        parameters=lambda a: a["in"] * a["out"], input_dtypes=WEIGHTED_DTYPES),
}


def step_constructor(step: Step) -> tuple[str, dict[str, Any]]:
    """The torch.nn class and keyword arguments of a module step (lowering and export share it)."""
    build = STEPS[step.kind].module
    assert build is not None, f"{step.kind} is a code step"
    return build(step.args)


def step_code(step: Step, expr: str, rank: int, target: str) -> str:
    """The expression applying a code step to `expr` (a tensor of `rank` dims, batch included) that
    merges into the variable `target`."""
    write = STEPS[step.kind].code
    assert write is not None, f"{step.kind} is a module step"
    return write(expr, step.args, rank, target)


def describe_steps(steps: tuple[Step, ...]) -> str:
    """'Conv2d 1x1 /2 + BatchNorm2d', or 'identity' when nothing is needed."""
    return " + ".join(STEPS[step.kind].describe(step.args) for step in steps) or "identity"


def projection_dtypes(plan: ProjectionPlan) -> frozenset[str] | None:
    """The source dtypes a projection computes with: those every module step takes (each passes its
    input's dtype on, or the one dtype its weights need), or None for code steps alone (any dtype).

    >>> sorted(projection_dtypes(plan_projection(Projection.auto, Merge.add, TensorType((64, 8, 8)),
    ...                                          TensorType((128, 4, 4)))))
    ['float32']
    """
    accepted = [STEPS[step.kind].input_dtypes for step in plan.module_steps]
    return frozenset.intersection(*accepted) if accepted else None


def projection_parameters(plan: ProjectionPlan) -> int:
    """Parameters of a projection's modules (running statistics are buffers, not parameters)."""
    return sum(STEPS[step.kind].parameters(step.args) for step in plan.steps)


# --- planning -------------------------------------------------------------------------------------

class ProjectionError(ShapeError):
    """A mismatch the policy cannot reconcile; `kind` says which, for the hint that fixes it.

    Kinds: "larger" (the target is larger on the same grid, or grids unknown), "crossed" (larger along
    one spatial dim and smaller along another: `Mismatch.crossed`), "finer" (the target is
    on a finer grid: upsampled relative to the source), "grid" (same grid,
    different sizes: unpadded convolutions or pools shrank one side), "stride" (the grids differ
    by an integer step, but the sizes do not match that step: an odd size met a stride that
    floors), "ratio" (the grids differ by a non-integer ratio), "scales" (a concat or gate across
    scales, which `auto` does not reconcile silently), "layout" (a gate whose layout is not the
    target's: `merge.check_gate_layouts`), "misaligned" (a crop across a stride; its `__cause__`, where
    set, is the refusal a policy that follows the stride meets at these sizes), or None.
    """

    def __init__(self, message: str, hint: str | None = None, *, kind: str | None = None,
                 required: tuple[Guard, ...] = (), crop_required: tuple[Guard, ...] | None = None) -> None:
        super().__init__(message)
        self.hint = hint
        self.kind = kind
        self.required = required  # size conditions under which the skip would fit (for hints)
        # For a map shrunk on one grid: the conditions under which a centre crop would align it (even
        # margins); empty when it already would.
        self.crop_required = crop_required


def wanted_shape(merge: Merge, source: TensorType, target: TensorType, dim: int = 1) -> tuple[Any, ...] | None:
    """The shape the source must have to merge into the target, or None when it already fits.

    mul needs a shape that broadcasts with the target's; add one that broadcasts into it, leaving
    the target's shape as it is (a per-channel (C, 1, 1) context added to every position, as
    GCNet's). A source whose
    channels (features) alone keep it from broadcasting needs the target's channels and keeps its
    own other dims (an SE gate (C', 1, 1) into (C, H, W) becomes (C, 1, 1)); anything else needs the
    target's own shape. concat needs the target's shape except along `dim`.

    >>> m = lambda *shape: TensorType(shape)
    >>> wanted_shape(Merge.add, m(8, 1, 1), m(8, 4, 4)), wanted_shape(Merge.add, m(2, 1, 1), m(8, 4, 4))
    (None, (8, 1, 1))
    """
    if same_sizes(source.shape, target.shape):  # (most skips: what every merge's check below concludes)
        return None
    fits = _gates if merge is Merge.mul else _adds_into if merge is Merge.add else None
    if fits is not None:
        if fits(source.shape, target.shape):
            return None
        if source.rank == target.rank and source.rank >= 1:
            axis = 0 if source.rank >= 2 and target.layout == "channels_first" else source.rank - 1
            gate = (*source.shape[:axis], target.shape[axis], *source.shape[axis + 1:])
            if same_sizes(gate, target.shape) or fits(gate, target.shape):  # (a projection of the channels alone)
                return gate
    if merge is Merge.concat and source.rank == target.rank:
        axis = sample_dim(dim, target.rank)
        want = (*target.shape[:axis], source.shape[axis], *target.shape[axis + 1:])
        return None if _same_shape(want, source.shape) else want
    return None if _same_shape(source.shape, target.shape) else target.shape


def _gates(gate: tuple[Any, ...], target: tuple[Any, ...]) -> bool:
    """Whether `gate` multiplies `target` as it is: they broadcast, and no size of the target that is
    1 only at these input sizes (a free size, not a written 1) would be broadcast up to the gate's.
    At every other size that dim is no 1 and the skip is projected, so it is projected here too: one
    model, with the same weights, at every size (a 2x2 gate into a strided target that is 1x1 at an
    input of 2 made a model without the projection, whose merge came out 2x2).

    >>> from resgraph.symbolic import SymInt
    >>> h = SymInt.symbol("x.H", 1)
    >>> _gates((8, 1, 1), (8, 4, 4)), _gates((8, 2, 2), (8, 1, 1)), _gates((8, 2, 2), (8, h, h))
    (True, True, False)
    """
    if any(isinstance(t, SymInt) and hint(t) == 1 and hint(g) != 1 for g, t in zip(gate, target)):
        return False
    return _broadcasts(gate, target)


def _adds_into(source: tuple[Any, ...], target: tuple[Any, ...]) -> bool:
    """Whether `source` is added to `target` as it is: they broadcast (as `_gates` decides it) and
    the target keeps its shape, as a residual's value does (a 1 of the source is broadcast over the
    target's size, never the other way round).

    >>> _adds_into((8, 1, 1), (8, 4, 4)), _adds_into((8, 4, 4), (8, 1, 1)), _adds_into((8, 4, 1), (8, 4, 4))
    (True, False, True)
    """
    if any(hint(s) != 1 and hint(s) != hint(t) for s, t in zip(source, target)):
        return False
    return _gates(source, target)


def _broadcasts(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    """Whether two shapes broadcast, recording what broadcasting needs only where they do (see
    `_same_shape`: shapes that do not broadcast at the declared size plan a projection, which still
    fits where a size happens to become 1 or equal)."""
    return broadcast_shape(hints(a), hints(b)) is not None and broadcast_shape(a, b) is not None


def _same_shape(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    """Whether two shapes are equal, recording a guard only where they are.

    Equal shapes plan the identity, which holds only at sizes where they stay equal: each dim's
    equality is recorded. Shapes that differ at the declared size plan a projection, and the plan
    records the conditions it needs itself (its stride, its margins); it still fits at a size where
    the two happen to coincide. Comparing the tuples directly would record the first differing dim
    only (the comparison stops there), refusing e.g. H = 1 for a strided skip while admitting W = 1.
    """
    return len(a) == len(b) and hints(a) == hints(b) and a == b


@dataclass(frozen=True)
class Mismatch:
    """A source that must become shape `want` (the target's grid scale is `target_scale`): what every
    policy plans from. Sizes may be symbolic; everything a step's module is built with is specialised."""

    source: TensorType
    want: tuple[Any, ...]
    spatial: bool  # a channels-first map (C, *spatial); else features-last (..., F)
    target_scale: Scale | None = None
    concat_axis: int | None = None  # a concat along a spatial dim keeps the source's size there
    gating: bool = False  # the source multiplies the target (`merge: mul`)
    # The dims (batch-free, as `concat_axis`) the merge broadcasts, where the projected source keeps its
    # own size: an SE gate's (C, 1, 1) or an added context's H and W. Their grids do not meet.
    broadcast_axes: frozenset[int] = frozenset()
    # `steps()` and `channels` once found (a plan asks for each two or three times: its modules, its reason)
    _steps: tuple[int, ...] | None = field(default=None, init=False, repr=False, compare=False)
    _channels: tuple[int, int] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def channels(self) -> tuple[int, int]:
        """(in, out) channels of a map, or features of a features-last tensor."""
        if self._channels is None:  # (specialised once: asking again would record nothing new)
            pair = (self.source.shape[0], self.want[0]) if self.spatial else (self.source.shape[-1], self.want[-1])
            object.__setattr__(self, "_channels", (specialize(pair[0]), specialize(pair[1])))
        return self._channels  # type: ignore[return-value]

    @property
    def dims(self) -> int:
        return self.source.rank - 1

    @property
    def sizes(self) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        """(in, out) spatial sizes of a map."""
        return self.source.shape[1:], self.want[1:]

    def steps(self) -> tuple[int, ...]:
        """The integer step from the source's spatial grid to the target's, per dim (a projection's stride).

        Where both grid scales are known, their ratio is the step (so a 9 -> 3 map reached by two
        stride-2 layers steps by 4, aligned with them); otherwise the smallest step whose output
        size, ceil(size / step) as a strided 1x1 conv, avgpool(ceil_mode) or subsample all give
        it, equals the target's at the declared size (at other sizes the model keeps that step: only
        its fit is a condition on the size). Either way that output size must equal the target's.

        Raises:
            ProjectionError: no integer step maps the source's grid onto the target's.
        """
        if self._steps is not None:
            return self._steps
        spatial_in, spatial_out = self.sizes
        ratios = self._grid_ratios()
        steps = []
        for index, (size_in, size_out) in enumerate(zip(spatial_in, spatial_out)):
            if self.concat_axis == index + 1 or index + 1 in self.broadcast_axes:
                steps.append(1)  # the concat dim, a broadcast dim: the source keeps its own size and grid
                continue
            if ratios is not None:
                ratio = ratios[index]
                if ratio < 1:
                    raise ProjectionError(f"the target is on a finer grid (upsampled x{_short(1 / ratio)} relative to "
                                          f"the source; {_size(spatial_in)} -> {_size(spatial_out)}); projections only "
                                          "downsample", kind="finer")
                if ratio.denominator != 1:
                    raise ProjectionError(f"the grids differ by a ratio of {ratio}, not an integer step "
                                          f"({_size(spatial_in)} -> {_size(spatial_out)})", kind="ratio")
                step = int(ratio)
            else:
                if size_out > size_in:
                    raise self.crossed() or ProjectionError(
                        f"the target is larger ({_size(spatial_in)} -> {_size(spatial_out)}); projections only "
                        "downsample", kind="larger")
                # the smallest step that fits at this size; the model keeps it, and fits wherever it still does
                step = -(-hint(size_in) // hint(size_out))
                _keep_smallest(size_in, size_out, step)
            if (size_in if step == 1 else -(-size_in // step)) != size_out:  # (ceil(a / 1) is a: no arithmetic)
                # (the dims before this one keep the steps found for them: 16x5 -> 16x4 is /1 along H)
                per_dim = (*steps, *[step] * (len(spatial_in) - len(steps)))
                kept = {*self.broadcast_axes, self.concat_axis}  # (the source keeps its own size there)
                required = tuple(requirement("eq", a if s == 1 else -(-a // s), b) for j, (a, b, s)
                                 in enumerate(zip(spatial_in, spatial_out, per_dim)) if j + 1 not in kept)
                if step == 1:
                    larger = any(hint(o) > hint(i) for i, o in zip(spatial_in, spatial_out))
                    odd = [requirement("eq", (a - b) % 2, 0) for a, b in zip(spatial_in, spatial_out)
                           if (hint(a) - hint(b)) % 2]
                    crossed = self.crossed(required) if larger else None
                    if crossed:
                        raise crossed
                    raise ProjectionError(f"the spatial size {'grows' if larger else 'shrinks'} on one grid (no net "
                                          f"stride between them): {_size(spatial_in)} -> {_size(spatial_out)}",
                                          kind="larger" if larger else "grid", required=required,
                                          crop_required=tuple(odd))
                raise ProjectionError(f"spatial size {_size(spatial_in)} -> {_size(spatial_out)} does not match a "
                                      f"stride of {_short(per_dim)} (which gives "
                                      f"{'x'.join(str(-(-hint(d) // s)) for d, s in zip(spatial_in, per_dim))})",
                                      kind="stride", required=required)
            steps.append(step)
        object.__setattr__(self, "_steps", tuple(steps))  # (a frozen dataclass: its one cache)
        return self._steps

    def crossed(self, required: tuple[Guard, ...] = ()) -> ProjectionError | None:
        """The error for sizes that grow along one spatial dim and shrink along another, None for others.

        Neither fixes it alone: a projection only shrinks, and a broadcast stretches a size-1 dim
        only where the other dims already match. (Said as "the target is larger", of 1x16 -> 8x8.)
        `required`: the size conditions under which the skip would fit, where the grids are one.
        """
        spatial_in, spatial_out = self.sizes
        kept = {*self.broadcast_axes, self.concat_axis}  # (the source keeps its own size there)
        pairs = [(index + 1, hint(a), hint(b)) for index, (a, b) in enumerate(zip(spatial_in, spatial_out))
                 if index + 1 not in kept]
        grown, shrunk = [p for p in pairs if p[2] > p[1]], [p for p in pairs if p[2] < p[1]]
        if not grown or not shrunk:
            return None

        def listed(found: list[tuple[int, int, int]]) -> str:
            return " and ".join(f"dim {dim} ({a} -> {b})" for dim, a, b in found)

        fixes = [f"start the skip from a value of the target's spatial size {_size(spatial_out)}"]
        if self.concat_axis is None and all(a == 1 for _, a, _ in grown):  # a broadcast then stretches those
            stretched = {dim for dim, _, _ in grown}
            sizes = tuple(1 if index + 1 in stretched else b for index, b in enumerate(spatial_out))
            fixes.append(f"of spatial size {_size(sizes)}, whose size-1 dims broadcast")
        fixes.append(f"or end it at a layer with the source's spatial size {_size(spatial_in)}")
        return ProjectionError(
            f"the sizes differ in a way no projection or broadcast fixes ({_size(spatial_in)} -> "
            f"{_size(spatial_out)}): {listed(grown)} grows while {listed(shrunk)} shrinks; a projection only "
            "shrinks, and a broadcast stretches a size-1 dim only where the other dims match",
            ", or ".join(fixes[:-1]) + ", " + fixes[-1] if len(fixes) > 2 else ", ".join(fixes),
            kind="crossed", required=required)

    def _grid_ratios(self) -> list[Any] | None:
        """The target's grid scale over the source's per spatial dim, where both are known; else None."""
        if self.source.scale is None or self.target_scale is None or (
                grid_origin(self.source.scale) != grid_origin(self.target_scale)):
            return None  # (grids of two origins: no step between them is known)
        # (1 where the grids are one: Fraction division costs microseconds, and most skips have none;
        # mostly the very same Fraction, which `is` tells without Fraction.__eq__'s ABC test)
        return [1 if target is source or target == source else target / source
                for source, target in zip(self.source.scale, self.target_scale)]

    def grid_steps(self) -> tuple[int, ...] | None:
        """The integer step between the two grids per spatial dim where both grids are known (1 on a
        concat's own dim and on a broadcast one), whether or not the sizes fit it; None where a grid
        is unknown or the grids are no integer step apart (`steps()` says why)."""
        ratios = self._grid_ratios()
        if ratios is None:
            return None
        kept = {*self.broadcast_axes, self.concat_axis}
        ratios = [1 if index + 1 in kept else r for index, r in enumerate(ratios)]
        if any(r < 1 or getattr(r, "denominator", 1) != 1 for r in ratios):
            return None
        return tuple(int(r) for r in ratios)

    def strided(self) -> bool:
        """True when the grids differ (some step > 1); False for the same grid. Raises ProjectionError."""
        return any(step != 1 for step in self.steps())

    def reason(self) -> str:
        """'64->128 channels, /2': what the projection changes."""
        c_in, c_out = self.channels
        if not self.spatial:
            return f"{c_in}->{c_out} features"
        steps = self.steps()
        return _join(f"{c_in}->{c_out} channels" if c_in != c_out else "",
                     f"/{_short(steps)}" if any(r != 1 for r in steps) else "")

    def conv(self, stride: Any = 1) -> Step:
        c_in, c_out = self.channels
        return Step(StepKind.conv, {"dims": self.dims, "in": c_in, "out": c_out, "stride": stride})

    def norm(self) -> Step:
        return Step(StepKind.norm, {"dims": self.dims, "features": self.channels[1]})

    def linear(self) -> Step:
        c_in, c_out = self.channels
        return Step(StepKind.linear, {"in": c_in, "out": c_out})

    def stride_arg(self) -> int | tuple[int, ...]:
        """The step as a module argument: an int when it is the same in every dim."""
        steps = self.steps()
        return steps[0] if len(set(steps)) == 1 else steps

    def needs_spatial(self, policy: Projection) -> None:
        if not self.spatial:
            raise ProjectionError(f"projection {policy.value!r} needs spatial dims, but these are feature tensors "
                                  f"({_size(self.source.shape)} -> {_size(self.want)})",
                                  "use projection: auto, conv or pad")


Plan = tuple[tuple[Step, ...], str]  # steps and reason


def _auto(m: Mismatch) -> Plan:
    if not m.spatial:
        return (m.linear(),), m.reason()
    return (m.conv(m.stride_arg()), *_norm(m)), m.reason()


def _norm(m: Mismatch) -> tuple[Step, ...]:
    """The norm after a projection's conv; none where it projects a `(C', 1, 1)` vector, 1x1 at every
    input size: a broadcast source (a gate, an added context, 1x1 where the target's map is not), or
    one into a `(C, 1, 1)` target (both after global pools). A BatchNorm there normalises across the
    batch alone (and refuses a batch of 1 in training), and SE blocks project their gates with the
    conv alone. (A size that is 1 only at the declared input size is no such vector; a map projected
    down to a 1x1 target keeps its norm, as a strided shortcut does.)"""
    if m.broadcast_axes or all(type(size) is int and size == 1 for size in (*m.source.shape[1:], *m.want[1:])):
        return ()
    return (m.norm(),)


def _conv(m: Mismatch) -> Plan:
    if not m.spatial:
        return (m.linear(),), m.reason()
    return (m.conv(m.stride_arg()),), m.reason()


def _avgpool(m: Mismatch) -> Plan:
    m.needs_spatial(Projection.avgpool)
    c_in, c_out = m.channels
    steps = [Step(StepKind.avgpool, {"dims": m.dims, "kernel": m.stride_arg()})] if m.strided() else []
    if steps and m.dims == 3:
        try:
            check_avg_pool3d_input(m.sizes[0], m.steps())
        except ShapeError as exc:
            raise ProjectionError(f"projection 'avgpool': {exc}", "use projection: auto or conv (a strided 1x1 conv), "
                                  "which takes any size") from None
    if c_in != c_out:
        steps += [m.conv(), *_norm(m)]
    return tuple(steps), m.reason()


def _pad(m: Mismatch) -> Plan:
    c_in, c_out = m.channels
    steps_per_dim = m.steps() if m.spatial else ()
    what = "channels" if m.spatial else "features"
    if c_out < c_in:
        raise ProjectionError(f"pad cannot reduce {c_in} {what} to {c_out}",
                              "use projection: auto or conv, which learn a 1x1 projection" if m.spatial
                              else "use projection: auto")
    if c_out > c_in and m.gating:
        raise ProjectionError(f"pad would give the gate {c_out - c_in} {what} of zeros, which would zero those "
                              f"{what} of the target it multiplies ({c_in} -> {c_out} {what})",
                              "use projection: auto or conv, or produce the gate with the target's "
                              f"{what} (e.g. the last 1x1 conv of an SE block)")
    steps = []
    if any(r != 1 for r in steps_per_dim):
        steps.append(Step(StepKind.subsample, {"stride": steps_per_dim}))
    if c_out > c_in:
        extra = c_out - c_in
        steps.append(Step(StepKind.pad, {"dim": 1 if m.spatial else -1, "before": extra // 2,
                                         "after": extra - extra // 2}))
    return tuple(steps), m.reason()


def _crop(m: Mismatch) -> Plan:
    m.needs_spatial(Projection.crop)
    (spatial_in, spatial_out), (c_in, c_out) = m.sizes, m.channels
    if any(s < w for s, w in zip(spatial_in, spatial_out)):
        # (where the crop would fit: the target no larger than the source, with even margins)
        required = tuple(guard for a, b in zip(spatial_in, spatial_out)
                         for guard in (requirement("le", b, a), requirement("eq", (a - b) % 2, 0)))
        raise ProjectionError(f"crop cannot enlarge spatial size {_size(spatial_in)} to {_size(spatial_out)}",
                              kind="larger", required=required)
    if _is_stride(m, across_grids=True):
        fix = "use projection: auto or conv (a strided 1x1 conv) or avgpool, which follow the stride"
        unfit: ProjectionError | None = None
        try:
            m.steps()
        except ProjectionError as exc:  # (those follow it only where the sizes fit it)
            fix += f", at sizes that fit it: here the {exc}"
            unfit = exc
        # (kind "misaligned": the hint checks which of those fits, and what else it needs, `unfit` the
        # refusal they would meet here, as the error's cause)
        raise ProjectionError(f"crop would misalign the grids: the target is a strided map "
                              f"({_size(spatial_in)} -> {_size(spatial_out)}, /{_short(m.grid_steps() or m.steps())}), "
                              "and a centre crop of the source does not line up with the positions the stride kept",
                              fix, kind="misaligned") from unfit
    margins = [s - w for s, w in zip(spatial_in, spatial_out)]
    if any(margin % 2 for margin in margins):
        odd = [hint(margin) for margin in margins]
        raise ProjectionError(f"a centre crop of {_size(spatial_in)} to {_size(spatial_out)} would be off-centre: the "
                              f"margins {_size(tuple(odd))} are not even, so the two maps are not centred on each "
                              "other (a layer between them dropped an odd row, e.g. a stride or pool on an odd size)",
                              kind="off-centre", required=tuple(requirement("eq", margin % 2, 0) for margin in margins))
    steps = []
    if hints(spatial_in) != hints(spatial_out):
        # start and size are the declared-size values, for display: the generated code crops to
        # whatever size the target has at run time.
        starts = tuple((hint(s) - hint(w)) // 2 for s, w in zip(spatial_in, spatial_out))
        steps.append(Step(StepKind.crop, {"start": starts, "size": hints(spatial_out)}))
    if c_in != c_out:
        steps.append(m.conv())
    crop = f"crop {_size(spatial_in)}->{_size(spatial_out)}" if steps and steps[0].kind is StepKind.crop else ""
    return tuple(steps), _join(crop, f"{c_in}->{c_out} channels" if c_in != c_out else "")


def _is_stride(m: Mismatch, *, across_grids: bool = False) -> bool:
    """True when the source and target are on grids an integer step apart (> 1).

    With `across_grids`, grids known to be a non-integer ratio apart (or the target's finer) raise
    the ProjectionError that says so, rather than counting as one grid: a crop must not align them.
    """
    try:
        return m.strided()
    except ProjectionError as exc:
        if across_grids and exc.kind in ("ratio", "finer"):
            raise
        # Grids known to be a step apart are strided whatever their sizes: where a layer padded past its
        # stride (17 -> 7 at /3) or an odd size met one, the sizes fit no step, yet the grids differ.
        return any(step != 1 for step in m.grid_steps() or ())


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
    if merge is Merge.mul:
        try:
            check_gate_layouts(source, target)
        except ShapeError as exc:
            raise ProjectionError(str(exc), "permute the gate to the target's layout first (e.g. `op: permute`), "
                                            "or produce it with a 1x1 conv and a pool", kind="layout") from None
    want = wanted_shape(merge, source, target, dim)
    if want is None:
        return ProjectionPlan(policy, (), "shapes match", source)
    if policy is not Projection.none and source.rank != len(want):
        raise ProjectionError(f"their ranks differ ({source.rank} vs {len(want)} dims per sample); "
                              "no projection changes the number of dims",
                              "a skip joins values with the same number of dims: start it from a value with the "
                              "target's, or end it at one with the source's", kind="rank")
    spatial = source.rank >= 2 and target.layout == "channels_first"
    if policy is not Projection.none and not spatial and source.shape[:-1] != want[:-1]:
        raise ProjectionError(f"their leading dims differ ({_size(source.shape[:-1])} vs {_size(want[:-1])}); "
                              "a feature projection only changes the last dim")
    axis = sample_dim(dim, target.rank) if merge is Merge.concat and source.rank == target.rank else None
    broadcast = frozenset() if merge is Merge.concat else frozenset(
        index for index, (w, t) in enumerate(zip(want, target.shape)) if hint(w) != hint(t))
    mismatch = Mismatch(source, want, spatial, target.scale, axis, merge is Merge.mul, broadcast)
    if policy is Projection.auto and merge is not Merge.add and spatial and _is_stride(mismatch):
        steps = mismatch.grid_steps() or mismatch.steps()
        sizes = f"{_size(mismatch.sizes[0])} vs {_size(mismatch.sizes[1])}, /{_short(steps)}"
        raise ProjectionError(f"the source and target are on different spatial scales ({sizes}); `auto` does not "
                              f"{merge.value} across scales silently, since it is usually a skip from the wrong layer",
                              "if it is intended, say how: `projection: conv` (a strided 1x1 conv), `avgpool` or "
                              "`pad` on this skip", kind="scales")
    steps, reason = POLICIES[policy](mismatch)
    layout = "channels_first" if spatial else "features_last"
    if (same_sizes(want, target.shape) and source.dtype == target.dtype and layout == target.layout
            and target.ids_below is None and target.ids_from is None):
        return ProjectionPlan(policy, steps, reason, target)  # (what with_shape would make: one type less)
    return ProjectionPlan(policy, steps, reason, source.with_shape(want, layout, target.scale))




def _keep_smallest(size_in: Any, size_out: Any, step: int) -> None:
    """Record that `step` stays the smallest that maps `size_in` onto `size_out` (a guard on the sizes).

    A step chosen where the grids are unknown (after an adaptive pool) is the smallest that fits, and a
    model built at another size chooses again: where the step fits there but a smaller one would too,
    the two models keep different positions (declared at 31, an adaptive pool's 2 positions are 0 and
    16, built at 17 they are 0 and 9), so that size is not the same model. A target of size 1 keeps
    position 0 whatever the step: there a larger step is the same model.
    """
    if step == 1 or (not isinstance(size_out, SymInt) and size_out == 1):
        return
    smaller = -(-size_in // (step - 1))  # the size one step less gives: larger than the target's
    # (the comparison records the guard, true at the declared size; max(..., 2) lets a symbolic target
    # of size 1 pass at every size)
    _ = (sym_max(smaller, 2) if isinstance(size_out, SymInt) else smaller) > size_out


def _size(dims: tuple[Any, ...]) -> str:
    return "x".join(str(hint(d)) for d in dims) if dims else "()"


def _join(*parts: str) -> str:
    return ", ".join(p for p in parts if p)
