"""Shared fixtures: paths to the examples and the invalid-spec corpus, and a golden-file helper.

Set RESGRAPH_UPDATE_GOLDENS=1 to rewrite golden files from the current output (then review
the diff: a golden file is a specification, not a snapshot to wave through).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

# Run by hand in an environment with torchvision (see its docstring); not part of the suite.
collect_ignore = ["fixtures/generate_torchvision.py"]

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
BAD_SPECS = pathlib.Path(__file__).resolve().parent / "bad_specs"

# Examples that must build; examples/tutorial_literal.yaml must fail (see test_examples.py).
FAILING_EXAMPLES = {"tutorial_literal.yaml"}
BUILDING_EXAMPLES = sorted(p.name for p in EXAMPLES.glob("*.yaml") if p.name not in FAILING_EXAMPLES)
# Tests run every example on a small input: these parameters shrink it where a spec declares them.
# The language models' widths, depths and vocabularies shrink too (GPT-2's and Llama's own parameter names).
SMALL_INPUTS = {"image_size": 64, "size": 188, "seq_len": 16, "vocab_size": 128, "n_positions": 32,
                "n_layer": 2, "n_embd": 64, "n_head": 4, "n_layers": 2, "dim": 64, "n_heads": 4, "multiple_of": 32}


def default_signals() -> None:
    """A child's `preexec_fn`: SIGINT and SIGHUP at their default action, as a program started at a terminal
    finds them.

    A job a shell starts in the background without job control (`pytest &`, some CI runners) inherits
    SIGINT *ignored*, and one under `nohup` SIGHUP; Python then never raises KeyboardInterrupt, and a
    hang-up does nothing. The tests of those signals send them to a child that must see what a
    foreground program sees.
    """
    for number in (signal.SIGINT, signal.SIGHUP):
        signal.signal(number, signal.SIG_DFL)


def small_params(example: str) -> dict[str, int]:
    """The SMALL_INPUTS parameters that `example` declares."""
    import resgraph

    declared = resgraph.load_spec(EXAMPLES / example).params
    return {name: value for name, value in SMALL_INPUTS.items() if name in declared}


# Drawing SVG/PNG/PDF needs Graphviz's `dot` program; CI installs it, a fresh machine may not have it.
needs_dot = pytest.mark.skipif(shutil.which("dot") is None,
                               reason="Graphviz's `dot` program is not installed (apt-get install graphviz; CI has it)")

BLOCK_LIBRARIES = sorted(p.relative_to(EXAMPLES).as_posix() for p in (EXAMPLES / "blocks").glob("*.yaml"))


def run_cli(*args: str, cwd: pathlib.Path | None = None) -> subprocess.CompletedProcess[str]:
    """`resgraph ARGS` in a fresh interpreter, as a user runs it: its exit code and what it printed."""
    return subprocess.run([sys.executable, "-m", "resgraph", *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd)


def spec_errors(text: str) -> list[str]:
    """Every diagnostic `resgraph.check` raises for spec `text`, formatted as the CLI prints them."""
    import resgraph

    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(text)
    return [d.format() for d in caught.value.diagnostics]


def check_golden(path: pathlib.Path, actual: str) -> None:
    """Assert `actual` equals the golden file at `path` (or rewrite it when asked to)."""
    if os.environ.get("RESGRAPH_UPDATE_GOLDENS") == "1":
        path.write_text(actual, encoding="utf-8")
        return
    if not path.exists():
        pytest.fail(f"missing golden file {path.name}; run with RESGRAPH_UPDATE_GOLDENS=1 and review it")
    assert actual == path.read_text(encoding="utf-8")


@pytest.fixture(autouse=True)
def _run_from_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Error messages name files relative to the repository root, as a user there would see."""
    monkeypatch.chdir(ROOT)


@pytest.fixture
def call_counts(monkeypatch: pytest.MonkeyPatch) -> Callable[..., dict[str, int]]:
    """`call_counts((module, "name"), ...)`: counts the calls of those module functions (recursive
    calls too, made through the module) for the rest of the test, in the dict it returns: a test
    bounds work by counting it, not by the clock."""
    def count(*targets: tuple[Any, str]) -> dict[str, int]:
        calls = {name: 0 for _, name in targets}
        for module, name in targets:
            monkeypatch.setattr(module, name, _counting(getattr(module, name), name, calls))
        return calls

    return count


def _counting(function: Callable[..., Any], name: str, calls: dict[str, int]) -> Callable[..., Any]:
    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[name] += 1
        return function(*args, **kwargs)

    return counted
