"""Held-back cases of the text review (YAML positions, names, expressions): the spec as they pin it.

- A key YAML reads as a number (`1:`, `007:`) is refused at the key with the name rule (test_loader);
  a quoted one that breaks the name rule (`params: {"3": 4}`) is said at the key, of its mapping.
- A tensor has at most 64 dims, the batch dim included (torch's own bound): an input or a layer
  output with more is refused where it is declared or made, in `validate` as in `build`.
"""

from __future__ import annotations

import pathlib

import pytest

import resgraph

HEADER = "resgraph: 1\nname: Net\ninputs: {x: [3, 8]}\n"


def messages(text: str) -> list[str]:
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(text)
    return [d.format() for d in caught.value.diagnostics]


# --- names ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("params", "name"), [('params: {"3": 4}', "3"), ("params: {ok: 1, '2x': 4}", "2x")])
def test_a_parameter_name_that_breaks_the_name_rule_is_said_at_its_key(params: str, name: str) -> None:
    for text, label in ((HEADER + params + "\nlayers:\n  - a: {op: ReLU}\n", "params"),
                        (HEADER + "blocks:\n  b:\n    " + params + "\n    layers:\n      - a: {op: ReLU}\n"
                         "layers:\n  - a: {op: ReLU}\n", "block 'b', params")):
        key = text.index(params) + params.index(name) - 1  # the key's opening quote
        line, column = text.count("\n", 0, key) + 1, key - text.rfind("\n", 0, key)
        assert messages(text) == [f"<string>:{line}:{column}: error: {label}: invalid name {name!r}: names start "
                                  "with an ASCII letter and hold only ASCII letters, digits and '_'"]


# --- rank ----------------------------------------------------------------------------------------

def _ones(count: int) -> str:
    return ", ".join(["1"] * count)


def test_the_rank_bound_is_torchs_own() -> None:
    """64 dims (the batch dim included) is where torch itself stops: a reduction refuses a 65th."""
    torch = pytest.importorskip("torch")
    assert torch.zeros([1] * 64).sum(dim=0).dim() == 63
    with pytest.raises(RuntimeError, match="up to 64 dims"):
        torch.zeros([1] * 65).sum(dim=0)


def test_an_input_of_64_dims_with_its_batch_builds_and_runs() -> None:
    torch = pytest.importorskip("torch")
    model = resgraph.build(f"resgraph: 1\nname: Net\ninputs: {{x: [{_ones(62)}, 3]}}\nlayers:\n"
                           "  - a: {op: ReLU}\n  - m: {op: mean, dim: 1}\n")
    assert model(torch.zeros([2, *[1] * 62, 3])).dim() == 63


@pytest.mark.parametrize("dims", [64, 65, 300, 5000])
def test_an_input_of_more_dims_than_a_tensor_has_is_refused_at_the_input(dims: int) -> None:
    text = f"resgraph: 1\nname: Net\ninputs:\n  x: [{_ones(dims)}]\nlayers:\n  - a: {{op: ReLU}}\n"
    assert messages(text) == [f"<string>:4:3: error: input 'x': the shape would have {dims + 1:,} dims with the batch "
                              "dim; a torch tensor has at most 64 (its reductions and others refuse more); declare "
                              "fewer dims"]


def test_a_layer_whose_output_has_more_dims_than_a_tensor_has_is_refused_there_once() -> None:
    """Said at the layer that adds the dims; the layers reading it are left out (they would repeat it)."""
    text = (HEADER + f"layers:\n  - a: {{op: ReLU}}\n  - r: {{op: reshape, shape: [{_ones(64)}, 24]}}\n"
            "  - m: {op: mean, dim: 1}\n")
    assert messages(text) == ["<string>:6:5: error: layer 'r' (reshape): its output would have 66 dims with the batch "
                              "dim; a torch tensor has at most 64 (its reductions and others refuse more); check the "
                              "arguments that add dims (a reshape's or unsqueeze's)"]


@pytest.mark.parametrize("command", ["validate", "build", "render"])
def test_the_cli_refuses_too_many_dims_without_a_traceback(command: str, tmp_path: pathlib.Path) -> None:
    import subprocess
    import sys

    spec = tmp_path / "deep.yaml"
    spec.write_text(f"resgraph: 1\nname: Net\ninputs: {{x: [{_ones(300)}]}}\nlayers:\n  - a: {{op: ReLU}}\n")
    result = subprocess.run([sys.executable, "-m", "resgraph", command, str(spec), "-o", str(tmp_path / "out.svg")]
                            if command == "render" else [sys.executable, "-m", "resgraph", command, str(spec)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{spec}:3:10: error: input 'x': the shape would have 301 dims" in result.stderr

