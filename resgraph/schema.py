"""The JSON Schema of the spec language, generated from the pydantic models (never by hand).

One document: its root describes a spec; `$defs/BlockLibrary` describes a file of blocks for
`imports:`. Generation adds one rule the models cannot state: wherever a spec writes a value
(op arguments, shapes, repeats, skip options), a `${...}` expression may stand instead.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

__all__ = ["DIALECT", "SCHEMA_ID", "json_schema", "library_schema", "schema_text"]

SCHEMA_ID = "https://resgraph.dev/schemas/resgraph.schema.json"
DIALECT = "https://json-schema.org/draft/2020-12/schema"
EXPRESSION = {"type": "string", "pattern": r"^\$\{.*\}$", "description": "A ${...} expression over parameters."}

# $defs whose properties are values a spec may compute; keys listed here are names, not values.
_NOT_VALUES = {"op", "input", "block", "from", "to", "with"}


@cache
def json_schema() -> dict[str, Any]:
    """The schema as a dict; `schemas/resgraph.schema.json` holds exactly `schema_text()`."""
    from pydantic import TypeAdapter
    from pydantic.json_schema import models_json_schema

    from .ops import OPS, GenericLayer
    from .spec import BlockCall, BlockLibrary, LayerBody, Scale, Skip, Spec

    keys, top = models_json_schema([(Spec, "validation"), (BlockLibrary, "validation"), (Skip, "validation")],
                                   by_alias=True, ref_template="#/$defs/{model}")
    defs: dict[str, Any] = top["$defs"]
    body = TypeAdapter(LayerBody).json_schema(by_alias=True, ref_template="#/$defs/{model}")
    defs.update(body.pop("$defs"))
    defs["LayerBody"] = body
    defs["Expression"] = EXPRESSION
    valued = {model.__name__ for model in (*OPS.values(), GenericLayer, BlockCall, Scale, Skip)}
    for name in valued:
        for key, prop in defs[name].get("properties", {}).items():
            if key not in _NOT_VALUES:
                defs[name]["properties"][key] = _or_expression(prop)
    shape = defs["InputDecl"]["properties"]["shape"]
    shape["items"] = _or_expression(shape["items"])
    root = defs.pop("Spec")
    for value in root["properties"]["inputs"]["patternProperties"].values():  # the short form: a shape list
        value["anyOf"][0]["items"] = _or_expression(value["anyOf"][0]["items"])
    assert keys  # both roots were generated
    return {"$schema": DIALECT, "$id": SCHEMA_ID, **root, "$defs": dict(sorted(defs.items()))}


def _or_expression(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` or a ${...} expression, and the same for its list items and union members.

    The description stays at the top for editors.
    """
    if schema.get("$ref") == "#/$defs/Expression":
        return schema
    schema = dict(schema)
    if isinstance(schema.get("items"), dict):
        schema["items"] = _or_expression(schema["items"])
    meta = {k: schema.pop(k) for k in ("title", "description", "default") if k in schema}
    members = schema.pop("anyOf", None)
    if members is not None:
        inner = [_or_expression(m)["anyOf"][0] if m.get("type") == "array" else m for m in members]
        return {**meta, **schema, "anyOf": [*inner, {"$ref": "#/$defs/Expression"}]}
    return {**meta, "anyOf": [schema, {"$ref": "#/$defs/Expression"}]}


@cache
def library_schema() -> dict[str, Any]:
    """The same document, rooted at `$defs/BlockLibrary`: what an imported file is checked against."""
    schema = json_schema()
    return {"$schema": DIALECT, "$defs": schema["$defs"], "$ref": "#/$defs/BlockLibrary"}


def schema_text() -> str:
    """The schema file's exact text: sorted keys, two-space indent, trailing newline."""
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
