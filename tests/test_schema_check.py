"""The compiled schema predicate agrees with jsonschema: what it accepts, jsonschema accepts.

`validate` trusts the predicate's "valid" and skips jsonschema; a wrong "valid" would let a
mistake through unworded (or worded differently, later). So every example, every bad spec, and
several hundred mutations of them are checked both ways against jsonschema's own walk.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import pytest

from conftest import BAD_SPECS, ROOT
from resgraph.loader import load_text
from resgraph.schema_check import UnsupportedSchema, compile_schema, equal
from resgraph.validate import _accepts, _body_definition, _layer_bodies, _validators, is_block_library

DOCUMENTS = sorted([*ROOT.glob("examples/*.yaml"), *ROOT.glob("examples/blocks/*.yaml"), *BAD_SPECS.glob("*.yaml")])


def _load(path: Path) -> Any:
    try:
        return load_text(path.read_text(), str(path))
    except Exception:  # noqa: BLE001  (a bad spec that fails to load has nothing to validate)
        return None


def _agree(data: Any) -> tuple[bool, bool]:
    root = "library" if is_block_library(data) else "spec"
    fast = _accepts(data, root)
    shell, bodies = _validators(root)  # jsonschema, as `validate` runs it (without wording the errors)
    definitions = [(_body_definition(body), body) for _, body in _layer_bodies(data)]
    slow = shell.is_valid(data) and all(name is not None and bodies[name].is_valid(body) for name, body in definitions)
    return fast, slow


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.name)
def test_the_predicate_and_jsonschema_agree_on_every_document(path: Path) -> None:
    loaded = _load(path)
    if loaded is None:
        pytest.skip("not loadable YAML")
    fast, slow = _agree(loaded.data)
    assert fast == slow, f"compiled predicate says {fast}, jsonschema says {slow}"


_ODD_VALUES = [None, True, False, 0, -1, 1, 1.5, 2.0, "", "x", "${a}", "Bad Name", [], [1], {}, {"k": 1}, "a" * 200]


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found += _paths(value, (*prefix, index))
    return found


def _mutate(data: Any, rng: random.Random) -> Any:
    """`data` with one random change: a value replaced, a key dropped, or an unknown key added."""
    data = copy.deepcopy(data)
    path = rng.choice(_paths(data)[1:])
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    kind = rng.randrange(3)
    if kind == 0:
        parent[path[-1]] = rng.choice(_ODD_VALUES)
    elif kind == 1 and isinstance(parent, dict):
        del parent[path[-1]]
    elif isinstance(parent[path[-1]], dict):
        parent[path[-1]][rng.choice(["extra", "op", "block", "kernel_size", "from", "repeat"])] = \
            rng.choice(_ODD_VALUES)
    else:
        parent[path[-1]] = rng.choice(_ODD_VALUES)
    return data


def test_the_predicate_never_accepts_what_jsonschema_rejects_in_mutated_specs() -> None:
    rng = random.Random(0)
    originals = [loaded for loaded in map(_load, DOCUMENTS[:40] + DOCUMENTS[-40:]) if loaded is not None]
    disagreements, accepted = [], 0
    for _ in range(600):
        loaded = rng.choice(originals)
        mutated = _mutate(loaded.data, rng)
        fast, slow = _agree(mutated)
        accepted += fast
        if fast and not slow:
            disagreements.append(mutated)
        if not fast and slow:  # allowed (jsonschema then words nothing), but it should not happen here
            disagreements.append(mutated)
    assert not disagreements, disagreements[:3]
    assert accepted > 50  # the mutations are not all rejections: the accepting side is exercised


@pytest.mark.parametrize(("schema", "good", "bad"), [
    ({"type": "integer"}, [1, 2.0, -3], [True, 1.5, "1", None]),
    ({"type": "number", "minimum": 0}, [0, 0.5, 3], [-1, False, "2"]),
    ({"const": 1}, [1, 1.0], [True, "1"]),
    ({"enum": [True, "a"]}, [True, "a"], [1, "b"]),
    ({"pattern": "^a"}, ["ab", 3], ["ba"]),
    ({"type": "array", "items": {"type": "string"}, "minItems": 1}, [["a"]], [[], [1], "a"]),
    ({"patternProperties": {"^x": {"type": "integer"}}, "additionalProperties": False}, [{"x1": 1}, {}],
     [{"x1": "a"}, {"y": 1}]),
    ({"propertyNames": {"maxLength": 2}, "minProperties": 1}, [{"ab": 1}], [{}, {"abc": 1}]),
    ({"oneOf": [{"type": "integer"}, {"minimum": 0}]}, [-1, 0.5], [1, -0.5]),
    ({"not": {"enum": ["a"]}}, ["b"], ["a"]),
    ({"if": {"required": ["a"]}, "then": {"required": ["b"]}, "else": {"required": ["c"]}},
     [{"a": 1, "b": 1}, {"c": 1}], [{"a": 1}, {}]),
])
def test_keywords_follow_jsonschema(schema: dict[str, Any], good: list[Any], bad: list[Any]) -> None:
    import jsonschema

    accepts = compile_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for value in good:
        assert accepts(value) and validator.is_valid(value), value
    for value in bad:
        assert not accepts(value) and not validator.is_valid(value), value


def test_recursive_references_and_unknown_keywords() -> None:
    tree = {"$defs": {"T": {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/T"}}},
                            "additionalProperties": False}}, "$ref": "#/$defs/T"}
    accepts = compile_schema(tree)
    assert accepts({"kids": [{"kids": []}, {}]})
    assert not accepts({"kids": [{"kids": [{"other": 1}]}]})
    with pytest.raises(UnsupportedSchema):
        compile_schema({"uniqueItems": True})
    with pytest.raises(UnsupportedSchema):
        compile_schema({"$ref": "other.json#/x"})


def test_equal_keeps_booleans_apart() -> None:
    assert equal([1, {"a": 2.0}], [1.0, {"a": 2}])
    assert not equal(True, 1) and not equal([False], [0])
