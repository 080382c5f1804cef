"""Adding in place: `t += s` where no other value, no autograd node and no caller can tell.

The specification (codegen.in_place_adds): an `add` skip adds into its target in place when the
target's value is the fresh output of a `FRESH_OUTPUT_OPS` layer (conv, linear, norm) or of an
earlier merge, not read in between, and the sum keeps the target's type. It never does for an
activation whose backward reads its output (ReLU), a layer that returns its input (Identity) or
a view of it (Flatten), or a graph input. The result and every gradient equal the out-of-place
forward's, and the exported file makes the same choices.
"""

from __future__ import annotations

import copy

import pytest
import torch

import resgraph
from resgraph.codegen import generate_forward
from resgraph.lower import _generated_class

SPEC = """resgraph: 1
name: InPlace
inputs:
  x: [4, 8, 8]
layers:
  - c1: {op: Conv2d, out_channels: 4, kernel_size: 3, padding: 1}
  - n1: {op: BatchNorm2d}
  - r1: {op: ReLU}
  - c2: {op: Conv2d, out_channels: 4, kernel_size: 3, padding: 1}
  - g: {op: GroupNorm, num_groups: 2}
  - r2: {op: ReLU}
  - f: {op: Flatten}
  - l: {op: Linear, out_features: 256}
  - ln: {op: LayerNorm}
  - i: {op: Identity}
  - v: {op: Flatten, input: r1}
  - t: {op: ConvTranspose2d, out_channels: 4, kernel_size: 1, input: r1}
skips:
  - s1: {from: x, to: n1}
  - s2: {from: r1, to: g}
  - s3: {from: c1, to: r2}
  - s4: {from: f, to: ln}
  - s5: {from: l, to: i}
  - s6: {from: l, to: v}
  - s7: {from: x, to: t}
  - s8: {from: x, to: t}
outputs: [i, v, t]
"""

IN_PLACE = ["n1 += x", "g += r1", "ln += f", "t += x"]  # BatchNorm, GroupNorm, LayerNorm, ConvTranspose
OUT_OF_PLACE = ["r2 = r2 + c1",  # ReLU's backward reads its output
                "i = i + l",  # Identity returns ln itself
                "v = v + l"]  # Flatten returns a view of r1, which t reads afterwards


@pytest.fixture(scope="module")
def model() -> resgraph.CompiledModule:
    return resgraph.build(SPEC, seed=0)


def out_of_place_twin(model: resgraph.CompiledModule) -> torch.nn.Module:
    """A deep copy of `model` whose forward is generated with every add out of place."""
    source = generate_forward(model.graph, in_place=False)
    assert "+=" not in source
    twin = copy.deepcopy(model)
    twin.__class__ = _generated_class("InPlaceReference", source, type(model).__mro__[1])
    return twin


def test_adds_in_place_exactly_where_nothing_else_sees_the_target(model: resgraph.CompiledModule) -> None:
    lines = [line.split("  #")[0].strip() for line in model.code.splitlines()]
    for statement in IN_PLACE:
        assert statement in lines
    assert lines.count("t += x") == 2  # a second skip adds into the first one's (fresh) result
    for statement in OUT_OF_PLACE:
        assert statement in lines
    assert not any(line.startswith("x +=") for line in lines)  # the caller's tensor is never written


def test_forward_and_gradients_equal_the_out_of_place_forward(model: resgraph.CompiledModule) -> None:
    twin = out_of_place_twin(model)
    model.train(), twin.train()  # BatchNorm normalises with the batch's statistics and updates its buffers
    x = torch.randn(3, 4, 8, 8)
    inputs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    outputs = [module(inp) for module, inp in zip((model, twin), inputs)]
    x_before = x.clone()
    for got, expected in zip(*outputs):
        assert torch.equal(got, expected)
    for result in outputs:
        sum((o * torch.linspace(-1, 1, o.numel()).reshape(o.shape)).sum() for o in result).backward()
    assert torch.equal(inputs[0].grad, inputs[1].grad)
    for (name, p), (_, q) in zip(model.named_parameters(), twin.named_parameters()):
        assert torch.equal(p.grad, q.grad), name
    for (name, b), (_, c) in zip(model.named_buffers(), twin.named_buffers()):
        assert torch.equal(b, c), name
    assert torch.equal(x, x_before)


def test_in_place_adds_in_blocks_match_and_train(model: resgraph.CompiledModule) -> None:
    tutorial = resgraph.build("examples/tutorial.yaml", seed=0)
    assert "+=" in tutorial.code or any("+=" in type(m).code for m in tutorial.modules() if hasattr(m, "code"))
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    tutorial(x).square().mean().backward()  # autograd accepts every in-place add (no version error)
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_the_exported_file_makes_the_same_choices(model: resgraph.CompiledModule) -> None:
    source = resgraph.to_python(model)
    lines = [line.split("  #")[0].strip() for line in source.splitlines()]
    for statement in IN_PLACE + OUT_OF_PLACE:
        assert statement in lines
