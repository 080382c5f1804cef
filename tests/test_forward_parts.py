"""A long forward is written in parts: `forward` checks its inputs and calls `_forward_part_1`,
`_forward_part_2`, ... in turn, each a method of at most `codegen.MAX_STATEMENTS` statements that
takes the values made before it and still read, and returns the ones read after it. Lowering
compiles each part on its own (CPython's compiler holds about 3 KB per statement of the function it
compiles). The parts compute exactly what one function computes: same statements, same outputs
and gradients, same exports, one graph for torch.compile.
"""

from __future__ import annotations

import inspect
import linecache
import pathlib
import re
import traceback
import weakref
from typing import Any

import pytest
import torch
from test_export import example_inputs, import_file

import resgraph
import resgraph.codegen as codegen
from conftest import BUILDING_EXAMPLES, EXAMPLES, small_params
from resgraph.codegen import PART_PREFIX, functions_of, generate_forward
from resgraph.graph import GraphBuilder
from resgraph.lower import lower
from resgraph.shapes import infer_shapes


def chain(n: int, width: int = 4) -> dict[str, Any]:
    """n Linear layers, and a skip adding l{i} into l{i+2} for every even i."""
    layers = [{f"l{i}": {"op": "Linear", "out_features": width}} for i in range(n)]
    skips = [{f"s{i}": {"from": f"l{i}", "to": f"l{i + 2}"}} for i in range(0, n - 2, 2)]
    return {"resgraph": 1, "name": "Chain", "inputs": {"x": [width]}, "layers": layers, "skips": skips}


def functions(source: str) -> dict[str, list[str]]:
    """Each function of a generated source -> its non-empty lines."""
    return {name: [line for line in text.splitlines() if line] for name, _, text in functions_of(source)}


def statements(source: str) -> list[str]:
    """The computing statements of a generated source, in order, with the parts' calls, parameters
    and returns left out: what one function and its parts must have alike."""
    kept = []
    for name, lines in functions(source).items():
        for line in lines[1:]:
            text = line.strip()
            if PART_PREFIX in text or text.startswith(("return", "if not torch.compiler", "raise ValueError")):
                continue
            if name == "forward" and PART_PREFIX in source and text.startswith("del "):
                continue  # what forward lets go of after a part: no statement of one function
            kept.append(text)
    return kept


def test_a_short_forward_is_one_function() -> None:
    model = resgraph.build(chain(40), seed=0)
    assert list(functions(model.code)) == ["forward"]
    assert len(statements(model.code)) == 40 + 19 <= codegen.MAX_STATEMENTS


def test_a_long_forward_is_parts_of_at_most_max_statements_that_compute_the_chain() -> None:
    n = 2_500  # 2,500 layers and 1,249 skips: 3,749 statements, 4 parts
    model = resgraph.build(chain(n), seed=0)
    parts = functions(model.code)
    assert list(parts) == ["forward", *(f"{PART_PREFIX}{k}" for k in (1, 2, 3, 4))]
    sizes = [len(lines) - 2 for name, lines in parts.items() if name != "forward"]  # less `def` and `return`
    assert sum(sizes) == n + (n - 2) // 2 and max(sizes) <= codegen.MAX_STATEMENTS and max(sizes) - min(sizes) <= 1
    # forward: the input guard, then each part called with what the one before returned.
    # Part 1 is l0-l624 and their 312 skips (937 statements); l624 alone is read after it.
    calls = [line.strip() for line in parts["forward"] if PART_PREFIX in line]
    assert calls[0] == f"l624 = self.{PART_PREFIX}1(x)" and calls[-1].startswith(f"return self.{PART_PREFIX}4(")
    assert parts["forward"][1].strip().startswith("if not torch.compiler.is_compiling()")
    x = torch.randn(3, 4)
    values = {"x": x}
    with torch.no_grad():
        for i in range(n):
            values[f"l{i}"] = getattr(model, f"l{i}")(values[f"l{i - 1}"] if i else x)
            if i >= 2 and i % 2 == 0:  # skip s{i-2}: l{i-2} added into l{i}
                values[f"l{i}"] = values[f"l{i}"] + values[f"l{i - 2}"]
        assert torch.equal(model(x), values[f"l{n - 1}"])


def test_values_pass_between_parts_in_the_order_they_were_made_and_only_while_read(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A long skip crosses parts, the input is read again in the last part, a value made early is
    returned at the end; each part takes and returns exactly what is made before it and read after."""
    b = GraphBuilder("Net")
    b.input("x", [4])
    b.layer("a", "Linear", out_features=4)
    b.layer("b", "ReLU")
    b.layer("c", "Linear", out_features=4)
    b.layer("d", "Tanh")
    b.layer("e", "Linear", "x", out_features=4)
    b.skip("long", "a", "e")
    b.layer("f", "Sigmoid")
    graph = infer_shapes(b.build(["b", "f"]))
    monkeypatch.setattr(codegen, "MAX_STATEMENTS", 2)  # 7 statements: parts of 1, 2, 2 and 2
    assert generate_forward(graph) == (
        "def forward(self, x):\n"
        f"    x, a = self.{PART_PREFIX}1(x)\n"
        f"    x, a, b, c = self.{PART_PREFIX}2(x, a)\n"
        f"    a, b, e = self.{PART_PREFIX}3(x, a, b, c)\n"
        "    del x, c\n"
        f"    return self.{PART_PREFIX}4(a, b, e)\n"
        "\n"
        f"def {PART_PREFIX}1(self, x):\n"
        "    a = self.a(x)  # (N, 4)\n"
        "    return x, a\n"
        "\n"
        f"def {PART_PREFIX}2(self, x, a):\n"
        "    b = self.b(a)  # (N, 4)\n"
        "    c = self.c(b)  # (N, 4)\n"
        "    return x, a, b, c\n"
        "\n"
        f"def {PART_PREFIX}3(self, x, a, b, c):\n"
        "    d = self.d(c)  # (N, 4)\n"
        "    e = self.e(x)  # (N, 4)\n"
        "    return a, b, e\n"
        "\n"
        f"def {PART_PREFIX}4(self, a, b, e):\n"
        "    e += a  # (N, 4) skip long: add a (identity)\n"
        "    f = self.f(e)  # (N, 4)\n"
        "    return b, f\n")
    module = lower(graph)
    x = torch.randn(2, 4)
    a = module.a(x)
    with torch.no_grad():
        b_, f = module(x)
        assert torch.equal(b_, module.b(a)) and torch.equal(f, module.f(module.e(x) + a))


def test_large_values_made_in_a_part_die_there_after_their_last_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    b = GraphBuilder("Net")
    b.input("x", [16_384])  # LARGE: each value is deleted after its last reader
    for name in "abcdef":
        b.layer(name, "Tanh")
    graph = infer_shapes(b.build())
    monkeypatch.setattr(codegen, "MAX_STATEMENTS", 4)
    parts = functions(generate_forward(graph))
    assert parts[f"{PART_PREFIX}1"][1:] == ["    a = self.a(x)  # (N, 16384)", "    del x",
                                            "    b = self.b(a)  # (N, 16384)", "    del a",
                                            "    c = self.c(b)  # (N, 16384)", "    del b", "    return c"]
    assert parts[f"{PART_PREFIX}2"][1:] == ["    d = self.d(c)  # (N, 16384)", "    del c",
                                            "    e = self.e(d)  # (N, 16384)", "    del d",
                                            "    f = self.f(e)  # (N, 16384)", "    return f"]


def values_alive_at_the_last_layer(model: torch.nn.Module, layers: int, width: int) -> int:
    """How many layer outputs are still referenced when the last layer runs (no autograd)."""
    made: list[weakref.ref[torch.Tensor]] = []
    alive: list[int] = []
    for i in range(layers):
        module = getattr(model, f"t{i}")
        module.register_forward_hook(lambda _, args, out: made.append(weakref.ref(out)))
    getattr(model, f"t{layers - 1}").register_forward_pre_hook(
        lambda *_: alive.append(sum(ref() is not None for ref in made)))
    with torch.no_grad():
        model(torch.randn(1, width))
    return alive[0]


@pytest.mark.parametrize("layers", [12, 48])
def test_a_forward_in_parts_holds_at_most_one_boundarys_values_more_than_one_function(
        layers: int, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = {"resgraph": 1, "name": "Tanhs", "inputs": {"x": [16_384]},  # LARGE: each value dies after its reader
            "layers": [{f"t{i}": {"op": "Tanh"}} for i in range(layers)]}
    whole = values_alive_at_the_last_layer(resgraph.build(spec), layers, 16_384)
    monkeypatch.setattr(codegen, "MAX_STATEMENTS", 3)
    split = resgraph.build(spec)
    assert f"{PART_PREFIX}{layers // 3}" in split.code
    assert values_alive_at_the_last_layer(split, layers, 16_384) <= whole + 1  # the value passed into the part


@pytest.fixture(scope="module")
def long_model() -> resgraph.CompiledModule:
    return resgraph.build(chain(2_100), seed=1)


def test_each_part_shows_its_own_lines_in_inspect_and_tracebacks(long_model: resgraph.CompiledModule) -> None:
    code = long_model.code
    for name in functions(code):
        function = getattr(type(long_model), name)
        assert function.__qualname__ == f"Chain.{name}"
        source = inspect.getsource(function)
        assert source in code and source.startswith(f"def {name}(")
        first = function.__code__.co_firstlineno
        assert linecache.getline(function.__code__.co_filename, first) == code.splitlines(keepends=True)[first - 1]

    class Broken(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("broken layer")

    model = resgraph.build(chain(2_100), seed=1)  # 3,149 statements: parts of 787 or 788
    model.l1900 = Broken()  # statement 2,849: in part 4
    with pytest.raises(RuntimeError, match="broken layer") as failure:
        model(torch.randn(1, 4))
    frame = [entry for entry in traceback.extract_tb(failure.value.__traceback__) if "resgraph-generated" in
             entry.filename][-1]
    assert frame.name == f"{PART_PREFIX}4" and frame.line == "l1900 = self.l1900(l1899)  # (N, 4)"


def test_parts_are_one_graph_to_torch_compile_and_export(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codegen, "MAX_STATEMENTS", 7)
    model = resgraph.build(chain(30), seed=1).eval()  # 44 statements: 7 parts
    assert f"{PART_PREFIX}7" in model.code
    x = torch.randn(2, 4)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    bigger = torch.randn(5, 4)
    with torch.no_grad():
        assert torch.equal(program.module()(bigger), model(bigger))


def small_inputs(model: torch.nn.Module) -> list[torch.Tensor]:
    torch.manual_seed(0)
    return example_inputs(model)


@pytest.mark.parametrize("example", BUILDING_EXAMPLES)
def test_every_example_in_parts_of_three_statements_is_the_same_model(example: str, tmp_path: pathlib.Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Every forward cut into parts of 3 statements (block forwards too) against the same build in
    one function: the same statements, outputs, input and parameter gradients, and the exported
    file computes the same."""
    params = small_params(example)
    whole = resgraph.build(EXAMPLES / example, params=params, seed=0)
    monkeypatch.setattr(codegen, "MAX_STATEMENTS", 3)
    split = resgraph.build(EXAMPLES / example, params=params, seed=0)
    assert PART_PREFIX in split.code or len(statements(whole.code)) <= 3
    codes = {name: module.code for name, module in whole.named_modules() if hasattr(module, "code")}
    for name, module in split.named_modules():
        if hasattr(module, "code"):
            assert statements(module.code) == statements(codes[name]), name
            assert all(len([line for line in lines[1:] if not line.strip().startswith(("del ", "return "))]) <= 3
                       for part, lines in functions(module.code).items() if part != "forward")
    outputs = []
    for model in (whole, split):
        model.train(False)
        inputs = [x.requires_grad_() if x.is_floating_point() else x for x in small_inputs(model)]
        result = model(*inputs)
        result = result if isinstance(result, tuple) else (result,)
        sum(value.float().sum() for value in result).backward()
        outputs.append((result, [x.grad for x in inputs], {k: p.grad for k, p in model.named_parameters()}))
    (expected, input_grads, grads), (actual, split_input_grads, split_grads) = outputs
    assert all(torch.equal(a, b) for a, b in zip(actual, expected))
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(split_input_grads, input_grads))
    assert grads.keys() == split_grads.keys()
    assert all((grads[k] is None and split_grads[k] is None) or torch.equal(grads[k], split_grads[k]) for k in grads)
    source = resgraph.to_python(split)
    assert re.search(rf"\n    def {PART_PREFIX}1\(self", source) or PART_PREFIX not in split.code
    path = tmp_path / f"split_{example.removesuffix('.yaml')}.py"
    path.write_text(source)
    exported = getattr(import_file(path, path.stem), type(split).__name__)().eval()
    exported.load_state_dict(split.state_dict(), strict=True)
    inputs = small_inputs(split)
    with torch.no_grad():
        got, want = exported(*inputs), whole(*inputs)
    for a, b in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
        assert torch.equal(a, b)
