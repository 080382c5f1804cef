"""Every kind of mistake a user can make is reported with its exact message and line:col.

Each tests/bad_specs/NAME.yaml has a golden NAME.expected holding what `resgraph validate`
prints. The CLI must exit 1 and never show a traceback.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

import resgraph
from conftest import BAD_SPECS, ROOT, check_golden

CASES = sorted(p.stem for p in BAD_SPECS.glob("*.yaml"))


def test_the_corpus_covers_many_kinds_of_mistake() -> None:
    assert len(CASES) >= 25


@pytest.mark.parametrize("case", CASES)
def test_error_message_and_location(case: str) -> None:
    path = f"tests/bad_specs/{case}.yaml"
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(path)
    diagnostics = caught.value.diagnostics
    assert diagnostics, "a SpecError must carry at least one diagnostic"
    for diagnostic in diagnostics:
        assert diagnostic.location.file == path
        assert diagnostic.location.line >= 1 and diagnostic.location.column >= 1
    check_golden(BAD_SPECS / f"{case}.expected", caught.value.format() + "\n")


def test_cli_exits_1_without_traceback_on_every_bad_spec() -> None:
    # One process for the whole corpus: `validate` accepts many files and reports each.
    paths = [f"tests/bad_specs/{case}.yaml" for case in CASES]
    result = subprocess.run([sys.executable, "-m", "resgraph", "validate", *paths],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    for path in paths:
        assert f"{path}:" in result.stderr, f"no error reported for {path}"
    assert result.stdout == ""


@pytest.mark.parametrize("case", ["non_integer_stride", "unknown_argument", "yaml_syntax"])
def test_cli_build_exits_1_without_traceback(case: str) -> None:
    result = subprocess.run([sys.executable, "-m", "resgraph", "build", f"tests/bad_specs/{case}.yaml"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"tests/bad_specs/{case}.yaml:")
