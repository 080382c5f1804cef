"""Loading YAML: positions for every value and key, and nothing unsafe or ambiguous gets through."""

from __future__ import annotations

import os
import pathlib
import re
import stat
import subprocess
import sys
import time
from typing import Any

import pytest
import yaml

from resgraph import loader
from resgraph.errors import SpecError
from resgraph.loader import MAX_BYTES, MAX_NODES, load_file, load_text


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


@pytest.mark.parametrize(("text", "message", "hint"), [
    ("k: 010\n", "010 has a leading zero: YAML 1.1 reads it as octal (8), YAML 1.2 as 10", "write 10, or 8"),
    ("k: -0_17\n", "-0_17 has a leading zero: YAML 1.1 reads it as octal (-15), YAML 1.2 as -17", "write -17, or -15"),
    ("k: 1:30\n", "1:30 is a base-60 number in YAML 1.1 and text in YAML 1.2", "quote it for text"),
    ("k: [2, 190:20:30.15]\n", "190:20:30.15 is a base-60 number in YAML 1.1", "quote it"),
    ("k: yes\n", "yes is true in YAML 1.1 and text in YAML 1.2", "write true"),
    ("k: OFF\n", "OFF is false in YAML 1.1 and text in YAML 1.2", "write false"),
    # a key is a name: `true: 1` would make it none ("mapping keys must be plain strings"); quoting keeps it
    ("on: 1\n", "on is true in YAML 1.1", "quote it, as a key is a name: 'on'"),
    ("k: {off: 1}\n", "off is false in YAML 1.1", "quote it, as a key is a name: 'off'"),
    ("010: 1\n", "010 has a leading zero", "quote it, as a key is a name: '010'"),
    # YAML 1.2's core schema has no binary; its integers are any digits (`08`) and `0o` octals, which 1.1 leaves text
    ("k: 0b100\n", "0b100 is the binary number 4 in YAML 1.1 and text in YAML 1.2", "write 4 for the number"),
    ("k: [1, -0b1_1]\n", "-0b1_1 is the binary number -3 in YAML 1.1 and text in YAML 1.2", "write -3"),
    ("k: 08\n", "08 is text in YAML 1.1 and the integer 8 in YAML 1.2", "write 8 for the number, or quote it"),
    ("k: -019\n", "-019 is text in YAML 1.1 and the integer -19 in YAML 1.2", "write -19"),
    ("k: 0o17\n", "0o17 is text in YAML 1.1 and the integer 15 in YAML 1.2", "write 15"),
    ("k: {a: 09}\n", "09 is text in YAML 1.1 and the integer 9 in YAML 1.2", "quote it for text"),
])
def test_values_yaml_1_1_and_1_2_read_differently_are_refused_where_written(text: str, message: str,
                                                                           hint: str) -> None:
    """PyYAML (YAML 1.1) read `010` as 8, `1:30` as 90 and `yes` as True, silently."""
    (error,) = errors(text)
    column = text.index(message.split()[0]) + 1
    assert error.startswith(f"s.yaml:1:{column}: error: {message}") and hint in error.partition("\n  hint: ")[2]


@pytest.mark.parametrize("key", ["on", "off", "yes", "No", "010"])
def test_a_key_yaml_1_1_reads_otherwise_is_read_once_quoted_as_its_hint_says(key: str) -> None:
    (error,) = errors(f"{key}: 1\n")
    hint = error.partition("\n  hint: ")[2]
    assert hint == f"quote it, as a key is a name: '{key}'"
    assert load_text(f"{hint.rpartition(': ')[2]}: 1\n").data == {key: 1}


def test_values_both_yaml_versions_read_alike_are_read() -> None:
    text = "a: 007\nb: 0\nc: 0x1f\nd: 1_000\ne: true\nf: 'yes'\ng: \"1:30\"\nh: '010'\ni: !!bool yes\n"
    assert load_text(text).data == {"a": 7, "b": 0, "c": 31, "d": 1000, "e": True, "f": "yes", "g": "1:30",
                                    "h": "010", "i": True}  # (a tag says which reading it means)



@pytest.mark.parametrize(("written", "fixed"), [
    ("1__0", "10"), ("10_", "10"), ("-1__000", "-1000"), ("+10_", "+10"), ("0.5_", "0.5"), ("1_.5", "1.5"),
    ("1._5", "1.5"), ("1__0.25", "10.25"), ("1.5_e+3", "1.5e+3"), ("0x_1F", "0x1F"), ("0x1F_", "0x1F"),
    ("!!int 1__0", "10"), ("!!float 2._5", "2.5")])
def test_an_underscore_not_between_two_digits_is_refused_where_written(written: str, fixed: str) -> None:
    """YAML 1.1 drops every underscore of a number, so PyYAML read `1__0` and `10_` as 10, silently."""
    (error,) = errors(f"k: [1, {written}]\n")
    shown = written.split()[-1]
    assert error == (f"s.yaml:1:8: error: {shown} has an underscore that is not between two digits\n"
                     f"  hint: write {fixed}; an underscore only groups digits, as in 1_000")


def test_underscores_grouping_digits_are_read() -> None:
    assert load_text("a: 1_000\nb: -2_5\nc: 0x7F_FF\nd: 1_000.000_5\ne: !!int 3_0\nf: '1__0'\ng: _1\n").data == {
        "a": 1000, "b": -25, "c": 0x7FFF, "d": 1000.0005, "e": 30, "f": "1__0", "g": "_1"}


def test_dates_and_non_string_keys() -> None:
    assert load_text("description: 2026-11-27\n").data == {"description": "2026-11-27"}
    (message,) = errors("1: one\n")
    assert "mapping key 1 must be a string" in message or "must be a string" in message


# Digits-only keys (`inputs: {0: [3, 32]}`, a layer named `1:` or `007:`) are integers to YAML. The
# hint said "quote it", and a quoted `'1'` only met the name rule: both are said at once now.
@pytest.mark.parametrize(("line", "written", "reading"), [
    ("inputs: {0: [3, 32]}", "0", "the integer 0"),
    ("layers:\n  - 1: {op: ReLU}", "1", "the integer 1"),
    ("layers:\n  - 007: {op: ReLU}", "007", "the integer 7"),
    ("blocks:\n  0x1f: {layers: []}", "0x1f", "the integer 31"),
    ("params: {1.5: 2}", "1.5", "the number 1.5"),
    ("layers:\n  - c: {block: b, with: {true: 1}}", "true", "the boolean true"),
    ("params: {~: 1}", "~", "null")])
def test_a_key_yaml_reads_as_a_number_is_refused_at_the_key_with_the_name_rule(line: str, written: str,
                                                                                reading: str) -> None:
    text = f"resgraph: 1\n{line}\n"
    (error,) = errors(text)
    row = text.count("\n", 0, text.index(f"{written}:")) + 1
    column = text.index(f"{written}:") - text.rfind("\n", 0, text.index(f"{written}:"))
    assert error == (f"s.yaml:{row}:{column}: error: mapping key {written!r} must be a string; YAML reads it as "
                     f"{reading}\n  hint: names (of layers, inputs, blocks, parameters, arguments) start with an "
                     f"ASCII letter: `layer_1`, not `1`; quote a key that is not a name (in a parameter's own "
                     f"mapping): '{written}'")


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
    # at the alias that passes the bound (was 1:1): `g`'s first *f, as `a` to `f` hold 1,234,566 nodes and *f adds
    # 1,111,111
    assert messages == [f"s.yaml:7:8: error: the document expands to more than {MAX_NODES:,} YAML nodes; this *f "
                        "(1,111,111 nodes) is the first past them\n  hint: aliases (*name) multiply nodes; write the "
                        "spec out or use blocks and `repeat:`"]


def _nested_aliases(width: int, levels: int) -> str:
    """`a: &a [0, ...]` then each level a list of `width` aliases of the one before: width^levels nodes."""
    text = "a: &a [" + ", ".join(["0"] * width) + "]\n"
    for level in range(1, levels):
        name, previous = chr(ord("a") + level), chr(ord("a") + level - 1)
        text += f"{name}: &{name} [" + ", ".join([f"*{previous}"] * width) + "]\n"
    return text


def test_aliases_that_add_more_nodes_than_the_alias_bound_are_refused_before_any_is_built() -> None:
    """Under MAX_NODES in all, but a few hundred bytes building 1.9 million nodes (8 s, 500 MB)."""
    text = _nested_aliases(10, 6)  # 10^6 zeros, and the lists holding them
    (message,) = errors(text)
    # At the alias that passes the bound (was 1:1): `e`'s 8th *d, as b, c, d add 12,330 and each *d 11,111.
    found = re.fullmatch(r"s\.yaml:5:36: error: aliases \(\*name\) add ([\d,]+) YAML nodes to the (\d+) written, "
                         r"more than ([\d,]+); this \*d \(11,111 nodes\) is the first past them\n"
                         r"  hint: use blocks and `repeat:` to reuse a part of the spec", message)
    assert found is not None, message
    added, written, bound = (int(group.replace(",", "")) for group in found.groups())
    expanded = 1 + 6 + sum(int("1" * k) for k in range(2, 8))  # the mapping, its keys, lists of 10^k zeros
    assert added + written == expanded and written < 100 and bound == loader.MAX_ALIAS_NODES


@pytest.mark.parametrize(("text", "where", "this"), [
    # an anchored mapping, merged (`<<: *m`): each alias adds its 102 nodes, past 100,000 at the 981st (line 982)
    ("m: &m {k: " + "[" + ", ".join(["1"] * 99) + "]}\n" + "".join(f"x{i}: {{<<: *m}}\n" for i in range(1000)),
     "s.yaml:982:12", "this *m (102 nodes)"),
    # an anchored scalar, one node an alias: the 100,001st
    ("s: &s 1\nl: [" + ", ".join(["*s"] * 100_001) + "]\n", "s.yaml:2:400005", "this *s (1 node)"),
    # brackets deeper than MAX_DEPTH: composed by PyYAML's Python composer, streamed by its parser
    # (1,000 nodes each: the 101st)
    ("d: " + "[" * 70 + "]" * 70 + "\nl: &l [" + ", ".join(["0"] * 999) + "]\nm: [" + ", ".join(["*l"] * 101) + "]\n",
     "s.yaml:3:405", "this *l (1,000 nodes)"),
], ids=["merged mapping", "scalar", "deep brackets"])
def test_the_alias_that_passes_the_bound_is_where_it_is_said(text: str, where: str, this: str) -> None:
    (message,) = errors(text)
    assert message.startswith(f"{where}: error: aliases (*name) add ") and f"; {this} is the first past" in message


def test_a_node_written_after_aliases_that_passes_the_node_bound_is_where_it_is_said(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "MAX_NODES", 30)
    text = "a: &a [0, 0, 0, 0, 0, 0, 0, 0, 0]\nb: [*a]\nc: [1, 2, 3, 4, 5]\n"  # 14, 24 by *a, 31 by `c`'s 5
    assert errors(text)[0].startswith("s.yaml:3:17: error: the document expands to more than 30 YAML nodes; this node "
                                      "is the first past them")


def test_aliases_under_the_bound_read_as_the_spec_written_out() -> None:
    text = _nested_aliases(10, 4)  # 11,110 nodes added
    assert load_text(text, "s.yaml").data["d"] == [[[[0] * 10] * 10] * 10] * 10


@pytest.mark.parametrize("text", [
    "- 1\n" * 3000,  # block sequence
    "[" + "1," * 3000 + "1]",  # flow sequence: two characters a node
    "{" + "a," * 3000 + "a}",  # flow mapping of keys without values: one character a node
    "layers:\n" + "  - l: {op: ReLU}\n" * 1000,
], ids=["block list", "flow list", "flow keys", "layers"])
def test_a_spec_of_too_many_nodes_is_refused_before_it_is_composed(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Composing keeps every node with its positions (a 16 MiB flow list of 8 million numbers took
    2.9 GB before the bound was checked); a text that may hold too many is counted as it streams."""
    import resgraph.loader

    monkeypatch.setattr(resgraph.loader, "MAX_NODES", 2000)
    monkeypatch.setattr(yaml, "compose", lambda *_, **__: pytest.fail("composed a spec over the bound"))
    (message,) = errors(text)
    assert "error: the spec has more than 2,000 YAML nodes (values, lists and mappings); this one is the first " \
        "past them" in message and "repeat:" in message
    line, column = map(int, message.split(":")[1:3])  # where the 2,001st node starts
    events = [e for e in yaml.parse(text, Loader=yaml.CSafeLoader) if type(e).__name__ in
              ("ScalarEvent", "SequenceStartEvent", "MappingStartEvent")]
    assert (line, column) == (events[2000].start_mark.line + 1, events[2000].start_mark.column + 1)


@pytest.mark.parametrize("max_nodes", [2_000_000, 0], ids=["first count", "closer look"])
def test_the_node_bound_is_never_below_the_nodes_composed(max_nodes: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The count before composing runs only where the bound from the text's characters passes
    MAX_NODES, so the bound must not under-count, whatever the style (past MAX_NODES it looks
    closer at flow entries: MAX_NODES 0 takes every text there)."""
    import resgraph.loader
    from resgraph.loader import _node_bound

    monkeypatch.setattr(resgraph.loader, "MAX_NODES", max_nodes)

    def nodes(node: yaml.Node) -> int:
        if isinstance(node, yaml.ScalarNode):
            return 1
        children = node.value if isinstance(node, yaml.SequenceNode) else [n for pair in node.value for n in pair]
        return 1 + sum(nodes(child) for child in children)

    texts = [path.read_text() for path in sorted(pathlib.Path("examples").glob("*.yaml"))] + [
        "a", "[]", "{}", "[a, b, c]", "[a: 1, b]", "{a, b, c}", "{a: 1, b: , c}", "[[], [[]], {}]", "? a\n? b\n",
        "? a\n: b\n", "- - - 1\n  - 2\n", "a:\n  b:\n    c: [1, {d: e}]\n", "[? a, ? b : c]", "[a, b, ]",
        "{a: [1, 2], b: {c: d}, e}", "- {a: 1}\n- [b, c]\n- ? d\n", "{a:b}", "{a:b, c}", "[{a}]", "{[a]}",
        "{[a], b}", '{"x:y", z}', "{a, [b]: c}", '{"p,q", "r]"}', "{a # c: d\n, b}", '[{"a": 1}, {"b": [2, 3]}]']
    for text in texts:
        assert _node_bound(text) >= nodes(yaml.compose(text, Loader=yaml.SafeLoader)), text


def test_the_100k_layer_chain_written_as_json_is_not_counted_before_it_is_composed() -> None:
    """Each `}, {` between JSON list items counted its item twice: the 100k-layer chain came to 2.1M
    nodes of bound (it has 1.05M), and every load paid a streaming count of its parse events (+40%)."""
    import json

    from resgraph.loader import _node_bound

    layers = [{f"l{i}": {"op": "Linear", "out_features": 8}} for i in range(100_000)]
    skips = [{f"s{i}": {"from": f"l{i}", "to": f"l{i + 2}"}} for i in range(0, 100_000 - 2, 2)]
    text = json.dumps({"resgraph": 1, "name": "Chain", "inputs": {"x": [8]}, "layers": layers, "skips": skips})
    assert _node_bound(text) <= MAX_NODES


def test_deep_nesting_is_refused_not_crashed() -> None:
    (message,) = errors("a: " + "[" * 100 + "]" * 100 + "\n")
    assert "nests deeper than" in message
    very_deep = "a: " + "[" * 5000 + "]" * 5000 + "\n"
    assert errors(very_deep)  # either too deep to parse or too deep to accept; never a crash


@pytest.mark.parametrize(("before", "nested", "where"), [
    ("a: 1\nb: [2]\nc: 3\n", "[" * 5000 + "]" * 5000, "4:68"),
    ("a: 1\nb: [2]\nc: 3\n", "{a: " * 3000 + "1" + "}" * 3000, "4:260"),
    ("name: D  # " + "[" * 100 + "\n", "[" * 1000 + "]" * 1000, "2:68"),  # (brackets in a comment are text)
    ('name: "' + "[" * 100 + '"\n', "[" * 1000 + "]" * 1000, "2:68"),  # (and in a string)
    ("".join("  " * i + f"k{i}:\n" for i in range(40)), "  " * 40 + "[" * 1000 + "]" * 1000, "41:108")],
    ids=["lists", "mappings", "after a comment", "after a string", "under block mappings"])
def test_nesting_too_deep_to_parse_is_located_where_it_passes_the_spec_bound(before: str, nested: str,
                                                                             where: str) -> None:
    # (it was said at 1:1, wherever the brackets were)
    text = before + ("p: " + nested if not nested.startswith(" ") else nested.replace("[", "p: [", 1)) + "\n"
    assert errors(text) == [f"s.yaml:{where}: error: YAML nesting is too deep to parse\n"
                            "  hint: a spec nests at most 64 levels"]


def test_syntax_errors_point_at_the_problem() -> None:
    (message,) = errors("a: [1, 2\nb: 3\n")
    assert message.startswith("s.yaml:2:") and "YAML syntax error" in message


def test_byte_order_mark_and_empty_documents() -> None:
    assert load_text("\ufeffa: 1\n").data == {"a": 1}
    assert errors("") == ["s.yaml:1:1: error: the spec is empty"]


def test_a_multi_megabyte_spec_loads_and_an_oversized_one_is_refused_at_once() -> None:
    lines = ["resgraph: 1", "name: Big", "inputs:", "  x: [16]", "layers:"]
    lines += [f"  - fc{i}: {{op: Linear, out_features: 16}}" for i in range(50_000)]
    text = "\n".join(lines) + "\n"
    assert len(text) > 2 * 2**20
    start = time.perf_counter()
    loaded = load_text(text, "s.yaml")
    # About 1 s on an idle 2-core machine. Only a pathology guard (>= 10x): linear time is a benchmark's job.
    assert time.perf_counter() - start < 20.0
    assert str(loaded.source.locate(("layers", 49_999, "fc49999", "out_features"))) == "s.yaml:50005:41"
    start = time.perf_counter()
    (message,) = errors("# " + "x" * (MAX_BYTES + 10) + "\n")
    assert "resgraph reads specs up to 16 MiB" in message and time.perf_counter() - start < 1.0


HOSTILE = {
    "alias bomb (10**11 nodes expanded)": "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [" + ", ".join([f"*{chr(ord(c) - 1)}"] * 10) + "]\n" for c in "bcdefghijk"),
    "100,000 nested lists (crashes libyaml's composer)": "a: " + "[" * 100_000 + "]" * 100_000 + "\n",
    "100,000 nested mappings": "a: " + "{b: " * 100_000 + "1" + "}" * 100_000 + "\n",
    "recursive alias": "a: &x\n  - *x\n",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_inputs_are_refused_quickly_within_bounded_memory(name: str, tmp_path: pathlib.Path) -> None:
    """In a child process, so a crash fails the test and its peak memory is its own."""
    path = tmp_path / "hostile.yaml"
    path.write_text(HOSTILE[name])
    # VmHWM is this process image's own peak (ru_maxrss would include the parent's, across exec).
    probe = ("import re, sys, time\nfrom resgraph.errors import SpecError\nfrom resgraph.loader import load_file\n"
             "start = time.perf_counter()\ntry:\n    load_file(sys.argv[1])\n    print('accepted')\n"
             "except SpecError as exc:\n    print('refused:', exc.diagnostics[0].message)\n"
             "peak = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
             "print(time.perf_counter() - start, peak)\n")
    result = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-500:]
    verdict, measures = result.stdout.strip().splitlines()
    seconds, peak_kib = measures.split()
    assert verdict.startswith("refused:")
    # Each case takes at most about 2 s on a busy 2-core machine: 20 s guards against a hang only.
    assert float(seconds) < 20.0 and int(peak_kib) < 300 * 1024


@pytest.mark.parametrize(("where", "key", "message"), [
    ("layers", 1, "layers[0]: mapping key 1 must be a string"),
    ("top", 2.5, "spec: mapping key 2.5 must be a string"),
    ("params", None, "params: mapping key None must be a string"),
    ("with", 3, "layer 'c': with: mapping key 3 must be a string"),
    ("body", (1, 2), "layer 'fc' (Linear): mapping key (1, 2) must be a string")])
def test_a_dict_spec_with_keys_that_are_not_strings_is_refused_where_they_stand(where: str, key: object,
                                                                                message: str) -> None:
    """A spec given as a dict may hold any key (YAML's refusal is above); each non-string one is
    an error naming where it stands, not a crash in the schema check."""
    import resgraph

    spec: dict = {"resgraph": 1, "name": "N", "inputs": {"x": [4]},
                  "blocks": {"b": {"layers": [{"fc": {"op": "Linear", "out_features": 4}}]}},
                  "layers": [{"fc": {"op": "Linear", "out_features": 4}}, {"c": {"block": "b", "with": {}}}]}
    if where == "layers":
        spec["layers"][0] = {key: {"op": "Linear", "out_features": 4}}
    elif where == "top":
        spec[key] = 1
    elif where == "params":
        spec["params"] = {key: 3}
    elif where == "with":
        spec["layers"][1]["c"]["with"] = {key: 1}
    else:
        spec["layers"][0]["fc"][key] = 3
    with pytest.raises(SpecError) as failure:
        resgraph.build(spec)
    assert [d.message for d in failure.value.diagnostics] == [message]
    assert str(failure.value) == f"<dict>: error: {message}"


def test_every_key_that_is_not_a_string_is_reported_in_document_order() -> None:
    import resgraph

    spec = {"resgraph": 1, "name": "N", "inputs": {"x": [4], 5: [4]}, "params": {None: 3},
            "layers": [{"fc": {"op": "Linear", "out_features": 4, 2: 0}}]}
    with pytest.raises(SpecError) as failure:
        resgraph.build(spec)
    assert [d.message for d in failure.value.diagnostics] == [
        "inputs: mapping key 5 must be a string", "params: mapping key None must be a string",
        "layer 'fc' (Linear): mapping key 2 must be a string"]


def _dict_spec(**params: object) -> dict:
    return {"resgraph": 1, "name": "N", "params": dict(params), "inputs": {"x": [4]},
            "layers": [{"fc": {"op": "Linear", "out_features": 2}}]}


def _nested(depth: int, leaf: object = 1) -> object:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


def _itself() -> dict:
    spec = _dict_spec()
    spec["params"]["p"] = spec["params"]
    return spec


def _list_in_itself() -> dict:
    spec = _dict_spec()
    looped: list = [1]
    looped.append(looped)
    spec["layers"][0]["fc"]["bias"] = looped
    return spec


def _bomb() -> dict:
    shared: list = [1] * 100
    for _ in range(4):
        shared = [shared] * 100  # 10^10 values once expanded, a few KiB in memory
    return _dict_spec(p=shared)


@pytest.mark.parametrize(("make", "message", "hint"), [
    (_itself, "params.p: this dict contains itself: a spec is a tree of plain data", "copy.deepcopy"),
    (_list_in_itself, "layers[0].fc.bias[1]: this list contains itself", "copy.deepcopy"),
    (lambda: _dict_spec(p=_nested(1500)), "params.p[0][0]...[0][0][0][0]: the spec nests deeper than 64 levels",
     "fewer than 10"),
    (lambda: _dict_spec(p=_nested(63, {"a": 1})), "params.p[0][0]...[0][0][0][0]: the spec nests deeper than 64 "
                                                  "levels", "fewer than 10"),  # the dict is 65 levels below the top
    (_bomb, "the spec holds more than 2,000,000 values", "repeat:"),
    (lambda: _dict_spec(p={1, 2}), "params.p: builtins.set {1, 2} is not spec data", "int(value)"),
    (lambda: _dict_spec(p=b"x"), "params.p: builtins.bytes b'x' is not spec data", "numbers, booleans and None"),
    (lambda: _dict_spec(p=[0] * (MAX_NODES + 1)), "the spec holds more than 2,000,000 values", "repeat:"),
    (lambda: _dict_spec(p=10**5000), "params.p: an integer of about 5,001 digits is too large: a spec's integers are "
                                     "smaller than 10^100", "2^64"),
    (lambda: _dict_spec(p=[1, -10**100]), "params.p[1]: an integer of about 101 digits is too large", "2^64"),
    (lambda: _dict_spec(p={"inner": {(1, 2): 3}}), "params: p.inner: mapping key (1, 2) must be a string", ""),
], ids=["dict-in-itself", "list-in-itself", "1500-deep", "65-deep", "shared-list-bomb", "set", "bytes", "flat-list",
        "integer-of-5000-digits", "integer-of-101-digits", "tuple-key-inside-a-value"])
def test_a_dict_spec_is_held_to_the_bounds_a_spec_file_is_read_with(make: Any, message: str, hint: str,
                                                                     call_counts: Any) -> None:
    """A dict can hold what no YAML file gives: itself, sharing without end, nesting past the
    loader's bound, Python objects. Each was a hang, a RecursionError or a TypeError from deep
    inside; each is now refused at load, naming the path into the dict. Refusing it writes at
    most MAX_NODES values' worth of the text and walks each distinct list once, however many
    values the sharing makes (10^10 in the bomb)."""
    import resgraph
    import resgraph.loader
    import resgraph.pipeline

    calls = call_counts((resgraph.pipeline, "_write_json"), (resgraph.loader, "_data_size"))
    for run in (resgraph.build, resgraph.check):
        with pytest.raises(SpecError) as failure:
            run(make())
        (diagnostic,) = failure.value.diagnostics
        assert diagnostic.message.startswith(message) and hint in (diagnostic.hint or "")
        assert str(diagnostic.location) == "<dict>"
    # (the bomb takes the most: about 20,000 containers written and 200 walked a run; expanded, 10^8)
    assert calls["_write_json"] < 100_000 and calls["_data_size"] < 1_000


def test_a_dict_spec_at_the_bounds_builds_and_records_the_data_it_holds() -> None:
    """Sharing is not nesting: a list used twice is plain data. A numpy float (a float), an IntEnum
    (an int) and 64 levels of nesting are what a spec file can hold too."""
    import enum
    import json

    import numpy

    import resgraph

    class Width(enum.IntEnum):
        small = 2

    shared = [1, 2]
    spec = _dict_spec(a=shared, b=shared, deep=_nested(63))  # its innermost list is 64 levels below the top
    spec["layers"][0]["fc"]["out_features"] = Width.small
    spec["layers"].append({"fc2": {"op": "Linear", "out_features": numpy.float64(3.0)}})
    model = resgraph.build(spec)
    assert model.fc.out_features == 2 and model(torch_randn(5, 4)).shape == (5, 3)
    assert model.build_record.spec == json.dumps(spec, indent=2)


def torch_randn(*shape: int) -> object:
    import torch

    return torch.randn(*shape)


def test_a_file_that_grows_after_its_size_is_read_is_read_whole(tmp_path: pathlib.Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A regular file is read at the size `fstat` gave, and on past it when there is more (it grew in
    between, or it has no size, as /proc's files): never a silently cut spec."""
    spec = tmp_path / "grown.yaml"
    spec.write_text("resgraph: 1\nname: Grown\ninputs: {x: [4]}\nlayers:\n  - fc: {op: Linear, out_features: 2}\n")
    real_fstat = os.fstat
    for reported in (10, 0):  # the size it had when fstat ran; no size at all, as /proc's files

        def stale_fstat(fd: int, size: int = reported) -> os.stat_result:
            status = list(real_fstat(fd))
            status[stat.ST_SIZE] = size
            return os.stat_result(status)

        monkeypatch.setattr(os, "fstat", stale_fstat)
        assert load_file(spec).data["layers"] == [{"fc": {"op": "Linear", "out_features": 2}}]


@pytest.mark.parametrize("text", ["0", "7", "10", "123456789012345678901234567890", "-7", "+7", "007", "00",
                                  "1_000", "0x1F", "!!int 0o17", "!!int 0b101", "!!int 12", "'12'",
                                  "\u0661\u0662", "12 # a comment", "9" * 18, "9" * 19])
def test_integers_read_as_pyyaml_reads_them(text: str) -> None:
    # The builder reads plain decimal ints itself; every other spelling (underscores, bases) is
    # PyYAML's, and the results must not differ. (YAML 1.1's octal `0755` and sexagesimal `1:30`,
    # which YAML 1.2 reads otherwise, are refused: see above.)
    value = load_text(f"a: {text}\n").data["a"]
    expected = yaml.safe_load(f"a: {text}\n")["a"]
    assert type(value) is type(expected) and value == expected


def test_a_flat_spec_with_many_brackets_still_loads_and_deep_brackets_in_a_long_text_are_refused() -> None:
    flat = "layers:\n" + "".join(f"  - l{i}: {{op: Linear, out_features: [{i}]}}\n" for i in range(100))
    assert len(load_text(flat).data["layers"]) == 100
    (message,) = errors(flat + "deep: " + "[" * 80 + "]" * 80 + "\n")
    assert "nests deeper than" in message


def test_an_integer_too_long_to_read_is_a_located_error() -> None:
    (message,) = errors("a: 1\nb: " + "7" * 5000 + "\n")
    assert message.startswith("s.yaml:2:4:") and "is too large" in message


@pytest.mark.parametrize("written", ["0" + "7" * 5000, "0" + "9" * 5000, "0b" + "1" * 20000, "0o" + "7" * 6000,
                                     "0" + "7" * 120])
def test_a_long_integer_either_yaml_reads_otherwise_is_too_large_not_a_traceback(written: str) -> None:
    """Saying how YAML 1.1 and 1.2 read `0777...` of 5,000 digits wrote both numbers: Python's ValueError escaped."""
    (message,) = errors(f"b: {written}\n")
    assert message == (f"s.yaml:1:4: error: the integer {written[:20]}...{written[-10:]} ({len(written):,} characters) "
                       "is too large: a spec's integers are smaller than 10^100 (no tensor size, index or dtype holds "
                       "more than 2^64)")


@pytest.mark.parametrize(("written", "column"), [
    ("1e400", 4), ("-1e400", 4), ("+1E400", 4), ("1.0e+999", 4), ("-.5e309", 4), ("!!float 1e400", 4),
    ("[1, 2e400]", 8), pytest.param("{x: 9" + "9" * 400 + ".0}", 8, id="401-digits"),  # (shortened as any long one)
])
def test_a_number_past_a_floats_range_is_refused_as_written_not_read_as_inf(written: str, column: int) -> None:
    """`dropout: 1e400` read as inf, and was reported as "got number inf": a value never written. (No hint
    offers `.inf`: every argument of a spec is finite.)"""
    number = written.removeprefix("!!float ").strip("[]{}").removeprefix("x: ").removeprefix("1, ")
    shown = number if len(number) <= 40 else f"{number[:20]}...{number[-10:]}"
    assert errors(f"a: 1\nb: {written}\n") == [
        f"s.yaml:2:{column}: error: the number {shown} is out of range: a number's magnitude is at most about 1.8e308 "
        "(a 64-bit float's largest)"]


def test_infinity_written_and_numbers_near_a_floats_limits_are_read() -> None:
    assert load_text("a: [.inf, -.Inf, !!float inf, 1.7e308, -1e308, 1e-400]\n").data["a"] == [
        float("inf"), float("-inf"), float("inf"), 1.7e308, -1e308, 0.0]


def test_an_overflowing_number_is_said_as_written_where_the_spec_uses_it() -> None:
    """In a layer's argument, a parameter and an input's shape: each was "got number inf" (or the
    expression's "number is too large") at the place that used it."""
    import resgraph

    spec = ("resgraph: 1\nname: M\nparams: {rate: 1e400}\ninputs: {x: [-1e400]}\nlayers:\n"
            "  - d: {op: Dropout, p: 1.0e+999}\n  - e: {op: Dropout, p: '${rate}'}\n")
    with pytest.raises(SpecError) as caught:
        resgraph.check(spec)
    assert [(str(d.location), d.message.split(" is out of range")[0]) for d in caught.value.diagnostics] == [
        ("<string>:3:16", "the number 1e400"), ("<string>:4:14", "the number -1e400"),
        ("<string>:6:25", "the number 1.0e+999")]


def test_a_tag_says_which_reading_a_value_means() -> None:
    assert load_text("a: !!str 08\nb: !!int 0b11\nc: '0b11'\nd: \"0o17\"\ne: 0_8\n").data == {
        "a": "08", "b": 3, "c": "0b11", "d": "0o17", "e": "0_8"}  # (`0_8`: text to both versions)
    # `!!str 1e-6` was read as the float 1e-06, as if untagged
    assert load_text("a: !!str 1e-6\nb: !!float 1e-6\nc: 1e-6\n").data == {"a": "1e-6", "b": 1e-6, "c": 1e-6}


@pytest.mark.parametrize(("written", "read"), [
    ("&e 1e-6", 1e-6), ("&e\n  1e-6", 1e-6), ("[&e 2e-3, *e]", [2e-3, 2e-3]), ("{b: &e 1e-5}", {"b": 1e-5}),
    ("&f !!str 1e-6", "1e-6"), ("!!str &f 1e-6", "1e-6"), ("&n 10", 10), ("&t hello", "hello"),
    ("&u 1e-6 and text", "1e-6 and text"), ("&i !!int 0o10", 8)])
def test_an_anchor_is_no_tag_a_value_with_one_is_read_as_without(written: str, read: object) -> None:
    # (an anchored scalar was taken for a tagged one: `&e 1e-6` read as text, `&i 010` as octal 8)
    assert load_text(f"a: {written}\n").data == {"a": read}


@pytest.mark.parametrize(("written", "said"), [
    ("&i 010", "010 has a leading zero: YAML 1.1 reads it as octal (8), YAML 1.2 as 10"),
    ("&l 1:30", "1:30 is a base-60 number in YAML 1.1 and text in YAML 1.2"),
    ("&m yes", "yes is true in YAML 1.1 and text in YAML 1.2"),
    ("&b 1e400", "the number 1e400 is out of range: a number's magnitude is at most about 1.8e308 (a 64-bit "
                 "float's largest)")])
def test_an_anchored_value_that_yaml_versions_read_differently_is_refused_as_without(written: str, said: str) -> None:
    (message,) = errors(f"a: 1\nb: [2, {written}]\n")
    assert message.startswith(f"s.yaml:2:8: error: {said}")


@pytest.mark.parametrize(("written", "said"), [("010", "octal 8 in YAML 1.1 and 10"),
                                               ("08", "no number in YAML 1.1 and 8"),
                                               ("-019", "no number in YAML 1.1 and -19")])
def test_an_int_tag_does_not_settle_a_leading_zero(written: str, said: str) -> None:
    # (`!!int 010` was read as YAML 1.1's octal 8, silently; `!!int 08` said "invalid literal for int() with base 8")
    assert errors(f"a: !!int {written}\n") == [
        f"s.yaml:1:4: error: !!int {written} is {said} in YAML 1.2\n"
        "  hint: write the number without the leading zero (0o17 for an octal one)"]
    assert load_text("a: [!!int 0o17, !!int 0b100, !!int 10, !!int 0]\n").data == {"a": [15, 4, 10, 0]}


def test_a_plain_merge_key_as_a_value_says_to_quote_it() -> None:
    # (no tag was written: YAML itself reads a plain << as its merge key)
    assert errors("a: <<\n") == ["s.yaml:1:4: error: '<<' is YAML's merge key, not a value\n  hint: quote it: '<<'"]
    assert load_text("a: '<<'\n").data == {"a": "<<"}


def test_an_integer_key_too_large_is_reported_once_and_shortened() -> None:
    (message,) = errors("1" * 200 + ": 3\nb: 0x" + "f" * 90 + "\n")[:1]
    assert message.startswith("s.yaml:1:1: error: the integer 11111111111111111111...1111111111 (200 characters) is "
                              "too large") and len(message) < 300
    assert len(errors("1" * 200 + ": 3\n")) == 1
    (hex_message,) = errors("b: 0x" + "f" * 90 + "\n")  # 92 characters, a value past 10^100
    assert "smaller than 10^100" in hex_message


def test_a_key_past_yamls_1024_characters_is_named_in_the_hint() -> None:
    (message,) = errors("layers:\n  - " + "a" * 1100 + ": {op: ReLU}\n")
    assert message == ("s.yaml:2:1105: error: YAML syntax error: mapping values are not allowed in this context\n"
                       "  hint: a plain YAML key is at most 1024 characters long: shorten it")
    (other,) = errors("a: b: c\n")  # the same libyaml error for another cause: no such hint
    assert "1024" not in other


@pytest.mark.parametrize("text", ["a: 3\n", "a: '3'\n", 'a: "true"\n', "a: true\nb: yes\nc: ~\nd:\n",
                                  "a: [1, 1.5, .inf, x]\n", "a: {b: 2024-01-01, c: =, d: 1e-6}\n", "? [1]\n: {}\n",
                                  "a: |\n  3\n", "a: >\n  null\n", "a: 0x1F\nb: 1_000\nc: 1:30\nd: 010\n",
                                  "a: " + "9" * 100 + "\n", "a: " + "x" * 100 + "\n",
                                  "a: !!str 3\nb: ! 3\nc: !!int '7'\n"])
def test_every_node_gets_the_tag_pyyamls_resolver_gives(text: str) -> None:
    # The composer decides implicit tags itself (`loader._implicit_tag`, short texts looked up once
    # per process): the tree must be the one PyYAML's own resolver tags, twice over (the second
    # time from the table of texts met).
    def tags(node: yaml.Node) -> list[Any]:
        if isinstance(node, yaml.ScalarNode):
            return [node.tag, node.value]
        members = node.value if isinstance(node, yaml.SequenceNode) else [n for pair in node.value for n in pair]
        return [node.tag, *(tags(member) for member in members)]

    expected = tags(yaml.compose(text, Loader=yaml.SafeLoader))
    for _ in range(2):
        assert tags(yaml.compose(text, Loader=loader._Composer)) == expected
