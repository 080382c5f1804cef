"""Input sizes a hint offers work for the whole model, not only for the skip it is about.

The specification:

- where a skip does not fit because a strided layer met an odd size, the hint's "an input size at
  which this skip fits" names only sizes at which the whole spec checks clean: every skip, every
  layer (U-Net at 580x580 fails at copy4, and 579x579, which fits copy4, fails at copy3);
- those sizes are the nearest to the declared ones that were found clean, in 1-d, 2-d and 3-d,
  square where the input is declared square and per dim where it is not;
- where the nearest size for the one skip is right for the whole model, the hint is as it was;
- where no size tried near the declared one is clean, the hint says so and keeps its other fixes;
- the search is bounded: at most `MAX_TRIALS` checks of the spec per hint and `MAX_CHECKS` per
  check, whatever the spec (counted, not timed).

Each offered size is checked here by checking the spec at it, as a user taking the hint would.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import resgraph
import resgraph.pipeline
from resgraph.fitting import MAX_CHECKS, MAX_TRIALS

UNET = Path(__file__).parent.parent / "examples" / "unet.yaml"


def mini_unet(dims: int, depth: int, size: tuple[int, ...]) -> str:
    """A U-Net of `depth` stages in `dims` spatial dims (unpadded 3-wide convs, pools of 2, crop skips),
    whose skips each fit only at some input sizes, the deepest at the most."""
    n = f"{dims}d"
    layers = []
    for i in range(1, depth + 1):
        layers += [f"  - enc{i}: {{op: Conv{n}, out_channels: 4, kernel_size: 3}}",
                   f"  - pool{i}: {{op: MaxPool{n}, kernel_size: 2}}"]
    layers.append(f"  - mid: {{op: Conv{n}, out_channels: 4, kernel_size: 3}}")
    for i in range(depth, 0, -1):
        layers += [f"  - up{i}: {{op: ConvTranspose{n}, out_channels: 4, kernel_size: 2, stride: 2}}",
                   f"  - dec{i}: {{op: Conv{n}, out_channels: 4, kernel_size: 3}}"]
    skips = [f"  - copy{i}: {{from: enc{i}, to: up{i}, merge: concat, projection: crop}}" for i in range(depth, 0, -1)]
    return "\n".join(["resgraph: 1", "name: Net", f"inputs: {{x: [1, {', '.join(map(str, size))}]}}", "layers:",
                      *layers, "skips:", *skips]) + "\n"


def refused_hint(spec: str | Path, **options: object) -> str:
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(spec, **options)  # type: ignore[arg-type]
    (diagnostic,) = caught.value.diagnostics
    return diagnostic.hint or ""


def offered(hint: str) -> list[tuple[int, ...]]:
    """The sizes "an input size at which this skip fits: 'x' 572x572 (or 588x588, 556x556)" names."""
    found = re.search(r"at which this skip fits: 'x' ([\dx]+)(?: \(or ([\dx, ]+)\))?", hint)
    assert found, hint
    texts = [found[1], *(found[2].split(", ") if found[2] else [])]
    return [tuple(map(int, text.split("x"))) for text in texts]


@pytest.mark.parametrize("size", [574, 576, 580])
def test_unet_offers_only_tile_sizes_at_which_every_crop_is_exact(size: int) -> None:
    # At 574 the hint offered 573x573 for copy2, where copy1 then failed; at 580, 579x579 for copy4.
    hint = refused_hint(UNET, params={"size": size})
    assert hint.endswith("an input size at which this skip fits: 'x' 572x572 (or 588x588, 556x556)")
    for (tile, _) in offered(hint):
        resgraph.check(UNET, params={"size": tile})  # clean: no SpecError


@pytest.mark.parametrize(("dims", "depth", "size", "sizes"), [
    (1, 2, (32,), [(30,), (34,), (26,)]),  # 31 fitted copy2, then copy1 failed
    (3, 2, (40, 36, 44), [(38, 34, 42), (42, 38, 46), (34, 30, 38)]),  # non-cubic: 39x35x43 failed at copy1
    (2, 3, (96, 68), [(94, 70), (102, 62), (86, 78)]),  # non-square: 96x70 failed at copy2
])
def test_a_deeper_stage_is_not_left_to_fail_at_the_size_a_shallower_skip_is_offered(
        dims: int, depth: int, size: tuple[int, ...], sizes: list[tuple[int, ...]]) -> None:
    hint = refused_hint(mini_unet(dims, depth, size))
    assert offered(hint) == sizes
    for fitting in sizes:
        resgraph.check(mini_unet(dims, depth, fitting))


def test_the_nearest_size_for_a_models_only_skip_is_offered_as_it_was() -> None:
    assert refused_hint(mini_unet(2, 1, (31, 31))) == (
        "'pool1' (MaxPool2d, kernel 2, stride 2, padding 0, dilation 1): 29x29 -> 14x14; 'mid' (Conv2d, kernel 3, "
        "stride 1, padding 0, dilation 1): 14x14 -> 12x12; 'up1' (ConvTranspose2d, kernel 2, stride 2, padding 0, "
        "dilation 1, output_padding 0): 12x12 -> 24x24: a layer dropped an odd row. Fix: an input size at which "
        "this skip fits: 'x' 30x30 (or 32x32, 28x28)")


BRANCHES = """
resgraph: 1
name: Branches
inputs: {x: [3, 63, 63]}
layers:
%s
  - shrink: {op: Conv2d, input: x, out_channels: 3, kernel_size: 2}
skips:
%s
  - never: {from: x, to: shrink}
"""


def test_where_no_size_tried_fits_the_whole_model_the_hint_says_so_and_keeps_its_other_fixes() -> None:
    # 'shrink' shrinks x by a row at every size, so no input size makes the model valid.
    spec = BRANCHES % ("  - down: {op: Conv2d, input: x, out_channels: 3, kernel_size: 2, stride: 2}",
                       "  - s: {from: x, to: down}")
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(spec)
    hint = caught.value.diagnostics[0].hint
    assert hint == ("'down' (Conv2d, kernel 2, stride 2, padding 0, dilation 1): 63x63 -> 31x31: a stride of 2 "
                    "floored size 63 to 31. Fix: make it round up as the strides do: `kernel_size: 3` and "
                    "`padding: 1` on 'down'. No input size near the declared one fits the whole model: at 'x' 62x62 "
                    "it fails further on")


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Each check of the whole spec at other sizes that a failing check makes."""
    calls: list[object] = []
    tried = resgraph.pipeline.tried

    def counted(run: Any) -> Any:
        calls.append(run)
        return tried(run)

    monkeypatch.setattr(resgraph.pipeline, "tried", counted)
    return calls


def test_a_hint_checks_the_spec_at_most_max_trials_times(checks: list[object]) -> None:
    # Ten stages: each size tried fits one more skip than the last, and the tenth is past the bound.
    hint = refused_hint(mini_unet(1, 10, (6422,)))
    assert len(checks) == MAX_TRIALS
    assert hint.endswith("No input size near the declared one fits the whole model: at 'x' 6397, 6269, 6205 and "
                         f"{MAX_TRIALS - 3} more it fails further on")


def test_a_check_failing_at_many_skips_checks_the_spec_at_most_max_checks_times(checks: list[object]) -> None:
    # 15 skips that each fit at other sizes, none of which the model admits ('never' fits at none).
    strides = range(2, 17)
    spec = BRANCHES % ("\n".join(f"  - down{s}: {{op: Conv2d, input: x, out_channels: 3, kernel_size: {s}, "
                                 f"stride: {s}}}" for s in strides),
                       "\n".join(f"  - s{s}: {{from: x, to: down{s}}}" for s in strides))
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(spec)
    assert len(caught.value.diagnostics) >= 10  # (63 is a multiple of 3, 7 and 9: those skips fit)
    assert 0 < len(checks) <= MAX_CHECKS
    assert not any("at which this skip fits" in (d.hint or "") for d in caught.value.diagnostics)
