"""Names: one namespace for inputs, layers and skips; none may shadow what a module needs."""

from __future__ import annotations

import keyword

import pytest
import torch

import resgraph
from resgraph.graph import NN_MODULE_ATTRIBUTES, RESERVED_NAMES, SHARDED_MODULE_ATTRIBUTES


def test_reserved_names_cover_torch_module_api() -> None:
    public = {name for name in dir(torch.nn.Module) if not name.startswith("_")}
    assert public <= NN_MODULE_ATTRIBUTES, f"add to NN_MODULE_ATTRIBUTES: {sorted(public - NN_MODULE_ATTRIBUTES)}"
    assert "training" in RESERVED_NAMES and "code" in RESERVED_NAMES and "self" in RESERVED_NAMES


def test_reserved_names_cover_the_methods_sharding_adds() -> None:
    """resgraph.shard (FSDP2's fully_shard) gives each module it shards FSDPModule's methods: a layer named
    `unshard` was then called as that method, and the first forward failed."""
    from torch.distributed.fsdp import FSDPModule

    added = {name for name in set(dir(FSDPModule)) - set(dir(torch.nn.Module)) if not name.startswith("_")}
    missing = sorted(added - SHARDED_MODULE_ATTRIBUTES)
    assert not missing, f"add to SHARDED_MODULE_ATTRIBUTES: {missing}"
    with pytest.raises(resgraph.SpecError, match=r"the name is reserved \(it would shadow a method resgraph.shard"):
        resgraph.check("resgraph: 1\nname: M\ninputs:\n  x: [4]\nlayers:\n  - unshard: {op: ReLU}\n")


@pytest.mark.parametrize("name", ["eval", "training", "parameters", "spec", "code", "torch", "self", "lambda"])
def test_reserved_names_are_refused(name: str) -> None:
    text = f"resgraph: 1\nname: M\ninputs:\n  x: [4]\nlayers:\n  - {name}: {{op: ReLU}}\n"
    with pytest.raises(resgraph.SpecError, match="the name is reserved"):
        resgraph.check(text)
    assert keyword.iskeyword("lambda")


def test_chain_default_inputs_and_explicit_inputs() -> None:
    graph = resgraph.check("resgraph: 1\nname: M\ninputs:\n  x: [4]\n  y: [4]\nlayers:\n"
                           "  - a: {op: ReLU, input: x}\n  - b: {op: Tanh}\n  - c: {op: add, input: [b, y]}\n")
    assert graph.nodes["a"].inputs == ["x"] and graph.nodes["b"].inputs == ["a"]
    assert graph.nodes["c"].inputs == ["b", "y"] and graph.outputs == ["c"]


def test_every_problem_in_names_is_reported_at_once() -> None:
    text = ("resgraph: 1\nname: M\ninputs:\n  x: [4]\nlayers:\n  - a: {op: ReLU, input: nope}\n"
            "  - b: {op: ReLU, input: c}\n  - c: {op: ReLU}\nskips:\n  - s: {from: zz, to: a}\noutputs: [qq]\n")
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(text)
    assert [d.location.line for d in caught.value.diagnostics] == [6, 7, 10, 11]
