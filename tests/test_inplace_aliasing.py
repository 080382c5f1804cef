"""The in-place check against torch: `inplace: true` is refused exactly where torch would go wrong.

For each spec below, resgraph's verdict (refused or not) is compared with what torch does with
the same model built in place: the spec is built with every `inplace` false (the reference), a
copy gets `inplace = True` on the marked modules, and both run forward and backward on the same
input and weights, in train mode (dropout with one seed) and in eval mode. torch shows a hazard
when the outputs or the gradients differ, the caller's input tensor changes, or it raises (its
version counters: "modified by an inplace operation"; a write into a broadcast tensor).

Memory is followed through aliases: views (reshape, transpose, permute, select, flatten, chunk
and split pieces), ops that return their input (Identity, and the dropouts in eval mode), earlier
in-place ops, block calls whose output is their input, and uncurated classes (seen on the meta
device). The rule is conservative in one documented way: a reader that runs *before* the
in-place op is refused even when it keeps nothing of its input for backward (`CONSERVATIVE`).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

import resgraph
from resgraph.ops import OPS
from resgraph.ops.arithmetic import SAVES_OUTPUT as UNARY_SAVES_OUTPUT
from resgraph.ops.elementwise import ELEMENTWISE, SAVES_OUTPUT, SAVES_OUTPUT_IN_PLACE

HEAD = "resgraph: 1\nname: Net\ninputs:\n  x: [8, 6]\n"
UNIT = """
blocks:
  same:
    layers:
      - same1: {op: Identity}
  flat:
    layers:
      - view: {op: reshape, shape: [48]}
  dense:
    layers:
      - fc: {op: Linear, out_features: 6}
"""

# name -> (layers and skips after HEAD, the modules built in place, whether resgraph refuses it)
CASES: dict[str, tuple[str, list[str], bool]] = {
    # the value is read by nobody else: fine
    "alone": ("layers:\n  - fc: {op: Linear, out_features: 6}\n  - act: {op: ReLU, inplace: true}\n", ["act"], False),
    "dropout then relu": ("layers:\n  - fc: {op: Linear, out_features: 6}\n  - drop: {op: Dropout, inplace: true}\n"
                          "  - act: {op: ReLU, inplace: true}\n", ["drop", "act"], False),
    "after a skip": ("layers:\n  - fc: {op: Linear, out_features: 6}\n  - act: {op: ReLU, inplace: true}\n"
                     "skips:\n  - s: {from: x, to: fc}\n", ["act"], False),
    "view read once": ("layers:\n  - fc: {op: Linear, out_features: 6}\n  - t: {op: transpose, dim0: 1, dim1: 2}\n"
                       "  - act: {op: ReLU, inplace: true}\n", ["act"], False),
    "a view of the output of nothing else": (
        "layers:\n  - fc: {op: Linear, out_features: 6}\n  - flat: {op: Flatten}\n"
        "  - act: {op: Hardtanh, inplace: true}\n",
        ["act"], False),
    "fresh after a view": ("layers:\n  - v: {op: reshape, shape: [48]}\n  - fc: {op: Linear, out_features: 48}\n"
                           "  - act: {op: ReLU, inplace: true}\n  - out: {op: add, input: [act, v]}\n", ["act"], False),
    "block that computes": (UNIT + "layers:\n  - b: {block: dense}\n  - act: {op: ReLU, inplace: true}\n"
                            "  - out: {op: add, input: [act, x]}\n", ["act"], False),
    "uncurated, alone": ("layers:\n  - fc: {op: Linear, out_features: 6}\n  - cut: {op: Threshold, threshold: 0.1, "
                         "value: 0.0, inplace: true}\n", ["cut"], False),
    # another reader, directly or through an alias
    "direct reader": ("layers:\n  - fc: {op: Linear, out_features: 6}\n  - act: {op: ReLU, inplace: true}\n"
                      "  - out: {op: add, input: [act, fc]}\n", ["act"], True),
    "through reshape": ("layers:\n  - fc: {op: Linear, out_features: 6}\n  - v: {op: reshape, shape: [48]}\n"
                        "  - act: {op: ReLU, inplace: true}\n  - f2: {op: Flatten, input: fc}\n"
                        "  - out: {op: add, input: [act, f2]}\n", ["act"], True),
    "through Identity": ("layers:\n  - fc: {op: Linear, out_features: 6}\n  - same: {op: Identity}\n"
                         "  - act: {op: ReLU, inplace: true}\n  - out: {op: add, input: [act, fc]}\n", ["act"], True),
    "through eval dropout": ("layers:\n  - fc: {op: Linear, out_features: 6}\n  - drop: {op: Dropout, p: 0.5}\n"
                             "  - act: {op: SiLU, inplace: true}\n  - out: {op: add, input: [act, fc]}\n",
                             ["act"], True),
    "through stochastic depth": ("layers:\n  - fc: {op: Linear, out_features: 6}\n"
                                 "  - sd: {op: stochastic_depth, p: 0.1}\n  - act: {op: ReLU, inplace: true}\n"
                                 "  - out: {op: add, input: [act, fc]}\n", ["act"], True),
    "through stochastic depth that never drops": (
        "layers:\n  - fc: {op: Linear, out_features: 6}\n  - sd: {op: stochastic_depth, p: 0.0}\n"
        "  - act: {op: ReLU, inplace: true}\n  - out: {op: add, input: [act, fc]}\n", ["act"], True),
    "chunk piece": ("layers:\n  - fc: {op: Linear, out_features: 6}\n"
                    "  - parts: {op: chunk, chunks: 2, dim: 2, outputs: [a, b]}\n  - act: {op: ReLU, input: a, "
                    "inplace: true}\n  - out: {op: concat, input: [act, b, fc], dim: 2}\n", ["act"], True),
    "reader of a sibling view": ("layers:\n  - fc: {op: Linear, out_features: 6}\n"
                                 "  - t: {op: transpose, dim0: 1, dim1: 2}\n  - act: {op: ReLU, inplace: true}\n"
                                 "  - t2: {op: transpose, input: fc, dim0: 1, dim1: 2}\n"
                                 "  - tail: {op: Linear, input: t2, out_features: 8}\n"
                                 "  - out: {op: add, input: [act, tail]}\n", ["act"], True),
    "skip source": ("layers:\n  - fc: {op: Linear, out_features: 6}\n  - v: {op: permute, dims: [0, 2, 1]}\n"
                    "  - act: {op: ReLU, inplace: true}\n  - back: {op: permute, dims: [0, 2, 1]}\n"
                    "skips:\n  - s: {from: fc, to: back}\n", ["act"], True),
    "uncurated RReLU": ("layers:\n  - fc: {op: Linear, out_features: 6}\n  - cut: {op: RReLU, inplace: true}\n"
                        "  - out: {op: add, input: [fc, cut]}\n", ["cut"], True),
    "uncurated Threshold on a view": (
        "layers:\n  - fc: {op: Linear, out_features: 6}\n  - v: {op: reshape, shape: [48]}\n"
        "  - cut: {op: Threshold, threshold: 0.1, value: 0.0, inplace: true}\n  - keep: {op: Flatten, input: fc}\n"
        "  - out: {op: add, input: [cut, keep]}\n", ["cut"], True),
    # the caller's input, an output, a stored tensor
    "the input": ("layers:\n  - act: {op: ReLU, inplace: true}\n", ["act"], True),
    "the input through Identity": ("layers:\n  - same: {op: Identity}\n  - act: {op: ReLU, inplace: true}\n",
                                   ["act"], True),
    "the input through stochastic depth": ("layers:\n  - sd: {op: stochastic_depth, p: 0.2, mode: batch}\n"
                                           "  - act: {op: ReLU, inplace: true}\n", ["act"], True),
    "the input through a view": ("layers:\n  - v: {op: reshape, shape: [48]}\n  - act: {op: ELU, inplace: true}\n",
                                 ["act"], True),
    "the input through a block": (UNIT + "layers:\n  - b: {block: flat}\n  - act: {op: ReLU, inplace: true}\n",
                                  ["act"], True),
    "the input through a repeated block": (UNIT + "layers:\n  - b: {block: same, repeat: 2}\n"
                                           "  - act: {op: ReLU, inplace: true}\n", ["act"], True),
    "an output": ("layers:\n  - fc: {op: Linear, out_features: 6}\n  - v: {op: reshape, shape: [48]}\n"
                  "  - act: {op: ReLU, inplace: true}\noutputs: [fc, act]\n", ["act"], True),
    "a stored tensor": ("layers:\n  - pos: {op: parameter, shape: [8, 6]}\n  - act: {op: ReLU, inplace: true}\n"
                        "  - out: {op: add, input: [act, x]}\n", ["act"], True),
    # autograd keeps the overwritten value for backward
    "after ReLU": ("layers:\n  - fc: {op: Linear, out_features: 6}\n  - a: {op: ReLU}\n"
                   "  - act: {op: ReLU, inplace: true}\n", ["act"], True),
    "after Sigmoid through a view": ("layers:\n  - fc: {op: Linear, out_features: 6}\n  - g: {op: Sigmoid}\n"
                                     "  - t: {op: transpose, dim0: 1, dim1: 2}\n"
                                     "  - act: {op: Dropout, inplace: true}\n",
                                     ["act"], True),
    "after exp": ("layers:\n  - fc: {op: Linear, out_features: 6}\n  - e: {op: exp}\n"
                  "  - act: {op: Hardtanh, inplace: true}\n", ["act"], True),
    "relu in place then dropout in place": ("layers:\n  - fc: {op: Linear, out_features: 6}\n"
                                            "  - act: {op: ReLU, inplace: true}\n"
                                            "  - drop: {op: Dropout, inplace: true}\n",
                                            ["act", "drop"], True),
    "after a block ending in Softmax": (
        "blocks:\n  soft:\n    layers:\n      - fc: {op: Linear, out_features: 6}\n      - p: {op: Softmax, dim: -1}\n"
        "layers:\n  - b: {block: soft}\n  - act: {op: ReLU, inplace: true}\n", ["act"], True),
    # a value of a block call with several: the block's input passed through, or a piece of it
    "a block value that is the caller's": (
        "blocks:\n  pair:\n    layers:\n      - y: {op: Linear, out_features: 6}\n    outputs: [y, x]\n"
        "layers:\n  - fc: {op: Linear, out_features: 6}\n  - p: {block: pair}\n"
        "  - act: {op: ReLU, input: p.x, inplace: true}\n  - out: {op: add, input: [act, fc]}\n", ["act"], True),
    "a block value that is a chunk of the caller's": (
        "blocks:\n  halves:\n    layers:\n      - parts: {op: chunk, chunks: 2, dim: 2, outputs: [a, b]}\n"
        "    outputs: [a, b]\nlayers:\n  - fc: {op: Linear, out_features: 6}\n  - h: {block: halves}\n"
        "  - act: {op: ReLU, input: h.a, inplace: true}\n  - out: {op: concat, input: [act, fc], dim: 2}\n",
        ["act"], True),
    "a collected value that is the caller's": (
        UNIT + "layers:\n  - fc: {op: Linear, out_features: 6}\n  - st: {block: same, repeat: 2, collect: true}\n"
        "  - act: {op: ReLU, input: st.1, inplace: true}\n  - out: {op: add, input: [act, fc]}\n", ["act"], True),
    # values a call makes inside that are one memory: writing one writes the other
    "a block value and another that is an Identity of it": (
        "blocks:\n  pair:\n    layers:\n      - y: {op: Linear, out_features: 6}\n      - same: {op: Identity}\n"
        "    outputs: [y, same]\nlayers:\n  - p: {block: pair}\n  - act: {op: ReLU, input: p.y, inplace: true}\n"
        "  - out: {op: add, input: [act, p.same]}\n", ["act"], True),
    "a block value and a chunk of it, the chunk written": (
        "blocks:\n  pair:\n    layers:\n      - y: {op: Linear, out_features: 6}\n"
        "      - parts: {op: chunk, chunks: 2, dim: 2, outputs: [a, b]}\n    outputs: [y, b]\n"
        "layers:\n  - p: {block: pair}\n  - act: {op: ReLU, input: p.b, inplace: true}\n"
        "  - out: {op: concat, input: [act, p.y], dim: 2}\n", ["act"], True),
    "two views of one value made inside, one an output of the model": (
        "blocks:\n  pair:\n    layers:\n      - y: {op: Linear, out_features: 6}\n"
        "      - t: {op: transpose, dim0: 1, dim1: 2}\n      - r: {op: reshape, input: y, shape: [48]}\n"
        "    outputs: [t, r]\nlayers:\n  - p: {block: pair}\n  - act: {op: ReLU, input: p.t, inplace: true}\n"
        "  - keep: {op: Identity, input: p.r}\noutputs: [act, keep]\n", ["act"], True),
    "a block value of its own": (
        "blocks:\n  pair:\n    layers:\n      - y: {op: Linear, out_features: 6}\n"
        "      - z: {op: Linear, out_features: 6, input: x}\n    outputs: [y, z]\n"
        "layers:\n  - fc: {op: Linear, out_features: 6}\n  - p: {block: pair}\n"
        "  - act: {op: ReLU, input: p.z, inplace: true}\n  - out: {op: add, input: [act, p.y, fc]}\n",
        ["act"], False),
    "after uncurated Softmin": ("layers:\n  - fc: {op: Linear, out_features: 6}\n  - s: {op: Softmin, dim: -1}\n"
                                "  - act: {op: ReLU, inplace: true}\n", ["act"], True),
}

# Refused although torch shows nothing: the other reader runs first and keeps nothing of its input.
CONSERVATIVE: dict[str, tuple[str, list[str], bool]] = {
    "an earlier reader that keeps its output only": (
        "layers:\n  - fc: {op: Linear, out_features: 6}\n  - g: {op: Sigmoid}\n"
        "  - act: {op: ReLU, input: fc, inplace: true}\n  - out: {op: mul, input: [g, act]}\n", ["act"], True),
}


def refused(text: str) -> bool:
    try:
        resgraph.check(text)
    except resgraph.SpecError as exc:
        assert all("inplace" in d.message or "would overwrite" in d.message for d in exc.diagnostics), exc
        return True
    return False


def _run(model: nn.Module, x: torch.Tensor, training: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Outputs and parameter gradients of one forward and backward, dropout drawn from one seed."""
    model.train(training)
    model.zero_grad()
    torch.manual_seed(7)
    out = model(x)
    outs = list(out) if isinstance(out, tuple) else [out]
    loss = sum((o.float() * torch.linspace(-1, 1, o.numel()).reshape(o.shape)).sum() for o in outs)
    if loss.requires_grad:  # type: ignore[union-attr]
        loss.backward()  # type: ignore[union-attr]
    grads = [p.grad.clone() if p.grad is not None else torch.zeros(()) for p in model.parameters()]
    return [o.detach().clone() for o in outs], grads


def torch_shows_a_hazard(text: str, in_place: list[str]) -> bool:
    """Whether the model with `in_place` modules writing in place differs from the reference, or fails."""
    reference = resgraph.build(text.replace("inplace: true", "inplace: false"), seed=0)
    unsafe = copy.deepcopy(reference)
    for name in in_place:
        module: Any = unsafe.get_submodule(name)
        assert hasattr(module, "inplace")
        module.inplace = True
    x = torch.randn(4, 8, 6)
    for training in (True, False):
        expected = _run(reference, x.clone(), training)
        given = x.clone()
        try:
            found = _run(unsafe, given, training)
        except RuntimeError:  # version counters, or a write into a broadcast (expanded) tensor
            return True
        if not torch.equal(given, x):
            return True
        for a, b in zip(expected[0] + expected[1], found[0] + found[1]):
            if a.shape != b.shape or not torch.allclose(a, b, atol=1e-6):
                return True
    return False


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_inplace_check_agrees_with_torch(name: str) -> None:
    text, in_place, verdict = CASES[name]
    assert refused(HEAD + text) is verdict
    assert torch_shows_a_hazard(HEAD + text, in_place) is verdict


@pytest.mark.parametrize("name", sorted(CONSERVATIVE))
def test_the_check_is_conservative_only_about_earlier_readers(name: str) -> None:
    text, in_place, _ = CONSERVATIVE[name]
    assert refused(HEAD + text)
    assert not torch_shows_a_hazard(HEAD + text, in_place)


def test_the_message_names_the_alias_and_the_reader_at_the_inplace_key() -> None:
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(HEAD + CASES["through reshape"][0], file="spec.yaml")
    (diagnostic,) = caught.value.diagnostics
    assert str(diagnostic.location).startswith("spec.yaml:8:")
    assert diagnostic.message == ("layer 'act' (ReLU): inplace: true would overwrite 'fc' (through 'v', which shares "
                                  "its memory), but 'out' also reads it")  # f2 is a view: its reader reads fc
    assert diagnostic.hint == "remove `inplace: true`"


@pytest.mark.parametrize(("op", "inplace"), [(op, inplace) for op in sorted(ELEMENTWISE) for inplace in (False, True)
                                              if not inplace or "inplace" in OPS[op].model_fields])
def test_which_outputs_autograd_keeps_is_what_torch_does(op: str, inplace: bool) -> None:
    """The tables of ops whose output backward needs, checked op by op: an in-place ReLU after the op."""
    args = {"Softmax": {"dim": -1}, "LogSoftmax": {"dim": -1}}.get(op, {})
    module = getattr(nn, op)(**args, **({"inplace": True} if inplace else {}))
    x = torch.randn(3, 6, requires_grad=True)
    try:
        nn.ReLU(inplace=True)(module(x * 1)).sum().backward()
        fails = False
    except RuntimeError:
        fails = True
    keeps = op in (SAVES_OUTPUT_IN_PLACE if inplace else SAVES_OUTPUT)
    assert fails is keeps


@pytest.mark.parametrize("op", sorted(UNARY_SAVES_OUTPUT | {"log", "sin", "neg"}))
def test_which_functions_keep_their_output_is_what_torch_does(op: str) -> None:
    x = torch.rand(3, 6, requires_grad=True)
    try:
        getattr(torch, op)(x + 0.5).relu_().sum().backward()
        fails = False
    except RuntimeError:
        fails = True
    assert fails is (op in UNARY_SAVES_OUTPUT)
