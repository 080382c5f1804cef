"""The JSON Schema is generated from the models, valid, committed verbatim, and accepts the examples."""

from __future__ import annotations

import json

import jsonschema
import pytest
import yaml

import resgraph
from conftest import BLOCK_LIBRARIES, EXAMPLES, ROOT
from resgraph.ops import OPS
from resgraph.schema import json_schema, schema_text
from resgraph.spec import BlockLibrary, Spec

SCHEMA_FILE = ROOT / "schemas" / "resgraph.schema.json"
ALL_EXAMPLES = sorted(p.name for p in EXAMPLES.glob("*.yaml"))


def test_committed_schema_equals_the_models() -> None:
    assert SCHEMA_FILE.read_text() == schema_text(), (
        "schemas/resgraph.schema.json drifted from the models: run `resgraph schema > schemas/resgraph.schema.json`")


def test_schema_is_a_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(json.loads(SCHEMA_FILE.read_text()))


def test_every_curated_op_has_a_typed_entry_with_strict_keys() -> None:
    defs = json_schema()["$defs"]
    for name, model in OPS.items():
        entry = defs[model.__name__]
        assert entry["properties"]["op"]["const"] == name
        assert entry["additionalProperties"] is False
        for inferred in model.inferred:
            assert inferred not in entry["properties"], f"{name} exposes inferred argument {inferred}"


def test_uncurated_ops_are_accepted_but_curated_names_are_not_generic() -> None:
    generic = json_schema()["$defs"]["GenericLayer"]
    assert generic["additionalProperties"] is True
    assert set(generic["properties"]["op"]["not"]["enum"]) == set(OPS)


@pytest.mark.parametrize("example", ALL_EXAMPLES)
def test_examples_pass_jsonschema_and_pydantic(example: str) -> None:
    text = (EXAMPLES / example).read_text()
    assert text.startswith("# yaml-language-server: $schema=../schemas/resgraph.schema.json\n")
    jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text())).validate(yaml.safe_load(text))
    spec = resgraph.load_spec(EXAMPLES / example)  # expressions evaluated, then the pydantic models
    assert isinstance(spec, Spec)


@pytest.mark.parametrize("library", BLOCK_LIBRARIES)
def test_block_libraries_pass_jsonschema_and_pydantic(library: str) -> None:
    data = yaml.safe_load((EXAMPLES / library).read_text())
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator({"$defs": schema["$defs"], "$ref": "#/$defs/BlockLibrary"}).validate(data)
    BlockLibrary.model_validate(data)
