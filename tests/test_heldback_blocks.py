"""Held-back cases of blocks, parameters and repeats: nested calls, per-instance names, and errors
reported once, where they happen."""

from __future__ import annotations

import textwrap

import pytest

import resgraph
from resgraph.errors import SpecError


def _errors(text: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        resgraph.check(textwrap.dedent(text))
    return [line for line in str(caught.value).splitlines() if ": error: " in line]


def test_a_failed_with_value_is_reported_once_not_again_in_the_defaults_computed_from_it() -> None:
    errors = _errors("""\
        resgraph: 1
        name: P
        params: {widths: [4, 8, 12]}
        inputs:
          x: [4]
        blocks:
          lin:
            params: {c: 4, d: "${c * 2}"}
            layers:
              - fc: {op: Linear, out_features: "${d}"}
        layers:
          - a: {block: lin, repeat: 4, with: {c: "${widths[index]}"}}
        """)
    assert errors == ["<string>:12:45: error: in ${widths[index]}: index 3 is out of range for a list of 3"]


def test_a_failed_block_default_is_reported_once_not_again_in_later_defaults() -> None:
    errors = _errors("""\
        resgraph: 1
        name: P
        inputs:
          x: [4]
        blocks:
          lin:
            params: {c: "${1 // 0}", d: "${c + 1}", e: "${d * 2}"}
            layers:
              - fc: {op: Linear, out_features: "${e}"}
        layers:
          - a: {block: lin}
        """)
    assert errors == ["<string>:7:20: error: in ${1 // 0}: cannot compute: integer division or modulo by zero"]
