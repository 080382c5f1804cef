"""Training at scale, held-back cases of issue 15: the limits `materialize` applies, saving a sharded
model, sharding twice, and the command line's `--device meta` with flags it cannot honour.

Each case is one the issue's own tests did not try: a meta build materialized under the limit a
build applies, a whole-module `torch.save` of a sharded model, and so on.
"""

from __future__ import annotations

import pytest
import torch

import resgraph
from resgraph import SpecError

# A small model holding a constant of 9,000,000 elements (36 MB): past a limit of 1,000,000.
BIG_CONSTANT = """\
resgraph: 1
name: BigConstant
inputs: {x: [8]}
layers:
  - fc: {op: Linear, out_features: 8}
  - table: {op: full, shape: [3000, 3000], value: 0.5}
"""


def test_materialize_bounds_constants_as_a_build_does() -> None:
    with pytest.raises(SpecError) as built:
        resgraph.build(BIG_CONSTANT, max_params=1_000_000)
    assert "<string>:6:5: error: layer 'table' (full): the model's constants would hold 9,000,000 elements" in str(
        built.value)
    model = resgraph.build(BIG_CONSTANT, device="meta")  # a meta build allocates nothing: no limit
    with pytest.raises(SpecError) as materialized:
        resgraph.materialize(model, max_params=1_000_000)  # allocated 36 MB regardless
    message = str(materialized.value)
    assert ("<string>:6:5: error: layer 'table' (full): the model's constants would hold 9,000,000 elements, more "
            "than the limit of 1,000,000") in message
    assert "max_params=N" in message and "device='meta'" not in message  # it is on meta already
    assert all(t.is_meta for t in [*model.parameters(), *model.buffers()])  # refused before allocating
    resgraph.materialize(model, max_params=9_000_000, seed=0)
    assert torch.equal(model.table, torch.full((3000, 3000), 0.5))
    assert torch.equal(model.fc.weight, resgraph.build(BIG_CONSTANT, seed=0, max_params=None).fc.weight)
