"""Property-based fuzzing of the checks that keep a model from being silently wrong (hypothesis).

Generated specs mix what those checks are about, over a square (n, n) tensor so that most ops
keep its shape and most specs type:

- in-place ops (curated and uncurated) reading values that views (reshape, transpose, permute,
  chunk pieces), ops returning their input (Identity, Dropout) and ops whose output autograd keeps
  (Sigmoid, Softmax, exp, ReLU) share, read again by later merges or returned as outputs;
- integer inputs and positions (`arange`) reaching float-only layers, converted or not;
- arguments torch refuses only at the first forward: Upsample's `align_corners` and scales,
  `mean` over repeated dims, reflect/circular padding of any size, PReLU slope counts, Hardtanh
  bounds, CELU's alpha, in-place negative slopes, InstanceNorm over one element.

The property: a spec is refused with located errors, or its model runs forward and backward in
train and eval mode without any error, leaves the caller's input untouched, and computes exactly
what the same model without `inplace` computes (outputs, and gradients where nothing is random).

CI runs a bounded profile; set RESGRAPH_FUZZ_EXAMPLES=20000 for a long local run (see test_fuzz).
"""

from __future__ import annotations

from typing import Any

import torch
import yaml
from hypothesis import given
from hypothesis import strategies as st
from test_fuzz import PROFILE, assert_located

import resgraph

RANDOM_OPS = ("Dropout", "RReLU")  # in train mode their values come from the RNG


@st.composite
def hazard_specs(draw: st.DrawFn) -> tuple[str, int, str, bool]:
    """(spec text, n, input dtype, whether train-mode values are random) for a graph over (n, n)."""
    n = draw(st.integers(2, 4))
    dtype = draw(st.sampled_from(["float32", "float32", "float32", "int64"]))
    names = ["x"]
    layers: list[dict[str, Any]] = []
    random = False

    def earlier() -> str:
        return names[draw(st.integers(0, len(names) - 1))]

    inplace = st.booleans()
    for i in range(draw(st.integers(1, 7))):
        name = f"l{i}"
        kind = draw(st.integers(0, 21))
        body: dict[str, Any]
        if kind == 0:
            body = {"op": "ReLU", "inplace": draw(inplace)}
        elif kind == 1:
            body = {"op": "Dropout", "p": draw(st.sampled_from([0.0, 0.5])), "inplace": draw(inplace)}
            random = random or body["p"] > 0
        elif kind == 2:
            body = {"op": draw(st.sampled_from(["Identity", "Sigmoid", "Tanh", "exp", "GELU"]))}
        elif kind == 3:
            body = {"op": "transpose", "dim0": 1, "dim1": 2}
        elif kind == 4:
            body = {"op": "permute", "dims": [0, 2, 1]}
        elif kind == 5:
            body = {"op": "reshape", "shape": [n, n]}
        elif kind == 6:
            body = {"op": draw(st.sampled_from(["add", "mul"])), "input": [earlier(), earlier()]}
        elif kind == 7 and n % 2 == 0:
            parts, dim = [f"{name}a", f"{name}b"], draw(st.sampled_from([1, 2]))
            layers.append({name: {"op": "chunk", "chunks": 2, "dim": dim, "outputs": parts, "input": earlier()}})
            names.extend(parts)
            name = f"{name}c"
            if draw(st.booleans()):  # an in-place op on one piece
                layers.append({f"{name}r": {"op": "ReLU", "input": parts[0], "inplace": True}})
                parts[0] = f"{name}r"
                names.append(parts[0])
            body = {"op": "concat", "input": parts, "dim": dim}
        elif kind == 8:
            body = {"op": "Linear", "out_features": n}
        elif kind == 9:
            body = {"op": "Hardtanh", "min_val": draw(st.sampled_from([-1.0, 0.0, 1.0])),
                    "max_val": draw(st.sampled_from([0.0, 1.0])), "inplace": draw(inplace)}
        elif kind == 10:
            slope = draw(st.sampled_from([-0.5, 0.0, 0.5]))
            body = draw(st.sampled_from([{"op": "LeakyReLU", "negative_slope": slope}, {"op": "ELU", "alpha": slope},
                                         {"op": "CELU", "alpha": slope}]))
            body["inplace"] = draw(inplace)
        elif kind == 11:
            body = {"op": "Threshold", "threshold": 0.1, "value": 0.0, "inplace": draw(inplace)}
        elif kind == 12:
            body = {"op": "RReLU", "inplace": draw(inplace)}
            random = True
        elif kind == 13:
            dims = draw(st.lists(st.sampled_from([1, 2, -1, -2]), min_size=0, max_size=3))
            body = {"op": "mean", "dim": dims, "keepdim": True}
        elif kind == 14:
            mode = draw(st.sampled_from(["nearest", "linear", "nearest-exact"]))
            body = {"op": "Upsample", "mode": mode, "scale_factor": draw(st.sampled_from([1, 0.25, 0.5]))}
            corners = draw(st.sampled_from([None, True, False]))
            if corners is not None:
                body["align_corners"] = corners
        elif kind == 15:
            pad = draw(st.integers(0, n + 1))
            body = {"op": "Conv1d", "out_channels": n, "kernel_size": 2 * pad + 1, "padding": pad,
                    "padding_mode": draw(st.sampled_from(["zeros", "reflect", "circular", "replicate"]))}
        elif kind == 16:
            body = {"op": "Conv1d", "out_channels": n, "kernel_size": draw(st.integers(1, 2 * n + 2)),
                    "padding": "same", "padding_mode": draw(st.sampled_from(["reflect", "circular"]))}
        elif kind == 17:
            body = {"op": "PReLU", "num_parameters": draw(st.sampled_from([1, n, n + 1]))}
        elif kind == 18:
            body = {"op": "InstanceNorm1d"}
        elif kind == 19:
            body = {"op": "mul", "scalar": 1.0}  # integers to floats
        elif kind == 20:
            layers.append({f"{name}p": {"op": "arange", "input": earlier(), "dim": 1}})
            names.append(f"{name}p")
            body = {"op": "reshape", "shape": [n, 1]}
        else:
            body = {"op": "Softmax", "dim": -1}
        if "input" not in body and draw(st.integers(0, 3)) == 0:
            body["input"] = earlier()
        layers.append({name: body})
        names.append(name)
    outputs = sorted({names[-1], earlier()}) if draw(st.booleans()) else [names[-1]]
    spec = {"resgraph": 1, "name": "Fuzz", "inputs": {"x": {"shape": [n, n], "dtype": dtype}}, "layers": layers,
            "outputs": outputs}
    return yaml.safe_dump(spec, sort_keys=False), n, dtype, random


def _run(model: torch.nn.Module, x: torch.Tensor, training: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    model.train(training)
    model.zero_grad()
    torch.manual_seed(3)
    out = model(x)
    outs = list(out) if isinstance(out, tuple) else [out]
    floats = [o for o in outs if o.is_floating_point() and o.requires_grad]
    if floats:
        sum((o * torch.linspace(-1, 1, o.numel()).reshape(o.shape)).sum() for o in floats).backward()  # type: ignore[union-attr]
    grads = [p.grad.clone() if p.grad is not None else torch.zeros(()) for p in model.parameters()]
    return [o.detach().clone() for o in outs], grads


@PROFILE
@given(hazard_specs())
def test_what_validates_runs_and_computes_what_it_would_without_inplace(case: tuple[str, int, str, bool]) -> None:
    text, n, dtype, random = case
    try:
        model = resgraph.build(text, file="fuzz.yaml", seed=0)
    except resgraph.SpecError as error:
        assert_located(error)
        return
    if "inplace: true" in text:
        reference = resgraph.build(text.replace("inplace: true", "inplace: false"), seed=0)
        reference.load_state_dict(model.state_dict())
    else:  # nothing writes in place: the model is its own reference (it still must run)
        reference = model
    x = torch.randn(2, n, n) if dtype == "float32" else torch.randint(-3, 4, (2, n, n))
    for training in (True, False):
        given_x = x.clone()
        found = _run(model, given_x, training)  # raises if the checks let a torch error through
        assert torch.equal(given_x, x), "the model overwrote the caller's input"
        expected = _run(reference, x.clone(), training)
        if training and random:
            continue
        for a, b in zip(expected[0] + expected[1], found[0] + found[1]):
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5, equal_nan=True), text
    graph = model.graph
    assert [tuple(o.shape[1:]) for o in expected[0]] == [graph.nodes[o].meta["type"].shape for o in graph.outputs]
    assert [str(o.dtype).removeprefix("torch.") for o in expected[0]] == [
        graph.nodes[o].meta["type"].dtype for o in graph.outputs]


def test_the_generator_reaches_every_outcome() -> None:
    """The property is not vacuous: over a fixed sample, specs build, and specs are refused for each new kind."""
    import random as stdlib_random

    from hypothesis import HealthCheck, settings

    outcomes: dict[str, int] = {}

    @settings(max_examples=300, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(hazard_specs())
    def sample(case: tuple[str, int, str, bool]) -> None:
        try:
            resgraph.check(case[0])
            outcomes["builds"] = outcomes.get("builds", 0) + 1
        except resgraph.SpecError as error:
            for d in error.diagnostics:
                for kind in ("inplace", "floating-point", "align_corners", "more than once", "padding_mode",
                             "num_parameters", "keeps its output"):
                    if kind in d.message:
                        outcomes[kind] = outcomes.get(kind, 0) + 1

    stdlib_random.seed(0)
    sample()
    assert outcomes.get("builds", 0) >= 30, outcomes
    for kind in ("inplace", "floating-point", "align_corners", "more than once", "padding_mode", "num_parameters"):
        assert outcomes.get(kind, 0) >= 1, (kind, outcomes)
