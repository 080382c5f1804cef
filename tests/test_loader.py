"""Loading YAML: positions for every value and key, and nothing unsafe or ambiguous gets through."""

from __future__ import annotations

import time

import pytest

from resgraph.errors import SpecError
from resgraph.loader import MAX_NODES, load_text


def errors(text: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_text(text, "s.yaml")
    return [d.format() for d in caught.value.diagnostics]


def test_positions_of_values_and_keys_are_one_based() -> None:
    loaded = load_text("name: M\nlayers:\n  - conv: {op: Conv2d, out_channels: 8}\n", "s.yaml")
    assert loaded.data == {"name": "M", "layers": [{"conv": {"op": "Conv2d", "out_channels": 8}}]}
    source = loaded.source
    assert str(source.locate(("name",))) == "s.yaml:1:7"
    assert str(source.locate(("layers", 0, "conv"), key=True)) == "s.yaml:3:5"
    assert str(source.locate(("layers", 0, "conv", "out_channels"))) == "s.yaml:3:38"
    assert str(source.locate(("layers", 0, "conv", "missing"))) == "s.yaml:3:11"  # nearest parent


def test_duplicate_keys_are_errors_not_silently_overwritten() -> None:
    assert errors("a: 1\nb: 2\na: 3\n") == [
        "s.yaml:3:1: error: duplicate key 'a' (first defined at line 1, column 1)\n"
        "  hint: YAML keeps only one of them; remove or rename one"]


def test_every_duplicate_is_reported() -> None:
    assert len(errors("a: {x: 1, x: 2}\nb: {y: 1, y: 2}\n")) == 2


@pytest.mark.parametrize("text", [
    "x: !!python/object/apply:os.system ['true']\n",
    "x: !!python/name:os.system\n",
    "x: !!binary aGVsbG8=\n",
    "x: !custom 3\n",
    "x: !!set {a, b}\n",
])
def test_non_core_tags_are_refused(text: str) -> None:
    (message,) = errors(text)
    assert "is not allowed in a spec" in message and message.startswith("s.yaml:1:4:")


def test_merge_keys_supply_defaults_and_explicit_keys_win() -> None:
    loaded = load_text("base: &b {op: Conv2d, kernel_size: 3}\nconv: {<<: *b, kernel_size: 5}\n")
    assert loaded.data["conv"] == {"op": "Conv2d", "kernel_size": 5}


def test_dates_and_non_string_keys() -> None:
    assert load_text("description: 2026-11-27\n").data == {"description": "2026-11-27"}
    (message,) = errors("1: one\n")
    assert "mapping key 1 must be a string" in message or "must be a string" in message


def test_recursive_alias_is_refused() -> None:
    (message,) = errors("a: &x\n  - *x\n")
    assert "recursive YAML alias" in message


def test_alias_expansion_bomb_is_bounded_in_time() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for level in "bcdefghi":
        previous = chr(ord(level) - 1)
        bomb += f"{level}: &{level} [*{previous}, *{previous}, *{previous}, *{previous}, *{previous}, " \
                f"*{previous}, *{previous}, *{previous}, *{previous}, *{previous}]\n"
    start = time.perf_counter()
    messages = errors(bomb)
    assert time.perf_counter() - start < 2.0
    assert any(f"more than {MAX_NODES:,} YAML nodes" in m for m in messages)


def test_deep_nesting_is_refused_not_crashed() -> None:
    (message,) = errors("a: " + "[" * 100 + "]" * 100 + "\n")
    assert "nests deeper than" in message
    very_deep = "a: " + "[" * 5000 + "]" * 5000 + "\n"
    assert errors(very_deep)  # either too deep to parse or too deep to accept; never a crash


def test_syntax_errors_point_at_the_problem() -> None:
    (message,) = errors("a: [1, 2\nb: 3\n")
    assert message.startswith("s.yaml:2:") and "YAML syntax error" in message


def test_byte_order_mark_and_empty_documents() -> None:
    assert load_text("\ufeffa: 1\n").data == {"a": 1}
    assert errors("") == ["s.yaml:1:1: error: the spec is empty"]
