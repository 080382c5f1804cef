"""Held-back cases of the core compiler (#2) and its architecture (#10): skip edges whose source and
target differ in channels, size or grid, checked against hand-written torch given the same weights;
the schema against validation; the public build record.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import resgraph


def projected(model: nn.Module, name: str, x: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """A skip's auto projection by hand: F.conv2d(1x1, stride) then eval-mode batch norm."""
    conv, norm = getattr(model, name)
    y = F.conv2d(x, conv.weight, stride=stride)
    return F.batch_norm(y, norm.running_mean, norm.running_var, norm.weight, norm.bias, training=False)


# --- a strided skip at sizes where its two maps coincide -----------------------------------------

STRIDED_SAME_CHANNELS = """
resgraph: 1
name: Strided
inputs: {x: [8, 9, 9]}
layers:
  - down: {op: Conv2d, out_channels: 8, kernel_size: 3, stride: 2, padding: 1}
skips:
  - s: {from: x, to: down}
"""


def test_a_strided_skip_admits_size_1_in_every_spatial_dim_alike() -> None:
    # At H = 1 both maps are 1 high; the model's strided 1x1 projection still maps 1 to 1. Comparing
    # the shapes as tuples recorded only the first dim that differed (H), so H = 1 and 2 were refused
    # by the input guard while W = 1 was admitted.
    report = resgraph.valid_sizes(STRIDED_SAME_CHANNELS, low=1, high=12)
    rules = {dim.name: (dim.rule.kind, dim.rule.start) for dim in report.dims if dim.free}
    assert rules == {"H": ("at_least", 1), "W": ("at_least", 1)}
    model = resgraph.build(STRIDED_SAME_CHANNELS, seed=0).eval()
    for size in [(1, 5), (5, 1), (1, 1), (2, 9), (9, 9)]:
        x = torch.randn(2, 8, *size)
        with torch.no_grad():
            torch.testing.assert_close(model(x), model.down(x) + projected(model, "s", x, 2))

