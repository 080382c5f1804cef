"""The JSON Schema of the spec language, generated from the pydantic models (never by hand)."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

__all__ = ["SCHEMA_ID", "json_schema", "schema_text"]

SCHEMA_ID = "https://resgraph.dev/schemas/resgraph.schema.json"
DIALECT = "https://json-schema.org/draft/2020-12/schema"


@cache
def json_schema() -> dict[str, Any]:
    """The schema as a dict; `schemas/resgraph.schema.json` holds exactly `schema_text()`."""
    from .spec import Spec

    schema = Spec.model_json_schema(by_alias=True, mode="validation")
    return {"$schema": DIALECT, "$id": SCHEMA_ID, **schema}


def schema_text() -> str:
    """The schema file's exact text: sorted keys, two-space indent, trailing newline."""
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
