"""Projection planning: what each policy plans for each merge and layout, and that the plan is true.

`plan_projection(policy, merge, source, target)` is a pure function; the tables below are its
specification for every policy x merge (add, concat, mul) x layout, on small shapes:

- strided maps (1-D, 2-D, 3-D): source (4, 8, ...) on the input's grid -> target (8, 4, ...) on a
  grid twice as coarse (`TensorType.scale` 1 -> 2, as after a stride-2 conv): 4->8 channels at
  /2 (add, mul); concat into (6, 4, ...) keeps the source's 4 channels and only downsamples.
  `auto` refuses a concat or a non-broadcasting gate across grids, and `crop` any strided pair;
- maps on one grid (2-D): the same sizes, both at scale 1 (an unpadded 5x5 conv shrank the
  target): only `crop` reconciles them, every other policy names the cause ("grid");
- vectors:   source (6,) -> target (10,); concat along the only dim needs nothing;
- tokens:    source (5, 6) -> target (5, 10); concat along the tokens, into (3, 10), projects
  the features.

A projection's stride is the step between the two maps' grids; where a grid is unknown (a type
without `scale`) it is the smallest step whose output size, ceil(size / step), is the target's.
Every refusal carries its `kind` (what the shapes stage's hint is chosen by) and `required`, the
size conditions under which the skip would fit.

Each accepted plan is then executed with torch, step by step, from the step table alone
(`STEPS[kind].module` through `step_constructor`, and `step_code` evaluated on real tensors with
`codegen.HELPERS` in scope), and must give a tensor of `plan.output`'s shape (batch included)
with `projection_parameters` parameters. The README's policy table says the same in prose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resgraph.codegen import HELPERS
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
from resgraph.symbolic import SymInt, evaluate

BATCH = 2


@dataclass(frozen=True)
class Refused:
    """The policy refuses the mismatch with this message, hint, kind and required conditions (as text)."""

    message: str
    hint: str | None = None
    kind: str | None = None
    required: tuple[str, ...] = ()


@dataclass(frozen=True)
class Layout:
    name: str
    source: TensorType
    target: TensorType  # for add and mul
    concat_target: TensorType
    concat_dim: int


def scale(*steps: int | Fraction) -> tuple[Fraction, ...]:
    return tuple(Fraction(s) for s in steps)


def _map(channels: int, size: int, dims: int, step: int | None) -> TensorType:
    return TensorType((channels, *[size] * dims), "float32", "channels_first",
                      None if step is None else scale(*[step] * dims))


def m(*shape: int, at: tuple[Fraction, ...] | None = None) -> TensorType:
    """A channels-first map of this per-sample shape, on the grid `at` (None: unknown)."""
    return TensorType(shape, "float32", "channels_first", at)


def f(*shape: int) -> TensorType:
    """A features-last tensor of this per-sample shape."""
    return TensorType(shape, "float32", "features_last")


LAYOUTS = {
    **{f"map{d}d": Layout(f"map{d}d", _map(4, 8, d, 1), _map(8, 4, d, 2), _map(6, 4, d, 2), 1) for d in (1, 2, 3)},
    "grid2d": Layout("grid2d", _map(4, 8, 2, 1), _map(8, 4, 2, 1), _map(6, 4, 2, 1), 1),
    "vector": Layout("vector", f(6), f(10), f(10), 1),
    "tokens": Layout("tokens", f(5, 6), f(5, 10), f(3, 10), 1),
}

NONE = Refused("shapes differ and projection is 'none'",
               "set `projection: auto` on the skip (or under defaults:) to insert one")
MISALIGNED = Refused("crop would misalign the grids: the target is a strided map ({big} -> {small}, /2), and a "
                     "centre crop of the source does not line up with the positions the stride kept",
                     "use projection: auto or conv (a strided 1x1 conv) or avgpool, which follow the stride",
                     "misaligned")


def _across_scales(merge: str) -> Refused:
    return Refused(f"the source and target are on different spatial scales ({{big}} vs {{small}}, /2); `auto` does "
                   f"not {merge} across scales silently, since it is usually a skip from the wrong layer",
                   "if it is intended, say how: `projection: conv` (a strided 1x1 conv), `avgpool` or `pad` on "
                   "this skip", "scales")


ONE_GRID = Refused("the spatial size shrinks on one grid (no net stride between them): {big} -> {small}",
                   None, "grid", ("8 == 4", "8 == 4"))  # ceil(8 / 1) == 4, per dim: never


def _zero_gate(added: int, before: int, after: int, what: str) -> Refused:
    return Refused(f"pad would give the gate {added} {what} of zeros, which would zero those {what} of the target it "
                   f"multiplies ({before} -> {after} {what})",
                   f"use projection: auto or conv, or produce the gate with the target's {what} (e.g. the last 1x1 "
                   "conv of an SE block)")


def _needs_spatial(policy: str, sizes: str) -> Refused:
    return Refused(f"projection '{policy}' needs spatial dims, but these are feature tensors ({sizes})",
                   "use projection: auto, conv or pad")


# (policy, merge) -> (step kinds, reason), or Refused. `{big}`/`{small}`: the map's spatial sizes
# (`8x8`/`4x4` in 2-D). A mul here never broadcasts ((4, 8, 8) into (8, 4, 4)), so it projects as add does,
# except that pad refuses to give a gate channels of zeros.
STRIDED_PLANS: dict[tuple[str, str], tuple[list[str], str] | Refused] = {
    ("auto", "add"): (["conv", "norm"], "4->8 channels, /2"),
    ("conv", "add"): (["conv"], "4->8 channels, /2"),
    ("avgpool", "add"): (["avgpool", "conv", "norm"], "4->8 channels, /2"),
    ("pad", "add"): (["subsample", "pad"], "4->8 channels, /2"),
    ("crop", "add"): MISALIGNED,
    ("none", "add"): NONE,
    ("auto", "concat"): _across_scales("concat"),
    ("conv", "concat"): (["conv"], "/2"),
    ("avgpool", "concat"): (["avgpool"], "/2"),
    ("pad", "concat"): (["subsample"], "/2"),
    ("crop", "concat"): MISALIGNED,
    ("none", "concat"): NONE,
    ("auto", "mul"): _across_scales("mul"),
    ("conv", "mul"): (["conv"], "4->8 channels, /2"),
    ("avgpool", "mul"): (["avgpool", "conv", "norm"], "4->8 channels, /2"),
    ("pad", "mul"): _zero_gate(4, 4, 8, "channels"),  # zeros would zero the target's channels they gate
    ("crop", "mul"): MISALIGNED,
    ("none", "mul"): NONE,
}
ONE_GRID_PLANS: dict[tuple[str, str], tuple[list[str], str] | Refused] = {
    **{(policy, merge): ONE_GRID for policy in ("auto", "conv", "avgpool", "pad")
       for merge in ("add", "concat", "mul")},
    ("crop", "add"): (["crop", "conv"], "crop {big}->{small}, 4->8 channels"),
    ("crop", "concat"): (["crop"], "crop {big}->{small}"),
    ("crop", "mul"): (["crop", "conv"], "crop {big}->{small}, 4->8 channels"),
    **{("none", merge): NONE for merge in ("add", "concat", "mul")},
}
FEATURE_PLANS: dict[str, tuple[list[str], str] | Refused] = {  # every merge: as add (nothing broadcasts here)
    "auto": (["linear"], "6->10 features"),
    "conv": (["linear"], "6->10 features"),
    "avgpool": _needs_spatial("avgpool", "{sizes}"),
    "pad": (["pad"], "6->10 features"),
    "crop": _needs_spatial("crop", "{sizes}"),
    "none": NONE,
}


@dataclass(frozen=True)
class Case:
    policy: Projection
    merge: Merge
    source: TensorType
    target: TensorType
    expected: tuple[list[str], str, TensorType] | Refused
    dim: int = 1
    label: str = ""

    @property
    def id(self) -> str:
        return f"{self.policy.value}-{self.merge.value}-{_sizes(self.source)}-to-{_sizes(self.target)}" + (
            f"-{self.label}" if self.label else "")


def _sizes(t: TensorType) -> str:
    return "x".join(map(str, t.shape))


def _expected(layout: Layout, policy: str, merge: str) -> tuple[list[str], str, TensorType] | Refused:
    target = layout.concat_target if merge == "concat" else layout.target
    if merge == "concat" and layout.name == "vector":
        return [], "shapes match", layout.source  # concat along a vector's only dim: any length fits
    if layout.name.startswith(("map", "grid")):
        row = (STRIDED_PLANS if layout.name.startswith("map") else ONE_GRID_PLANS)[(policy, merge)]
        big, small = _sizes(layout.source)[2:], _sizes(target)[2:]
        # The projected source is on the target's grid.
        output = layout.source.with_shape((4 if merge == "concat" else 8, *target.shape[1:]), None, target.scale)
    else:
        row = _zero_gate(4, 6, 10, "features") if (policy, merge) == ("pad", "mul") else FEATURE_PLANS[policy]
        big = small = ""
        output = layout.source.with_shape((*layout.source.shape[:-1], 10), "features_last")
    if isinstance(row, Refused):
        sizes = f"{_sizes(layout.source)} -> {_sizes(output)}"
        required = row.required[:layout.source.rank - 1]
        return Refused(row.message.format(sizes=sizes, big=big, small=small), row.hint, row.kind, required)
    kinds, reason = row
    return kinds, reason.format(big=big, small=small), output


MATRIX = [Case(Projection(policy), Merge(merge), layout.source,
               layout.concat_target if merge == "concat" else layout.target,
               _expected(layout, policy, merge), layout.concat_dim, layout.name)
          for layout in LAYOUTS.values() for policy in ("auto", "conv", "avgpool", "pad", "crop", "none")
          for merge in ("add", "concat", "mul")]

# Beyond the matrix: identity whenever the shapes fit, mul's broadcasting gates, strides that differ per
# dim, steps from known grids and from sizes alone, crops, and every refusal kind.
AT1, AT2 = scale(1, 1), scale(2, 2)

EXTRA = [
    *[Case(Projection(p), Merge.add, m(4, 8, 8, at=AT1), m(4, 8, 8, at=AT1), ([], "shapes match", m(4, 8, 8, at=AT1)))
      for p in ("auto", "conv", "avgpool", "pad", "crop", "none")],
    # A (C, 1, 1) gate broadcasts, even into a map on another grid: nothing to project.
    *[Case(Projection(p), Merge.mul, m(8, 1, 1), m(8, 4, 4, at=AT2), ([], "shapes match", m(8, 1, 1)))
      for p in ("auto", "none")],
    Case(Projection.auto, Merge.concat, m(4, 4, 4, at=AT2), m(6, 4, 4, at=AT2), ([], "shapes match",
                                                                                 m(4, 4, 4, at=AT2))),
    Case(Projection.auto, Merge.add, m(4, 8, 8, at=AT1), m(8, 4, 8, at=scale(2, 1)),
         (["conv", "norm"], "4->8 channels, /2x1", m(8, 4, 8, at=scale(2, 1)))),
    Case(Projection.avgpool, Merge.add, m(4, 8, 8, at=AT1), m(4, 4, 8, at=scale(2, 1)),
         (["avgpool"], "/2x1", m(4, 4, 8, at=scale(2, 1)))),
    Case(Projection.avgpool, Merge.add, m(4, 8, 8, at=AT1), m(6, 8, 8, at=AT1), (["conv", "norm"], "4->6 channels",
                                                                                 m(6, 8, 8, at=AT1))),
    Case(Projection.pad, Merge.add, m(4, 8, 8, at=AT1), m(7, 8, 8, at=AT1), (["pad"], "4->7 channels",
                                                                             m(7, 8, 8, at=AT1))),
    # crop on one grid with even margins (4 and 6), different per dim.
    Case(Projection.crop, Merge.concat, m(4, 9, 11, at=AT1), m(6, 5, 5, at=AT1),
         (["crop"], "crop 9x11->5x5", m(4, 5, 5, at=AT1))),
    Case(Projection.crop, Merge.add, m(4, 8, 8, at=AT1), m(6, 8, 8, at=AT1), (["conv"], "4->6 channels",
                                                                              m(6, 8, 8, at=AT1))),
    # Known grids set the step: 9 -> 3 through two stride-2 layers is /4 (sizes alone would say /3).
    Case(Projection.pad, Merge.add, m(4, 9, 9, at=AT1), m(4, 3, 3, at=scale(4, 4)),
         (["subsample"], "/4", m(4, 3, 3, at=scale(4, 4))), label="known-grids"),
    Case(Projection.pad, Merge.add, m(4, 9, 9), m(4, 3, 3), (["subsample"], "/3", m(4, 3, 3)), label="unknown-grids"),
    # With one grid unknown, the sizes decide too.
    Case(Projection.pad, Merge.add, m(4, 9, 9, at=AT1), m(4, 3, 3), (["subsample"], "/3", m(4, 3, 3)),
         label="target-grid-unknown"),
    # Unknown grids: 8 -> 3 is /3 (ceil(8 / 3) = 3, as a stride-3 layer with padding gives); 75 -> 38 is /2.
    Case(Projection.auto, Merge.add, m(4, 8, 8), m(8, 3, 3), (["conv", "norm"], "4->8 channels, /3", m(8, 3, 3))),
    Case(Projection.conv, Merge.add, m(4, 75, 75, at=AT1), m(8, 38, 38, at=AT2),
         (["conv"], "4->8 channels, /2", m(8, 38, 38, at=AT2))),
    # concat along H: the source keeps its H and must match the target's C and W; `conv` says how.
    Case(Projection.conv, Merge.concat, m(4, 8, 8), m(8, 3, 4), (["conv"], "4->8 channels, /1x2", m(8, 8, 4)), dim=2),
    Case(Projection.auto, Merge.concat, m(4, 8, 8), m(8, 3, 4),
         Refused("the source and target are on different spatial scales (8x8 vs 8x4, /1x2); `auto` does not concat "
                 "across scales silently, since it is usually a skip from the wrong layer",
                 "if it is intended, say how: `projection: conv` (a strided 1x1 conv), `avgpool` or `pad` on this "
                 "skip", "scales"), dim=2),
    Case(Projection.auto, Merge.add, m(4, 8, 8), f(8),
         Refused("their ranks differ (3 vs 1 dims per sample); no projection changes the number of dims",
                 "a skip joins values with the same number of dims: start it from a value with the target's, or "
                 "end it at one with the source's", "rank")),
    Case(Projection.none, Merge.add, m(4, 8, 8), f(8), NONE),
    Case(Projection.auto, Merge.add, f(5, 6), f(3, 10),
         Refused("their leading dims differ (5 vs 3); a feature projection only changes the last dim")),
    # "larger": a target larger on unknown grids, or grown on one grid; pad reports it before the channels.
    Case(Projection.auto, Merge.add, m(4, 4, 4), m(8, 8, 8),
         Refused("the target is larger (4x4 -> 8x8); projections only downsample", None, "larger")),
    Case(Projection.auto, Merge.add, m(4, 4, 4, at=AT1), m(8, 6, 6, at=AT1),
         Refused("the spatial size grows on one grid (no net stride between them): 4x4 -> 6x6", None, "larger",
                 ("4 == 6", "4 == 6"))),
    Case(Projection.pad, Merge.add, m(8, 4, 4), m(4, 8, 8),
         Refused("the target is larger (4x4 -> 8x8); projections only downsample", None, "larger")),
    Case(Projection.crop, Merge.add, m(4, 4, 4, at=AT1), m(4, 8, 8, at=AT1),
         Refused("crop cannot enlarge spatial size 4x4 to 8x8", None, "larger",
                 ("8 <= 4", "0 == 0", "8 <= 4", "0 == 0"))),  # (where it fits: no larger, even margins)
    # "finer": the target is upsampled relative to the source; "ratio": the grids are 3/2 apart.
    Case(Projection.auto, Merge.add, m(4, 4, 4, at=AT1), m(8, 8, 8, at=scale(Fraction(1, 2), Fraction(1, 2))),
         Refused("the target is on a finer grid (upsampled x2 relative to the source; 4x4 -> 8x8); projections only "
                 "downsample", None, "finer")),
    Case(Projection.auto, Merge.add, m(4, 12, 12, at=AT2), m(8, 8, 8, at=scale(3, 3)),
         Refused("the grids differ by a ratio of 3/2, not an integer step (12x12 -> 8x8)", None, "ratio")),
    # "stride": the grids are /2 apart but 9 -> 4 is not what a /2 projection gives (it gives 5);
    # on unknown grids, the smallest step that could (3) gives 3.
    Case(Projection.auto, Merge.add, m(4, 9, 9, at=AT1), m(8, 4, 4, at=AT2),
         Refused("spatial size 9x9 -> 4x4 does not match a stride of 2 (which gives 5x5)", None, "stride",
                 ("5 == 4", "5 == 4"))),
    Case(Projection.auto, Merge.add, m(4, 9, 9), m(8, 4, 4),
         Refused("spatial size 9x9 -> 4x4 does not match a stride of 3 (which gives 3x3)", None, "stride",
                 ("3 == 4", "3 == 4"))),
    # "off-centre": a crop on one grid whose margins (5 and 7) are odd.
    Case(Projection.crop, Merge.concat, m(4, 9, 11, at=AT1), m(6, 4, 4, at=AT1),
         Refused("a centre crop of 9x11 to 4x4 would be off-centre: the margins 5x7 are not even, so the two maps "
                 "are not centred on each other (a layer between them dropped an odd row, e.g. a stride or pool on "
                 "an odd size)", None, "off-centre", ("1 == 0", "1 == 0"))),
    # A features-last gate into a channels-first map would scale its width: refused whatever the policy.
    *[Case(Projection(p), Merge.mul, f(1, 1, 8), m(8, 4, 4, at=AT1),
           Refused("the gate (1, 1, 8) is features-last but the target (8, 4, 4) is channels-first: broadcasting "
                   "would pair its features with the target's last dim",
                   "permute the gate to the target's layout first (e.g. `op: permute`), or produce it with a 1x1 "
                   "conv and a pool", "layout")) for p in ("auto", "none")],
    Case(Projection.pad, Merge.add, m(8, 8, 8, at=AT1), m(4, 4, 4, at=AT2),
         Refused("pad cannot reduce 8 channels to 4", "use projection: auto or conv, which learn a 1x1 projection")),
    Case(Projection.pad, Merge.add, f(10), f(6),
         Refused("pad cannot reduce 10 features to 6", "use projection: auto")),
]
CASES = MATRIX + EXTRA
ACCEPTED = [c for c in CASES if not isinstance(c.expected, Refused)]
REFUSED = [c for c in CASES if isinstance(c.expected, Refused)]
KINDS = ("grid", "stride", "larger", "finer", "ratio", "off-centre", "misaligned", "scales", "rank", "layout", None)


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
    error = caught.value
    assert (str(error), error.hint, error.kind) == (case.expected.message, case.expected.hint, case.expected.kind)
    assert tuple(map(str, error.required)) == case.expected.required


def test_every_refusal_kind_is_specified_by_some_case() -> None:
    assert {c.expected.kind for c in REFUSED if isinstance(c.expected, Refused)} == set(KINDS)


def helpers() -> dict[str, Any]:
    """What generated code runs with: torch and the helper functions codegen may call."""
    namespace: dict[str, Any] = {"torch": torch}
    for source in HELPERS.values():
        exec(compile(source, "<helper>", "exec"), namespace)  # noqa: S102 (resgraph's own helper source)
    return namespace


def run_plan(plan: ProjectionPlan, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, list[nn.Module]]:
    """Apply a plan's steps to `x`, merging into `target`, as lowering and codegen do, reading only the step table."""
    modules: list[nn.Module] = []
    for step in plan.steps:
        if STEPS[step.kind].code is not None:
            x = eval(step_code(step, "x", x.dim(), "t"), helpers(), {"x": x, "t": target})  # noqa: S307 (our own code)
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
        target = torch.randn(BATCH, *case.target.shape)
        projected, modules = run_plan(plan, torch.randn(BATCH, *case.source.shape), target)
        assert tuple(projected.shape) == (BATCH, *plan.output.shape)
        assert projection_parameters(plan) == sum(p.numel() for m in modules for p in m.parameters())
        # ...and the projected source merges with the target as the merge's type says.
        operands = ["s", "t"] if case.merge is Merge.concat else ["t", "s"]
        merged = eval(merge_code(case.merge, operands, case.dim), {"torch": torch},  # noqa: S307
                      {"s": projected, "t": target})
    assert tuple(merged.shape) == (BATCH, *merge_type(case.merge, [case.target, plan.output], case.dim).shape)


def test_the_matrix_covers_every_policy_merge_and_layout() -> None:
    seen = {(c.policy, c.merge, c.label) for c in MATRIX}
    assert seen == {(p, m, name) for p in Projection for m in Merge for name in LAYOUTS}
    assert set(POLICIES) == set(Projection)


def test_every_step_kind_is_planned_and_executed_by_some_case() -> None:
    # Adding a StepKind without a case here fails this test: give it a row in a plan table or EXTRA.
    planned = {step.kind for case in ACCEPTED for step in plan_of(case).steps}
    assert planned == set(StepKind)


@pytest.mark.parametrize("kind", list(StepKind))
def test_a_step_is_either_code_or_a_module(kind: StepKind) -> None:
    rule = STEPS[kind]
    assert (rule.code is None) != (rule.module is None)
    if rule.code is not None:
        assert rule.parameters({}) == 0  # code steps own nothing


# --- the step between grids ----------------------------------------------------------------------------------

def test_a_known_grid_steps_with_the_layers_it_shortcuts() -> None:
    # Two 1x1 stride-2 pools keep rows 0, 2, 4, 6, 8 of 9, then 0, 4, 8: a step of 4. Sizes alone (9 -> 3)
    # would say 3 and keep rows 0, 3, 6, which are not the ones the target holds.
    x = torch.randn(BATCH, 4, 9, 9)
    target = F.max_pool2d(F.max_pool2d(x, 1, stride=2), 1, stride=2)  # (N, 4, 3, 3)
    known = plan_projection(Projection.pad, Merge.add, m(4, 9, 9, at=AT1), m(4, 3, 3, at=scale(4, 4)))
    unknown = plan_projection(Projection.pad, Merge.add, m(4, 9, 9), m(4, 3, 3))
    assert torch.equal(run_plan(known, x, target)[0], target)
    assert not torch.equal(run_plan(unknown, x, target)[0], target)
    # The strided 1x1 conv and the pool follow the same step.
    auto = plan_projection(Projection.auto, Merge.add, m(4, 9, 9, at=AT1), m(8, 3, 3, at=scale(4, 4)))
    pool = plan_projection(Projection.avgpool, Merge.add, m(4, 9, 9, at=AT1), m(4, 3, 3, at=scale(4, 4)))
    assert auto.steps[0].args["stride"] == 4 and pool.steps[0].args["kernel"] == 4


@pytest.mark.parametrize("size", [7, 8, 9, 75])
def test_every_policy_fits_a_stride_2_path_at_odd_and_even_sizes(size: int) -> None:
    # A 3x3 stride-2 conv with padding 1 gives ceil(size / 2): each strided policy gives the same.
    x = torch.randn(1, 4, size, size)
    target = nn.Conv2d(4, 8, 3, stride=2, padding=1)(x).detach()
    for policy in (Projection.auto, Projection.conv, Projection.avgpool, Projection.pad):
        plan = plan_projection(policy, Merge.add, m(4, size, size, at=AT1), m(8, *target.shape[2:], at=AT2))
        with torch.no_grad():
            assert run_plan(plan, x, target)[0].shape == target.shape, policy


def test_required_states_the_sizes_at_which_a_strided_skip_fits() -> None:
    # A 2x2 max pool floors odd sizes: (9, 9) -> (4, 4), where a /2 projection gives 5. It fits where H and W
    # are even, which `required` says as conditions on the symbolic sizes.
    h, w = SymInt.symbol("x.H", 9), SymInt.symbol("x.W", 9)
    with pytest.raises(ProjectionError) as caught:
        plan_projection(Projection.auto, Merge.add, m(4, h, w, at=AT1), m(8, h // 2, w // 2, at=AT2))
    assert caught.value.kind == "stride" and len(caught.value.required) == 2  # one condition per dim
    sizes = numpy.arange(1, 21)
    holds = [evaluate(g.left, {"x.H": sizes, "x.W": sizes}) == evaluate(g.right, {"x.H": sizes, "x.W": sizes})
             for g in caught.value.required]
    assert [int(n) for n in sizes[holds[0] & holds[1]]] == list(range(2, 21, 2))


def test_required_states_the_sizes_at_which_a_crop_is_centred() -> None:
    # pool /2, upsample x2 and an unpadded 3x3 conv: 2 * (H // 2) - 2 on the input's grid. The margin is
    # H % 2 + 2: even (centred) exactly at even H.
    h = SymInt.symbol("x.H", 9)
    with pytest.raises(ProjectionError) as caught:
        plan_projection(Projection.crop, Merge.add, m(4, h, 8, at=AT1), m(4, h // 2 * 2 - 2, 6, at=AT1))
    assert caught.value.kind == "off-centre"
    sizes = numpy.arange(1, 13)
    holds = numpy.ones(len(sizes), dtype=bool)
    for guard in caught.value.required:
        holds &= evaluate(guard.left, {"x.H": sizes}) == evaluate(guard.right, {"x.H": sizes})
    assert [int(n) for n in sizes[holds]] == [2, 4, 6, 8, 10, 12]


def test_required_is_never_met_when_one_grid_shrinks() -> None:
    h = SymInt.symbol("x.H", 8)
    with pytest.raises(ProjectionError) as caught:
        plan_projection(Projection.auto, Merge.add, m(4, h, at=scale(1)), m(8, h - 2, at=scale(1)))
    (guard,) = caught.value.required  # ceil(H / 1) == H - 2
    sizes = {"x.H": numpy.arange(1, 100)}
    assert caught.value.kind == "grid" and guard.op == "eq"
    assert not (evaluate(guard.left, sizes) == evaluate(guard.right, sizes)).any()


def test_a_concat_along_a_spatial_dim_steps_only_the_other_dims_on_known_grids() -> None:
    plan = plan_projection(Projection.conv, Merge.concat, m(4, 8, 8, at=AT1), m(8, 3, 4, at=AT2), 2)
    assert [s.kind.value for s in plan.steps] == ["conv"] and plan.reason == "4->8 channels, /1x2"
    assert plan.output.shape == (8, 8, 4)


# --- what the steps compute, against torch written by hand -------------------------------------------------

def test_pad_subsamples_by_the_stride_and_zero_pads_channels_evenly() -> None:
    plan = plan_projection(Projection.pad, Merge.add, m(4, 8, 8, at=AT1), m(9, 4, 4, at=AT2))
    x = torch.randn(BATCH, 4, 8, 8)
    projected, modules = run_plan(plan, x, torch.randn(BATCH, 9, 4, 4))
    assert modules == []
    assert torch.equal(projected, F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 2, 3)))


def test_pad_on_features_pads_the_last_dim() -> None:
    plan = plan_projection(Projection.pad, Merge.add, f(5, 6), f(5, 10))
    x = torch.randn(BATCH, 5, 6)
    assert torch.equal(run_plan(plan, x, torch.randn(BATCH, 5, 10))[0], F.pad(x, (2, 2)))


def test_crop_takes_the_centre_of_whatever_size_the_target_has() -> None:
    plan = plan_projection(Projection.crop, Merge.concat, m(4, 9, 11, at=AT1), m(6, 5, 5, at=AT1))
    (crop,) = plan.steps
    assert crop.args == {"start": (2, 3), "size": (5, 5)}  # the declared sizes, for display
    assert step_code(crop, "x", 4, "t") == "_center_crop(x, t)"  # the code reads the sizes at run time
    x = torch.randn(BATCH, 4, 9, 11)
    assert torch.equal(run_plan(plan, x, torch.randn(BATCH, 6, 5, 5))[0], x[:, :, 2:7, 3:8])
    # The same plan on a larger input: 13x15 into 9x7 keeps rows 2..10 and columns 4..10.
    x = torch.randn(BATCH, 4, 13, 15)
    assert torch.equal(run_plan(plan, x, torch.randn(BATCH, 6, 9, 7))[0], x[:, :, 2:11, 4:11])


def test_avgpool_averages_each_window_and_conv_is_a_bias_free_strided_1x1() -> None:
    plan = plan_projection(Projection.avgpool, Merge.add, m(4, 8, 8, at=AT1), m(8, 4, 4, at=AT2))
    x = torch.randn(BATCH, 4, 8, 8)
    pool, conv, norm = run_plan(plan, x, torch.randn(BATCH, 8, 4, 4))[1]
    with torch.no_grad():
        assert torch.equal(pool(x), F.avg_pool2d(x, 2))  # 2x2 windows, none of them partial
    assert conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.bias is None
    assert conv.in_channels == 4 and conv.out_channels == 8 == norm.num_features
    auto = plan_projection(Projection.auto, Merge.add, m(4, 8, 8, at=AT1), m(8, 4, 8, at=scale(2, 1)))
    conv, _ = run_plan(auto, x, torch.randn(BATCH, 8, 4, 8))[1]
    assert conv.stride == (2, 1) and conv.bias is None and conv.in_channels == 4 and conv.out_channels == 8


@pytest.mark.parametrize(("policy", "target", "text"), [
    ("auto", m(8, 4, 4, at=AT2), "Conv2d 1x1 /2 + BatchNorm2d"),
    ("conv", m(8, 4, 4, at=AT2), "Conv2d 1x1 /2"),
    ("avgpool", m(8, 4, 4, at=AT2), "AvgPool2d /2 + Conv2d 1x1 + BatchNorm2d"),
    ("pad", m(8, 4, 4, at=AT2), "subsample /2 + zero-pad channels"),
    ("crop", m(8, 4, 4, at=AT1), "center-crop to 4x4 + Conv2d 1x1"),
    ("auto", m(4, 8, 8, at=AT1), "identity"),
    ("auto", m(8, 4, 8, at=scale(2, 1)), "Conv2d 1x1 /2x1 + BatchNorm2d"),
])
def test_the_summary_names_the_steps(policy: str, target: TensorType, text: str) -> None:
    plan = plan_projection(Projection(policy), Merge.add, m(4, 8, 8, at=AT1), target)
    assert describe_steps(plan.steps) == text


def test_feature_steps_are_named_too() -> None:
    source, target = f(6), f(10)
    assert describe_steps(plan_projection(Projection.auto, Merge.add, source, target).steps) == "Linear"
    assert describe_steps(plan_projection(Projection.pad, Merge.add, source, target).steps) == "zero-pad features"


def test_a_larger_case_counts_parameters_like_torch() -> None:
    # 3-D, stride 4, 16 -> 32 channels: the formula and torch agree beyond the tiny shapes above.
    plan = plan_projection(Projection.auto, Merge.add, m(16, 8, 8, 8, at=scale(1, 1, 1)),
                           m(32, 2, 2, 2, at=scale(4, 4, 4)))
    _, modules = run_plan(plan, torch.randn(1, 16, 8, 8, 8), torch.randn(1, 32, 2, 2, 2))
    assert projection_parameters(plan) == 16 * 32 + 2 * 32 == sum(p.numel() for m in modules for p in m.parameters())
    assert math.prod(plan.output.shape) == 32 * 8
