"""Held-back cases of input sizes (issue 11): torch's own size arithmetic at sizes and factors the
first tests did not try, and input guards that refuse exactly the sizes the model cannot run at."""

from __future__ import annotations

import pytest
import torch

import resgraph


def _spec(input_shape: list[int], layers: str, *, inputs: str | None = None) -> str:
    declared = inputs if inputs is not None else f"  x: {input_shape}\n"
    return f"resgraph: 1\nname: Net\ninputs:\n{declared}layers:\n{layers}"


def _refused(model: torch.nn.Module, *inputs: torch.Tensor) -> bool:
    """Whether the model's input guard refuses the inputs (a ValueError naming the input)."""
    try:
        model(*inputs)
    except ValueError as exc:
        assert "must be" in str(exc), exc
        return True
    return False


# --- Upsample's scale_factor: torch multiplies in double precision and truncates -------------------

@pytest.mark.parametrize(("factor", "declared"), [(0.7, 90), (0.29, 100), (2.3, 50), (1.15, 100), (0.57, 300)])
def test_a_fractional_scale_factor_sizes_as_torch_does(factor: float, declared: int) -> None:
    """At these sizes size * factor is an integer in exact arithmetic, but torch's double product falls just
    short of it (90 * 0.7 = 62.99999999999999) and truncates: the size is one less than the exact one. The
    model built at that size ran into its Linear with the wrong width ('2x930 and 945x4')."""
    spec = _spec([3, declared, 8], "  - up: {op: Upsample, scale_factor: " + str(factor) + "}\n"
                 "  - flat: {op: Flatten}\n  - fc: {op: Linear, out_features: 4}\n")
    model = resgraph.build(spec, seed=0)
    expected = torch.nn.Upsample(scale_factor=factor)(torch.zeros(1, 3, declared, 8)).shape[2]
    assert model.graph.nodes["up"].meta["type"].shape[1] == expected == int(declared * factor)
    assert model(torch.zeros(2, 3, declared, 8)).shape == (2, 4)
    # every other size: the guard accepts exactly those at which the upsampled height stays the same
    for size in range(1, 3 * declared):
        height = torch.nn.Upsample(scale_factor=factor)(torch.zeros(1, 3, size, 8, device="meta")).shape[2] \
            if int(size * factor) >= 1 else 0
        assert _refused(model, torch.zeros(1, 3, size, 8)) == (height != expected), size
