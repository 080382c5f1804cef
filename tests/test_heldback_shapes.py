"""Held-back cases of shapes at every input size (issue 11), compared with torch itself: pools with
dilation and padding, 1-d maps read by ops other than the Nd families, and the fixes hints propose."""

from __future__ import annotations

import pytest
import torch

import resgraph
from resgraph.errors import SpecError


def _spec(input_shape: list[int], layers: str, skips: str = "") -> str:
    return (f"resgraph: 1\nname: Net\ninputs:\n  x: {input_shape}\nlayers:\n{layers}"
            + (f"skips:\n{skips}" if skips else ""))


def _torch_runs(module: torch.nn.Module, shape: tuple[int, ...]) -> bool:
    try:
        module(torch.zeros(1, *shape))
    except RuntimeError:
        return False
    return True


def _errors(spec: str, **kwargs: object) -> str:
    with pytest.raises(SpecError) as info:
        resgraph.build(spec, **kwargs)
    return str(info.value)


# --- a pool's padding is checked against its kernel as written, dilation aside, as torch checks it ---

@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize(("kernel", "padding", "dilation"), [(2, 2, 3), (3, 2, 2), (3, 2, 3), (5, 3, 2), (2, 1, 3),
                                                              (4, 2, 2), (1, 1, 3)])
def test_a_max_pool_builds_exactly_where_torch_accepts_its_padding(dims: int, kernel: int, padding: int,
                                                                   dilation: int) -> None:
    """A dilated kernel of 2 spans 4, but torch refuses padding 2 on it ('pad should be smaller than or equal
    to half of kernel size'): the build passed and the model failed at its first forward."""
    shape = (2, *[12] * dims)
    spec = _spec(list(shape), f"  - pool: {{op: MaxPool{dims}d, kernel_size: {kernel}, padding: {padding}, "
                              f"dilation: {dilation}}}\n")
    pool = getattr(torch.nn, f"MaxPool{dims}d")(kernel, padding=padding, dilation=dilation)
    if _torch_runs(pool, shape):
        model = resgraph.build(spec)
        assert model(torch.zeros(1, *shape)).shape == pool(torch.zeros(1, *shape)).shape
    else:
        message = _errors(spec)
        assert "layer 'pool'" in message and f"padding={padding} must be at most half the kernel size" in message


# --- a 2-dim input that Upsample reads is a (C, L) signal: its length is free, its channels fixed ---

@pytest.mark.parametrize("layers", [
    "  - up: {op: Upsample, scale_factor: 2, mode: linear}\n  - conv: {op: Conv1d, out_channels: 4, kernel_size: 3}\n",
    "  - up: {op: Upsample, scale_factor: 1.5}\n",
], ids=["linear-then-conv1d", "nearest"])
def test_a_signal_read_by_upsample_keeps_its_length_free(layers: str) -> None:
    """Upsample resizes the last dim of an (N, C, L) tensor; the input was taken as a (L, F) sequence, so
    the guard fixed the length at its declared 10 and called the channels 'L' ('must be (N, L, 10)')."""
    model = resgraph.build(_spec([3, 10], layers), seed=0)
    reference = torch.nn.Sequential(*model.children())  # the same modules, no guard
    for length in range(1, 40):
        x = torch.randn(2, 3, length)
        assert _torch_runs(reference, (3, length)) == (length >= 2 or "conv" not in layers), length
        if _torch_runs(reference, (3, length)):
            torch.testing.assert_close(model(x), reference(x))
        else:
            with pytest.raises(ValueError, match=r"input 'x' must be \(N, 3, L\) with L >= 2"):
                model(x)
    with pytest.raises(ValueError, match=r"must be \(N, 3, L\)"):
        model(torch.randn(2, 4, 10))  # the channels are the fixed dim
