"""Every resource a spec can ask for is bounded: expanded size (nested repeats, scale.depth),
expression values (size, magnitude, nesting), imported files (kind and size), seeds.

Each refusal is a located error that comes quickly and uses little memory, not a hang.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import threading
import time

import pytest

import resgraph
import resgraph.expand
from conftest import EXAMPLES, ROOT
from resgraph.cli import main
from resgraph.expand import MAX_EXPANDED_NODES

HEAD = "resgraph: 1\nname: M\ninputs: {x: [4]}\nlayers:\n"


def refused(spec: str | pathlib.Path, **kwargs: object) -> resgraph.SpecError:
    with pytest.raises(resgraph.SpecError) as info:
        resgraph.check(spec, **kwargs)
    for diagnostic in info.value.diagnostics:
        assert diagnostic.location.line >= 1 and diagnostic.message
    return info.value


# --- expanded size ------------------------------------------------------------------------------

NESTED = """resgraph: 1
name: M
{params}blocks:
  a:
    layers:
      - fc: {{op: ReLU}}
  b:
    params: {{k: 1}}
    layers:
      - inner: {{block: a, repeat: {inner}}}
inputs: {{x: [4]}}
layers:
  - outer: {{block: b, repeat: {outer}}}
"""


@pytest.mark.parametrize(("params", "inner", "outer", "scale"), [
    ("", "100000", "100000", ""),  # the issue's 8-line bomb
    ("params: {n: 100000}\n", '"${n}"', '"${n}"', ""),  # the same through parameters
    ("params: {n: 1000}\n", '"${n * 100}"', '"${min(n * 100, 100000)}"', ""),
    ("", "1000", "1000", "scale: {depth: 1}\n"),
    ("", "20", "100000", "scale: {depth: 64}\n"),  # scale.depth multiplies every repeat
])
def test_nested_repeats_are_refused_before_expanding(params: str, inner: str, outer: str, scale: str) -> None:
    spec = NESTED.format(params=params + scale, inner=inner, outer=outer)
    start = time.perf_counter()
    error = refused(spec)
    assert time.perf_counter() - start < 20  # about 0.1 s: nothing was expanded
    (diagnostic,) = error.diagnostics
    line = next(i for i, text in enumerate(spec.splitlines(), 1) if text.startswith("  - outer:"))
    assert str(diagnostic.location) == f"<string>:{line}:23"  # the outer call's `repeat:`
    assert f"would expand the model to more than {MAX_EXPANDED_NODES:,} layers and skips in all" in diagnostic.message
    assert diagnostic.message.startswith("layer 'outer': ")


def test_scale_depth_on_one_repeat_is_bounded_too() -> None:
    spec = NESTED.format(params="scale: {depth: 64}\n", inner="1", outer="100000")
    (diagnostic,) = refused(spec).diagnostics
    assert "6,400,000 instances (repeat 100000 times scale.depth 64)" in diagnostic.message


@pytest.fixture
def small_bound(monkeypatch: pytest.MonkeyPatch) -> int:
    """A bound small enough to test exactly where it falls, and the dynamic checks, quickly."""
    monkeypatch.setattr(resgraph.expand, "MAX_EXPANDED_NODES", 100)
    return 100


def block_spec(repeat: str, extra: str = "") -> str:
    return ("resgraph: 1\nname: M\nblocks:\n  b:\n    params: {k: 1}\n    layers:\n"
            "      - l1: {op: Linear, out_features: 4}\n      - l2: {op: ReLU}\n      - l3: {op: Identity}\n"
            "    skips:\n      - s: {from: x, to: l3}\n"
            f"{extra}inputs: {{x: [4]}}\nlayers:\n  - stage: {{block: b, repeat: {repeat}}}\n")


def test_the_bound_is_on_the_total_exactly(small_bound: int) -> None:
    # 1 top-level layer + 4 nodes per instance: 24 instances make 97, 25 make 101.
    resgraph.check(block_spec("24"))
    refused(block_spec("25"))
    resgraph.check(block_spec('"${24}"'))
    refused(block_spec('"${k * 25}"', "params: {k: 1}\n"))


@pytest.mark.parametrize(("extra", "where"), [
    ("", "layers"),  # no block at all
    ("  - c: {block: nope}\n", "layers"),  # a call to a block that does not exist counts nothing
    ("skips:\n" + "".join(f"  - s{i}: {{from: x, to: l{i}}}\n" for i in range(50)), "skips"),
])
def test_a_spec_whose_own_entries_pass_the_bound_is_refused_at_its_section(small_bound: int, extra: str,
                                                                            where: str) -> None:
    layers = 101 if where == "layers" else 60
    body = "".join(f"  - l{i}: {{op: ReLU}}\n" for i in range(layers))
    spec = "resgraph: 1\nname: M\ninputs: {x: [4]}\nlayers:\n" + body + (extra if where == "layers" else "") + (
        extra if where == "skips" else "")
    (problem,) = refused(spec).diagnostics
    line = spec.splitlines().index(f"{where}:") + 1
    assert (problem.location.line, problem.location.column) == (line, 1)
    entries = sum(line.startswith("  - ") for line in spec.splitlines())
    assert problem.message.startswith(f"the spec has {entries} layers and skips of its own, more than the 100 a "
                                      "model may have")


@pytest.mark.parametrize("repeat", [
    '"${2 if index == 0 else 1}"',  # not known before the first instance
    '"${k}"',
])
def test_sizes_only_known_per_instance_are_bounded_while_expanding(small_bound: int, repeat: str) -> None:
    spec = ("resgraph: 1\nname: M\nblocks:\n  a:\n    layers:\n      - fc: {op: ReLU}\n"
            f"  b:\n    params: {{k: 1}}\n    layers:\n      - inner: {{block: a, repeat: {repeat}}}\n"
            "inputs: {x: [4]}\nlayers:\n  - outer: {block: b, repeat: 60, with: {k: \"${index + 1}\"}}\n")
    error = refused(spec)
    assert "would expand the model to more than 100 layers and skips in all" in str(error)


def test_a_when_expression_does_not_count_against_the_static_bound(small_bound: int) -> None:
    spec = block_spec("1000").replace("repeat: 1000}", 'repeat: 1000, when: "${k > 1}"}').replace(
        "inputs:", "params: {k: 1}\ninputs:") + "  - tail: {op: ReLU}\n"
    assert list(resgraph.check(spec).nodes) == ["x", "tail"]  # left out: never counted, never expanded


def test_the_bound_applies_when_loading_a_saved_model(tmp_path: pathlib.Path) -> None:
    import torch

    model = resgraph.build(HEAD + "  - fc: {op: Linear, out_features: 2}\n")
    path = tmp_path / "m.pt"
    resgraph.save(model, path)
    payload = torch.load(path, weights_only=True)
    payload["spec"] = NESTED.format(params="", inner="100000", outer="100000")
    torch.save(payload, path)
    start = time.perf_counter()
    with pytest.raises(resgraph.SpecError, match="would expand the model to more than"):
        resgraph.load(path)
    assert time.perf_counter() - start < 20  # about 0.2 s: a pathology guard (expanding would take hours)


# --- expressions --------------------------------------------------------------------------------

DOUBLING = "".join(f"  p{i + 1}: \"${{p{i} + p{i}}}\"\n" for i in range(40))


@pytest.mark.parametrize(("params", "expression", "message"), [
    ("", "'%0999999999d' % 1", "% is the remainder of numbers"),
    ("", "'%s%s' % (1, 2)", "% is the remainder of numbers"),
    ("", "round(4, -10**18)", "ndigits must be a whole number from -64 to 64"),
    ("", "round(1.5, 10**6)", "ndigits must be a whole number from -64 to 64"),
    ("", "-" * 990 + "1", "expression nests deeper than 50 levels"),
    ("", "not " * 60 + "True", "expression nests deeper than 50 levels"),
    ("", "[" * 60 + "]" * 60, "nests deeper"),
    ("", "(-8) ** 0.5", "the result is a complex"),
    ("", "int('9' * 100)", "only numbers can be multiplied"),
    ("", "int('9' + '9999999999999999999')", "number is too large"),
    ("", "float('1e300')", "number is too large"),
    ("", "2 ** 64", "number is too large"),
    ("", "9 ** 99", "exponent is too large"),
    ("params:\n  p0: \"" + "x" * 900 + "\"\n" + DOUBLING, "len(p40)", "value is too large"),
    ("params:\n  p0: [" + ", ".join(["1"] * 300) + "]\n" + DOUBLING, "len(p40)", "value is too large"),
    ("params:\n  a: [" + ", ".join(["1"] * 300) + "]\n", f"len([{', '.join(['a'] * 34)}])", "value is too large"),
    ("params:\n  a: [" + ", ".join(["1"] * 3000) + "]\n", "len(sum([a, a, a, a], []))", "value is too large"),
])
def test_expression_values_are_bounded(params: str, expression: str, message: str) -> None:
    spec = f"resgraph: 1\nname: M\n{params}inputs: {{x: [4]}}\nlayers:\n" \
           f"  - fc: {{op: Linear, out_features: \"${{{expression}}}\"}}\n"
    start = time.perf_counter()
    error = refused(spec)
    assert time.perf_counter() - start < 20  # about 0.05 s: a pathology guard (an unbounded value would not end)
    assert message in str(error)


def test_expressions_within_the_bounds_still_work() -> None:
    spec = ("resgraph: 1\nname: M\nparams:\n  widths: [8, 16]\n  tag: \"a\"\n  rows: [{w: 2}, {w: 3}]\n"
            "blocks:\n  b:\n    params: {row: required}\n    layers:\n      - fc: {op: Linear, out_features: 4}\n"
            "inputs: {x: [4]}\nlayers:\n"
            "  - fc: {op: Linear, out_features: \"${round(sum(widths + [8]) / 2.0, -1) // 1 + len(tag + 'bc')}\"}\n"
            "  - table: {block: b, repeat: 2, with: {row: \"${rows[index]}\"}}\n")
    graph = resgraph.check(spec)
    assert graph.nodes["fc"].meta["type"].shape == (23,)
    assert [instance.params["row"] for instance in graph.nodes["table"].instances] == [{"w": 2}, {"w": 3}]


# --- imported files -----------------------------------------------------------------------------

def importing(path: str | pathlib.Path) -> str:
    return f"resgraph: 1\nname: M\nimports: ['{path}']\ninputs: {{x: [4]}}\nlayers:\n  - fc: {{op: ReLU}}\n"


def finishes(function: object, seconds: float = 60) -> BaseException | None:
    """Run `function` in a thread; fail if it blocks. Returns what it raised."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            function()  # type: ignore[operator]
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - returned to the caller
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, "blocked"
    return outcome[0]


@pytest.mark.parametrize(("make", "message"), [
    (lambda d: "/dev/zero", "/dev/zero: not a regular file (a character device)"),
    (lambda d: "/dev/null", "/dev/null: not a regular file (a character device)"),
    (lambda d: (os.mkfifo(d / "fifo"), d / "fifo")[1], "not a regular file (a pipe)"),
    (lambda d: ((d / "link").symlink_to("/dev/zero"), d / "link")[1], "not a regular file (a character device)"),
    (lambda d: d, "is a directory"),
    (lambda d: d / "missing.yaml", "no such file"),
])
def test_imports_are_regular_files_only(make: object, message: str, tmp_path: pathlib.Path) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    error = finishes(lambda: resgraph.check(importing(path)))
    assert isinstance(error, resgraph.SpecError) and message in str(error)
    assert str(error).startswith("<string>:3:12: error: cannot import ")
    assert not str(error).rstrip().endswith(":")  # a reason is always given


def test_a_huge_import_is_refused_before_it_is_read(tmp_path: pathlib.Path) -> None:
    huge = tmp_path / "huge.yaml"
    with open(huge, "wb") as handle:
        handle.truncate(3 * 2**30)  # 3 GiB, sparse: no disk used
    probe = ("import re, sys, resgraph\ntry:\n    resgraph.check(sys.argv[1])\n"
             "except resgraph.SpecError as exc:\n    print(exc.diagnostics[0].message)\n"
             "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n")
    result = subprocess.run([sys.executable, "-c", probe, importing(huge)], capture_output=True, text=True, cwd=ROOT,
                            timeout=300)
    message, peak_kib = result.stdout.strip().splitlines()
    assert message == f"cannot import '{huge}': {huge}: is 3072.0 MiB; resgraph reads spec files up to 16 MiB"
    assert int(peak_kib) < 1024 * 1024  # the 3 GiB were never read (reading them cost 6 GB before)


@pytest.mark.parametrize("content", [
    b"root:x:0:0:SECRET-TOKEN-1234:/root:/bin/bash\n",
    b"SECRET-TOKEN-1234: a\nSECRET-TOKEN-1234: b\n",  # YAML with a duplicate key: still not echoed
    b"{SECRET-TOKEN-1234: [unclosed\n",
    b"- SECRET-TOKEN-1234\n- !!python/object:os.system x\n",
    b"\xff\xfeSECRET-TOKEN-1234\n",
    b"blocks: {SECRET-TOKEN-1234: 1}\n",
])
def test_import_errors_never_show_the_contents_of_other_files(content: bytes, tmp_path: pathlib.Path) -> None:
    path = tmp_path / "secret.txt"
    path.write_bytes(content)
    error = refused(importing(path))
    assert "SECRET" not in str(error)
    assert "not a resgraph block library" in str(error) or "not UTF-8" in str(error)


def test_a_block_library_through_a_symlink_is_fine(tmp_path: pathlib.Path) -> None:
    (tmp_path / "lib.yaml").symlink_to(EXAMPLES / "blocks" / "resnet.yaml")
    spec = ("resgraph: 1\nname: M\nimports: [lib.yaml]\ninputs: {x: [64, 8, 8]}\nlayers:\n"
            "  - b: {block: basic, with: {planes: 64}}\n")
    (tmp_path / "spec.yaml").write_text(spec)
    assert resgraph.check(tmp_path / "spec.yaml").nodes["b"].meta["type"].shape == (64, 8, 8)


def test_a_spec_file_named_on_the_command_line_is_read_up_to_the_limit(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "/dev/zero"]) == 2
    assert capsys.readouterr().err.strip() == "resgraph: error: /dev/zero: is larger than that; resgraph reads " \
                                              "spec files up to 16 MiB"


# --- seeds --------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [2**70, 2**64, -(2**63) - 1])
def test_seeds_out_of_range_are_clear_errors(seed: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", str(EXAMPLES / "tutorial.yaml"), "--seed", str(seed)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"resgraph: error: seed {seed} is not usable") and "Traceback" not in err
    with pytest.raises(resgraph.UsageError, match="a seed is a whole number from -2\\*\\*63 to 2\\*\\*64 - 1"):
        resgraph.build(HEAD + "  - fc: {op: Linear, out_features: 2}\n", seed=seed)


def test_seeds_at_the_ends_of_the_range_work() -> None:
    for seed in (2**64 - 1, 0):
        first = resgraph.build(HEAD + "  - fc: {op: Linear, out_features: 2}\n", seed=seed)
        again = resgraph.build(HEAD + "  - fc: {op: Linear, out_features: 2}\n", seed=seed)
        assert first.fc.weight.equal(again.fc.weight)


@pytest.mark.parametrize("limit", ["5", -1, 2.5, True])
def test_a_parameter_limit_that_is_no_count_is_a_usage_error(limit: object) -> None:
    with pytest.raises(resgraph.UsageError, match=rf"^max_params={limit!r} is no parameter limit: give a whole number"):
        resgraph.build(HEAD + "  - fc: {op: Linear, out_features: 4}\n", max_params=limit)  # type: ignore[arg-type]


def test_a_parameter_limit_of_zero_refuses_any_weight_and_none_none() -> None:
    spec = HEAD + "  - fc: {op: Linear, out_features: 4}\n"
    with pytest.raises(resgraph.SpecError, match="more than the limit of 0"):
        resgraph.build(spec, max_params=0)
    assert sum(p.numel() for p in resgraph.build(spec, max_params=None).parameters()) == 20


@pytest.mark.parametrize("call", ["save", "load", "write_diagram", "to_onnx"])
@pytest.mark.parametrize("path", [123, None, ["model.pt"]], ids=["int", "None", "list"])
def test_a_path_that_is_no_path_is_a_usage_error(call: str, path: object) -> None:
    model = resgraph.build(HEAD + "  - fc: {op: Linear, out_features: 4}\n", seed=0)
    run = {"save": lambda: resgraph.save(model, path), "load": lambda: resgraph.load(path),
           "write_diagram": lambda: resgraph.write_diagram(resgraph.render(model), path),
           "to_onnx": lambda: resgraph.to_onnx(model, path)}[call]
    said = rf"^{call}'s path is a file path \(a str, bytes or os.PathLike\), not {type(path).__name__}$"
    with pytest.raises(resgraph.UsageError, match=said):
        run()


def test_a_path_given_as_bytes_is_the_file_it_names(tmp_path: pathlib.Path) -> None:
    model = resgraph.build(HEAD + "  - fc: {op: Linear, out_features: 4}\n", seed=0)
    resgraph.save(model, os.fsencode(tmp_path / "model.pt"))
    again = resgraph.load(os.fsencode(tmp_path / "model.pt"))
    assert [(k, v.tolist()) for k, v in again.state_dict().items()] == [
        (k, v.tolist()) for k, v in model.state_dict().items()]
