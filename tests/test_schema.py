"""The JSON Schema is generated from the models, valid, committed verbatim, and accepts the examples
and the block libraries (one published document: a library is checked as one, anything else as a spec)."""

from __future__ import annotations

import json

import jsonschema
import pytest
import yaml

import resgraph
from conftest import BLOCK_LIBRARIES, EXAMPLES
from resgraph.ops import OPS
from resgraph.resources import schema_path
from resgraph.schema import json_schema, schema_text
from resgraph.spec import BlockLibrary, Spec
from resgraph.validate import is_block_library

SCHEMA_FILE = schema_path()  # the source; the repository's schemas/resgraph.schema.json is a copy (test_packaging)
ALL_EXAMPLES = sorted(p.name for p in EXAMPLES.glob("*.yaml"))


def test_committed_schema_equals_the_models() -> None:
    assert SCHEMA_FILE.read_text() == schema_text(), (
        "resgraph/schemas/resgraph.schema.json drifted from the models: run `python -m resgraph.schema`")


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
    text = (EXAMPLES / library).read_text()
    assert text.startswith("# yaml-language-server: $schema=../../schemas/resgraph.schema.json\n")
    data = yaml.safe_load(text)
    jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text())).validate(data)  # the published root
    BlockLibrary.model_validate(data)


LIBRARY = {"resgraph": 1, "blocks": {"b": {"layers": [{"relu": {"op": "ReLU"}}]}}}
SPEC = {"resgraph": 1, "name": "M", "inputs": {"x": [4]}, "layers": [{"fc": {"op": "Linear", "out_features": 2}}]}


@pytest.mark.parametrize(("document", "complaint"), [
    (LIBRARY, None),
    ({**LIBRARY, "blocks": {"b": {"layers": [{"relu": {"op": "ReLU", "inplace": "yes"}}]}}}, "'yes' is not"),
    (SPEC, None),
    ({**SPEC, "blocks": LIBRARY["blocks"]}, None),  # a spec may define blocks too
    ({**SPEC, "inputs": None}, "None is not"),
    ({"resgraph": 1, "blocks": LIBRARY["blocks"], "layers": SPEC["layers"]}, "'name' is a required property"),
    ({"resgraph": 1, "name": "M", "blocks": LIBRARY["blocks"]}, "'inputs' is a required property"),
])
def test_the_published_root_checks_a_library_as_one_and_anything_else_as_a_spec(document: dict,
                                                                                complaint: str | None) -> None:
    errors = list(jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text())).iter_errors(document))
    messages = [e.message for e in errors] + [c.message for e in errors for c in e.context]
    # the schema checks the document as the kind `validate` decides it is (then: a library; else: a spec)
    assert {e.schema_path[0] for e in errors} <= {"then" if is_block_library(document) else "else"}
    if complaint is None:
        assert errors == []
    else:
        assert any(complaint in m for m in messages), messages


@pytest.mark.parametrize("entry", [{"a": {}, "b": {}}, {"1a": {}}, {"a": 3}])
def test_a_model_built_directly_checks_its_entries_and_validate_has_the_schema_check_them(entry: dict) -> None:
    # `validate` types a document the schema accepted, and tells the model so (`SCHEMA_CHECKED`): its
    # entries are not checked one by one again. Built directly, a model checks each entry itself.
    from pydantic import ValidationError

    from resgraph.errors import SpecError
    from resgraph.loader import load_text
    from resgraph.spec import Spec
    from resgraph.validate import validate

    document = {"resgraph": 1, "name": "M", "inputs": {"x": [4]}, "layers": [{"fc": {"op": "ReLU"}}, entry]}
    with pytest.raises(ValidationError) as refused:
        Spec.model_validate(document)
    assert [error["loc"] for error in refused.value.errors()] == [("layers", 1)]
    with pytest.raises(SpecError):  # (worded by the schema's check: see tests/bad_specs)
        validate(load_text(json.dumps(document), "s.yaml"))
    assert validate(load_text(json.dumps({**document, "layers": [{"fc": {"op": "ReLU"}}]}))).layers == [
        {"fc": {"op": "ReLU"}}]


def test_what_validation_refused_is_marked_on_the_spec_and_nothing_where_it_refused_nothing() -> None:
    from resgraph.loader import load_text
    from resgraph.spec import Spec
    from resgraph.validate import validate

    text = "resgraph: 1\nname: M\ninputs: {x: [4], y: [0]}\nlayers:\n  - fc: {op: Linear, out_features: 2}\n"
    found: list = []
    spec = validate(load_text(text + "  - bad: {op: Linear}\n"), None, found)
    assert found and spec.invalid_entries == {("layers", 1)} and spec.invalid_input("y")
    assert not spec.invalid_input("x") and not spec.invalid_block("b")
    clean = validate(load_text(text.replace("y: [0]", "y: [1]")))
    assert clean.invalid_entries == frozenset() and not clean.invalid_input("y")
    assert clean == Spec.model_validate(clean.model_dump(by_alias=True, exclude_unset=True))  # (private parts equal)

