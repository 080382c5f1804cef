"""Projection planning: what each policy plans for each merge and layout, and that the plan is true.

`plan_projection(policy, merge, source, target)` is a pure function; the table below is its
specification for every policy x merge (add, concat, mul) x layout (1-D, 2-D and 3-D maps,
feature vectors and (tokens, features) tensors), on small shapes:

- maps:      source (4, 8, ...) -> target (8, 4, ...): 4->8 channels at /2 (add, mul); concat
             into (6, 4, ...) keeps the source's 4 channels and only downsamples;
- vectors:   source (6,) -> target (10,); concat along the only dim needs nothing;
- tokens:    source (5, 6) -> target (5, 10); concat along the tokens, into (3, 10), projects
             the features.

Each accepted plan is then executed with torch, step by step, from the step table alone
(`STEPS[kind].module` through `step_constructor`, and `step_code` evaluated on a real tensor),
and must give a tensor of `plan.output`'s shape (batch included) with `projection_parameters`
parameters. The README's policy table says the same in prose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resgraph.ops import Merge, TensorType, merge_code, merge_type
from resgraph.projections import (
    POLICIES,
    STEPS,
    ProjectionError,
    ProjectionPlan,
    StepKind,
    describe_steps,
    plan_projection,
    projection_parameters,
    step_code,
    step_constructor,
)
from resgraph.spec import Projection

BATCH = 2


@dataclass(frozen=True)
class Refused:
    """The policy refuses the mismatch with this message (and this hint, when given)."""

    message: str
    hint: str | None = None


@dataclass(frozen=True)
class Layout:
    name: str
    source: TensorType
    target: TensorType  # for add and mul
    concat_target: TensorType
    concat_dim: int


def _map(channels: int, size: int, dims: int) -> TensorType:
    return TensorType((channels, *[size] * dims), "float32", "channels_first")


def f(*shape: int) -> TensorType:
    """A features-last tensor of this per-sample shape."""
    return TensorType(shape, "float32", "features_last")


LAYOUTS = {
    **{f"map{d}d": Layout(f"map{d}d", _map(4, 8, d), _map(8, 4, d), _map(6, 4, d), 1) for d in (1, 2, 3)},
    "vector": Layout("vector", f(6), f(10), f(10), 1),
    "tokens": Layout("tokens", f(5, 6), f(5, 10), f(3, 10), 1),
}

NONE = Refused("shapes differ and projection is 'none'",
               "set `projection: auto` on the skip (or under defaults:) to insert one")


def _needs_spatial(policy: str, sizes: str) -> Refused:
    return Refused(f"projection '{policy}' needs spatial dims, but these are feature tensors ({sizes})",
                   "use projection: auto, conv or pad")


# (policy, merge, layout family) -> (step kinds, reason), or Refused. `{big}`/`{small}`: the map's spatial
# sizes (`8x8`/`4x4` in 2-D). mul is add's plan whenever the shapes do not broadcast, as here.
MAP_PLANS: dict[tuple[str, str], tuple[list[str], str] | Refused] = {
    ("auto", "add"): (["conv", "norm"], "4->8 channels, /2"),
    ("conv", "add"): (["conv"], "4->8 channels, /2"),
    ("avgpool", "add"): (["avgpool", "conv", "norm"], "4->8 channels, /2"),
    ("pad", "add"): (["subsample", "pad"], "4->8 channels, /2"),
    ("crop", "add"): (["crop", "conv"], "crop {big}->{small}, 4->8 channels"),
    ("none", "add"): NONE,
    ("auto", "concat"): (["conv", "norm"], "/2"),
    ("conv", "concat"): (["conv"], "/2"),
    ("avgpool", "concat"): (["avgpool"], "/2"),
    ("pad", "concat"): (["subsample"], "/2"),
    ("crop", "concat"): (["crop"], "crop {big}->{small}"),
    ("none", "concat"): NONE,
}
FEATURE_PLANS: dict[tuple[str, str], tuple[list[str], str] | Refused] = {
    ("auto", "add"): (["linear"], "6->10 features"),
    ("conv", "add"): (["linear"], "6->10 features"),
    ("avgpool", "add"): _needs_spatial("avgpool", "{sizes}"),
    ("pad", "add"): (["pad"], "6->10 features"),
    ("crop", "add"): _needs_spatial("crop", "{sizes}"),
    ("none", "add"): NONE,
}


@dataclass(frozen=True)
class Case:
    policy: Projection
    merge: Merge
    source: TensorType
    target: TensorType
    expected: tuple[list[str], str, TensorType] | Refused
    dim: int = 1

    @property
    def id(self) -> str:
        return f"{self.policy.value}-{self.merge.value}-{'x'.join(map(str, self.source.shape))}" \
               f"-to-{'x'.join(map(str, self.target.shape))}"


def _sizes(t: TensorType) -> str:
    return "x".join(map(str, t.shape))


def _expected(layout: Layout, policy: str, merge: str) -> tuple[list[str], str, TensorType] | Refused:
    spatial = layout.name.startswith("map")
    target = layout.concat_target if merge == "concat" else layout.target
    if merge == "concat" and layout.name == "vector":
        return [], "shapes match", layout.source  # concat along a vector's only dim: any length fits
    if spatial:
        row = MAP_PLANS[(policy, "concat" if merge == "concat" else "add")]
        big, small = _sizes(layout.source)[2:], _sizes(target)[2:]
        output = layout.source.with_shape((4 if merge == "concat" else 8, *target.shape[1:]))
    else:
        row = FEATURE_PLANS[(policy, "add")]
        big = small = ""
        want = (*layout.source.shape[:-1], 10)
        output = layout.source.with_shape(want, "features_last")
    if isinstance(row, Refused):
        sizes = f"{_sizes(layout.source)} -> {'x'.join(map(str, output.shape))}"
        return Refused(row.message.format(sizes=sizes), row.hint)
    kinds, reason = row
    return kinds, reason.format(big=big, small=small), output


MATRIX = [Case(Projection(policy), Merge(merge), layout.source,
               layout.concat_target if merge == "concat" else layout.target,
               _expected(layout, policy, merge), layout.concat_dim)
          for layout in LAYOUTS.values() for policy in ("auto", "conv", "avgpool", "pad", "crop", "none")
          for merge in ("add", "concat", "mul")]

# Beyond the matrix: identity whenever the shapes fit, mul's broadcasting gates, strides that differ per
# dim, crops that are not a ratio, and every refusal that is not a policy's own.


def m(*shape: int) -> TensorType:
    """A channels-first map of this per-sample shape."""
    return TensorType(shape, "float32", "channels_first")


EXTRA = [
    *[Case(Projection(p), Merge.add, m(4, 8, 8), m(4, 8, 8), ([], "shapes match", m(4, 8, 8)))
      for p in ("auto", "conv", "avgpool", "pad", "crop", "none")],
    *[Case(Projection(p), Merge.mul, m(8, 1, 1), m(8, 4, 4), ([], "shapes match", m(8, 1, 1)))
      for p in ("auto", "none")],
    Case(Projection.auto, Merge.concat, m(4, 4, 4), m(6, 4, 4), ([], "shapes match", m(4, 4, 4))),
    Case(Projection.auto, Merge.add, m(4, 8, 8), m(8, 4, 8), (["conv", "norm"], "4->8 channels, /2x1",
                                                                        m(8, 4, 8))),
    Case(Projection.avgpool, Merge.add, m(4, 8, 8), m(4, 4, 8), (["avgpool"], "/2x1", m(4, 4, 8))),
    Case(Projection.avgpool, Merge.add, m(4, 8, 8), m(6, 8, 8), (["conv", "norm"], "4->6 channels",
                                                                           m(6, 8, 8))),
    Case(Projection.pad, Merge.add, m(4, 8, 8), m(7, 8, 8), (["pad"], "4->7 channels", m(7, 8, 8))),
    Case(Projection.crop, Merge.concat, m(4, 9, 11), m(6, 4, 4), (["crop"], "crop 9x11->4x4",
                                                                            m(4, 4, 4))),
    Case(Projection.crop, Merge.add, m(4, 8, 8), m(6, 8, 8), (["conv"], "4->6 channels", m(6, 8, 8))),
    # concat along H: the source keeps its H and must match the target's C and W.
    Case(Projection.auto, Merge.concat, m(4, 8, 8), m(8, 3, 4), (["conv", "norm"], "4->8 channels, /1x2",
                                                                 m(8, 8, 4)), dim=2),
    Case(Projection.auto, Merge.add, m(4, 8, 8), f(8),
         Refused("their ranks differ (3 vs 1 dims per sample); no projection changes the number of dims",
                 "merge tensors of the same kind, e.g. add a Flatten before the target")),
    Case(Projection.none, Merge.add, m(4, 8, 8), f(8), NONE),
    Case(Projection.auto, Merge.add, f(5, 6),
         f(3, 10),
         Refused("their leading dims differ (5 vs 3); a feature projection only changes the last dim")),
    Case(Projection.auto, Merge.add, m(4, 4, 4), m(8, 8, 8),
         Refused("the target is larger (4x4 -> 8x8); projections only downsample",
                 "upsample the source first (e.g. an Upsample or ConvTranspose2d layer)")),
    Case(Projection.auto, Merge.add, m(4, 8, 8), m(8, 3, 3),
         Refused("spatial size 8x8 -> 3x3 is not an integer stride")),
    Case(Projection.pad, Merge.add, m(8, 8, 8), m(4, 4, 4),
         Refused("pad cannot reduce 8 channels to 4", "use projection: auto or conv, which learn a 1x1 projection")),
    Case(Projection.pad, Merge.add, f(10), f(6),
         Refused("pad cannot reduce 10 features to 6", "use projection: auto")),
    Case(Projection.crop, Merge.add, m(4, 4, 4), m(4, 8, 8),
         Refused("crop cannot enlarge spatial size 4x4 to 8x8")),
]
CASES = MATRIX + EXTRA
ACCEPTED = [c for c in CASES if not isinstance(c.expected, Refused)]
REFUSED = [c for c in CASES if isinstance(c.expected, Refused)]


def plan_of(case: Case) -> ProjectionPlan:
    return plan_projection(case.policy, case.merge, case.source, case.target, case.dim)


@pytest.mark.parametrize("case", ACCEPTED, ids=[c.id for c in ACCEPTED])
def test_the_plan_has_the_specified_steps_reason_and_output(case: Case) -> None:
    assert not isinstance(case.expected, Refused)
    kinds, reason, output = case.expected
    plan = plan_of(case)
    assert [step.kind.value for step in plan.steps] == kinds
    assert plan.reason == reason and plan.output == output and plan.policy is case.policy
    assert plan.is_identity == (not kinds)
    # Code steps run first, on the source; module steps form one nn.Sequential after them.
    assert plan.steps == plan.code_steps + plan.module_steps


@pytest.mark.parametrize("case", REFUSED, ids=[c.id for c in REFUSED])
def test_a_refusal_says_why_and_how_to_fix_it(case: Case) -> None:
    assert isinstance(case.expected, Refused)
    with pytest.raises(ProjectionError) as caught:
        plan_of(case)
    assert str(caught.value) == case.expected.message and caught.value.hint == case.expected.hint
    assert caught.value.non_integer == ("integer stride" in case.expected.message)


def run_plan(plan: ProjectionPlan, x: torch.Tensor) -> tuple[torch.Tensor, list[nn.Module]]:
    """Apply a plan's steps to `x` as lowering and codegen do, reading only the step table."""
    modules: list[nn.Module] = []
    for step in plan.steps:
        if STEPS[step.kind].code is not None:
            x = eval(step_code(step, "x", x.dim()), {"torch": torch}, {"x": x})  # noqa: S307 (our own code)
        else:
            name, kwargs = step_constructor(step)
            module = getattr(nn, name)(**kwargs)
            modules.append(module)
            x = module(x)
    return x, modules


@pytest.mark.parametrize("case", ACCEPTED, ids=[c.id for c in ACCEPTED])
def test_executing_the_plan_gives_its_output_type_and_parameter_count(case: Case) -> None:
    plan = plan_of(case)
    with torch.no_grad():
        projected, modules = run_plan(plan, torch.randn(BATCH, *case.source.shape))
        assert tuple(projected.shape) == (BATCH, *plan.output.shape)
        assert projection_parameters(plan) == sum(p.numel() for m in modules for p in m.parameters())
        # ...and the projected source merges with the target as the merge's type says.
        target = torch.randn(BATCH, *case.target.shape)
        operands = ["s", "t"] if case.merge is Merge.concat else ["t", "s"]
        merged = eval(merge_code(case.merge, operands, case.dim), {"torch": torch},  # noqa: S307
                      {"s": projected, "t": target})
    assert tuple(merged.shape) == (BATCH, *merge_type(case.merge, [case.target, plan.output], case.dim).shape)


def test_the_matrix_covers_every_policy_merge_and_layout() -> None:
    seen = {(c.policy, c.merge, name) for c in MATRIX for name, layout in LAYOUTS.items() if c.source == layout.source}
    assert seen == {(p, m, name) for p in Projection for m in Merge for name in LAYOUTS}
    assert set(POLICIES) == set(Projection)


def test_every_step_kind_is_planned_and_executed_by_some_case() -> None:
    # Adding a StepKind without a case here fails this test: give it a row in MAP_PLANS or EXTRA.
    planned = {step.kind for case in ACCEPTED for step in plan_of(case).steps}
    assert planned == set(StepKind)


@pytest.mark.parametrize("kind", list(StepKind))
def test_a_step_is_either_code_or_a_module(kind: StepKind) -> None:
    rule = STEPS[kind]
    assert (rule.code is None) != (rule.module is None)
    if rule.code is not None:
        assert rule.parameters({}) == 0  # code steps own nothing


# --- what the steps compute, against torch written by hand -------------------------------------------------

def test_pad_subsamples_by_the_stride_and_zero_pads_channels_evenly() -> None:
    plan = plan_projection(Projection.pad, Merge.add, TensorType((4, 8, 8)), TensorType((9, 4, 4)))
    x = torch.randn(BATCH, 4, 8, 8)
    projected, modules = run_plan(plan, x)
    assert modules == []
    assert torch.equal(projected, F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 2, 3)))


def test_pad_on_features_pads_the_last_dim() -> None:
    plan = plan_projection(Projection.pad, Merge.add, f(5, 6),
                           f(5, 10))
    x = torch.randn(BATCH, 5, 6)
    assert torch.equal(run_plan(plan, x)[0], F.pad(x, (2, 2)))


def test_crop_takes_the_center() -> None:
    plan = plan_projection(Projection.crop, Merge.concat, TensorType((4, 9, 11)), TensorType((6, 4, 4)))
    x = torch.randn(BATCH, 4, 9, 11)
    assert torch.equal(run_plan(plan, x)[0], x[:, :, 2:6, 3:7])


def test_avgpool_averages_each_window_and_conv_is_a_bias_free_strided_1x1() -> None:
    plan = plan_projection(Projection.avgpool, Merge.add, TensorType((4, 8, 8)), TensorType((8, 4, 4)))
    x = torch.randn(BATCH, 4, 8, 8)
    pool, conv, norm = run_plan(plan, x)[1]
    with torch.no_grad():
        assert torch.equal(pool(x), F.avg_pool2d(x, 2))  # 2x2 windows, none of them partial
    assert conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.bias is None
    assert conv.in_channels == 4 and conv.out_channels == 8 == norm.num_features
    auto = plan_projection(Projection.auto, Merge.add, TensorType((4, 8, 8)), TensorType((8, 4, 8)))
    conv, _ = run_plan(auto, x)[1]
    assert conv.stride == (2, 1) and conv.bias is None and conv.in_channels == 4 and conv.out_channels == 8


@pytest.mark.parametrize(("policy", "target", "text"), [
    ("auto", (8, 4, 4), "Conv2d 1x1 /2 + BatchNorm2d"),
    ("conv", (8, 4, 4), "Conv2d 1x1 /2"),
    ("avgpool", (8, 4, 4), "AvgPool2d /2 + Conv2d 1x1 + BatchNorm2d"),
    ("pad", (8, 4, 4), "subsample /2 + zero-pad channels"),
    ("crop", (8, 4, 4), "center-crop to 4x4 + Conv2d 1x1"),
    ("auto", (4, 8, 8), "identity"),
    ("auto", (8, 4, 8), "Conv2d 1x1 /2x1 + BatchNorm2d"),
])
def test_the_summary_names_the_steps(policy: str, target: tuple[int, ...], text: str) -> None:
    plan = plan_projection(Projection(policy), Merge.add, TensorType((4, 8, 8)), TensorType(target))
    assert describe_steps(plan.steps) == text


def test_feature_steps_are_named_too() -> None:
    source, target = f(6), f(10)
    assert describe_steps(plan_projection(Projection.auto, Merge.add, source, target).steps) == "Linear"
    assert describe_steps(plan_projection(Projection.pad, Merge.add, source, target).steps) == "zero-pad features"


def test_a_larger_case_counts_parameters_like_torch() -> None:
    # 3-D, stride 4, 16 -> 32 channels: the formula and torch agree beyond the tiny shapes above.
    plan = plan_projection(Projection.auto, Merge.add, TensorType((16, 8, 8, 8)), TensorType((32, 2, 2, 2)))
    _, modules = run_plan(plan, torch.randn(1, 16, 8, 8, 8))
    assert projection_parameters(plan) == 16 * 32 + 2 * 32 == sum(p.numel() for m in modules for p in m.parameters())
    assert math.prod(plan.output.shape) == 32 * 8
