"""The JSON Schema of the spec language, generated from the pydantic models (never by hand).

`json_schema()` is rooted at a spec, and `$defs/BlockLibrary` describes a file of blocks for
`imports:`; these are what `validate` checks documents against. The published file
(`schema_text()`: `resgraph/schemas/resgraph.schema.json` in the package, copied to
`schemas/resgraph.schema.json`) holds the same definitions with a root that accepts both kinds
of document, so one editor modeline serves specs and block libraries. Generation adds one rule
the models cannot state: wherever a spec writes a value (op arguments, shapes, repeats, skip
options), a `${...}` expression may stand instead.

Regenerate the files with `python -m resgraph.schema` (one run suffices). The same command writes `ops/index.py`,
the op name -> module index (`op_index_text()`) that lets `ops.OPS` import only the op modules
a spec names.
"""

from __future__ import annotations

import json
import pathlib
from functools import cache
from typing import Any

__all__ = ["DIALECT", "SCHEMA_ID", "json_schema", "library_schema", "op_index", "op_index_text", "published_schema",
           "schema_text"]

SCHEMA_ID = "https://resgraph.dev/schemas/resgraph.schema.json"
DIALECT = "https://json-schema.org/draft/2020-12/schema"
EXPRESSION = {"type": "string", "pattern": r"^\$\{.*\}$", "description": "A ${...} expression over parameters."}
COMPUTED_OP = {"type": "object", "required": ["op"], "properties": {"op": {"$ref": "#/$defs/Expression"}},
               "title": "ComputedOp",
               "description": "A layer whose op is a ${...} expression (`op: \"${'Hardswish' if hs else 'ReLU'}\"`); "
                              "its arguments are checked as that op's once the expression is evaluated."}

# $defs whose properties are values a spec may compute; keys listed here are names, not values.
_NOT_VALUES = {"op", "input", "block", "from", "to", "with"}


@cache
def json_schema() -> dict[str, Any]:
    """The schema of a spec, as a dict (what `validate` checks a spec against)."""
    from pydantic import TypeAdapter
    from pydantic.json_schema import models_json_schema

    from .ops import OPS, GenericLayer
    from .spec import BlockCall, BlockLibrary, Scale, Skip, Spec, layer_body

    keys, top = models_json_schema([(Spec, "validation"), (BlockLibrary, "validation"), (Skip, "validation")],
                                   by_alias=True, ref_template="#/$defs/{model}")
    defs: dict[str, Any] = top["$defs"]
    body = TypeAdapter(layer_body()).json_schema(by_alias=True, ref_template="#/$defs/{model}")
    defs.update(body.pop("$defs"))
    defs["LayerBody"] = body
    defs["Expression"] = EXPRESSION
    # An `op` written as an expression names its op only once evaluated (per scope, by expansion,
    # which then types the body as that op); until then the body is checked as a mapping.
    defs["ComputedOp"] = COMPUTED_OP
    body["oneOf"].append({"$ref": "#/$defs/ComputedOp"})
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


@cache
def published_schema() -> dict[str, Any]:
    """The document editors read: a block library (`blocks:`, and neither `layers:` nor `name:`,
    as `validate.is_block_library` decides) is checked as `$defs/BlockLibrary`, anything else as
    `$defs/Spec`.

    `if`/`then`/`else` rather than `anyOf`: an editor then reports the mistakes of the one kind
    the document is, not a union of both kinds' complaints ("missing property name" in a library).
    """
    schema = json_schema()
    spec = {key: value for key, value in schema.items() if key not in ("$schema", "$id", "$defs")}
    library = {"required": ["blocks"], "not": {"anyOf": [{"required": ["layers"]}, {"required": ["name"]}]}}
    return {"$schema": DIALECT, "$id": SCHEMA_ID, "title": "resgraph spec or block library",
            "description": "A resgraph spec (a model), or a block library that specs import.",
            "if": library, "then": {"$ref": "#/$defs/BlockLibrary"}, "else": {"$ref": "#/$defs/Spec"},
            "$defs": dict(sorted({**schema["$defs"], "Spec": spec}.items()))}


def schema_text() -> str:
    """The published schema file's exact text: sorted keys, two-space indent, trailing newline."""
    return json.dumps(published_schema(), indent=2, sort_keys=True) + "\n"


def op_index() -> dict[str, str]:
    """Every curated op's name -> the module of `resgraph.ops` that defines (and registers) it.

    Read from the ops themselves: every module of the package is imported, so an op module is
    found without being listed anywhere, and each registered class says where it lives. Grouped
    by module (in name order), each module's ops in the order it registers them.
    """
    import importlib
    import pkgutil

    from . import ops
    from .ops.base import OPS

    for info in sorted(pkgutil.iter_modules(ops.__path__), key=lambda info: info.name):
        importlib.import_module(f"{ops.__name__}.{info.name}")
    where = {name: cls.__module__.removeprefix(f"{ops.__name__}.") for name, cls in OPS.registered().items()}
    return {name: module for home in sorted(set(where.values())) for name, module in where.items() if module == home}


def op_index_text() -> str:
    """The exact text of `ops/index.py`: `op_index()` as a module."""
    entries = "".join(f"    {json.dumps(name)}: {json.dumps(module)},\n" for name, module in op_index().items())
    return f"{_INDEX_DOCSTRING}\nOP_MODULES: dict[str, str] = {{\n{entries}}}\n"


_INDEX_DOCSTRING = '''"""Generated by `python -m resgraph.schema` from the op modules' `register_op` calls: do not edit.

Which module of resgraph.ops defines each curated op, so `OPS` imports only the modules a spec
names (see `base.OpRegistry`). `tests/test_op_index.py` fails when this disagrees with the modules.
"""
'''


def _write_files(root: pathlib.Path) -> list[pathlib.Path]:
    """Write the published schema into the package and its copy into the repository's `schemas/`, and
    the op index into `ops/index.py`."""
    from .resources import schema_path

    index_text = op_index_text()  # first: it imports every op module, so the schema has them all
    text = schema_text()
    targets = [schema_path()]
    if (root / "schemas").is_dir():  # a checkout of the repository, not an installed package
        targets.append(root / "schemas" / schema_path().name)
    for target in targets:
        target.write_text(text, encoding="utf-8")
    index = pathlib.Path(__file__).resolve().parent / "ops" / "index.py"
    index.write_text(index_text, encoding="utf-8")
    return [*targets, index]


def _main() -> None:
    """Write the files; when the op index changed, write the schema again in a fresh process.

    The spec models' layer union is built at import, in the order of the index this process
    started with, and the schema follows that order: a process that reads the new index writes
    the schema the tests compare against.
    """
    import subprocess
    import sys

    index = pathlib.Path(__file__).resolve().parent / "ops" / "index.py"
    before = index.read_text(encoding="utf-8") if index.exists() else None
    for written in _write_files(pathlib.Path(__file__).resolve().parent.parent):
        print(f"Wrote {written}")
    if index.read_text(encoding="utf-8") != before:
        print("The op index changed: writing the schema again in its order")
        subprocess.run([sys.executable, "-m", "resgraph.schema"], check=True)


if __name__ == "__main__":  # python -m resgraph.schema: regenerate the schema files after changing a model
    _main()
