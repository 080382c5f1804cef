"""Stage 2, validate: plain data -> a typed `Spec`, or every structural mistake with a location.

jsonschema checks the structure of the whole document first and reports every violation at
once; then the spec's parameters are resolved and its top-level sections (inputs, outputs,
scale, defaults) evaluated and typed with pydantic. Layers and skips stay templates, at the top
level as in blocks: the expansion stage evaluates and types them per scope, through `evaluate`.
Third-party wording is translated by `translate`.

>>> from resgraph.loader import load_text
>>> spec = validate(load_text("resgraph: 1\\nname: M\\ninputs: {x: [4]}\\n"
...                           "layers:\\n  - fc: {op: Linear, out_features: 2}\\n"))
>>> spec.name, spec.input_decls()["x"].shape
('M', [4])
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from typing import Any

from pydantic import ValidationError

from .errors import Diagnostic, SpecError
from .evaluate import evaluate_tree, resolve_params
from .loader import LoadedSpec, Origin, Path, SourceMap
from .ops import OPS
from .schema import json_schema, library_schema
from .spec import BlockLibrary, Spec
from .translate import jsonschema_diagnostics, pydantic_diagnostics, untyped_body

__all__ = ["is_block_library", "schema_diagnostics", "validate", "validate_library"]

_OP_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
# Sections a spec writes as templates (typed per scope by expansion) or keeps unevaluated.
_TEMPLATES = ("params", "blocks", "layers", "skips")


def validate(loaded: LoadedSpec, params: Mapping[str, Any] | None = None) -> Spec:
    """Check loaded data against the schema and type the spec's top-level sections.

    Args:
        params: overrides of the spec's declared `params` (as from `--set NAME=VALUE`).
    Returns:
        The typed `Spec`, whose `params` hold the values in force (defaults, then overrides).
        Its layers and skips (and blocks') stay templates, typed per scope by `expand`.
    Raises:
        SpecError: every schema violation; else every parameter or top-level section violation.
    """
    diagnostics = schema_diagnostics(loaded.data, loaded.source)
    if diagnostics:
        raise SpecError(diagnostics)
    root = Origin(loaded.source, ())
    values = resolve_params(loaded.data.get("params", {}), params or {}, root.child("params"), diagnostics)
    shell = {k: v for k, v in loaded.data.items() if k not in _TEMPLATES}
    data = {**evaluate_tree(shell, values, root, diagnostics),
            **{k: loaded.data[k] for k in _TEMPLATES if k in loaded.data}}
    if diagnostics:
        raise SpecError(diagnostics)
    try:
        return Spec.model_validate(data).model_copy(update={"params": values})
    except ValidationError as exc:
        raise SpecError(list(pydantic_diagnostics(exc, data, root))) from None


def is_block_library(data: Any) -> bool:
    """True for a document that is a block library (`blocks:` and no `layers:`), not a spec."""
    return isinstance(data, dict) and "blocks" in data and "layers" not in data and "name" not in data


def validate_library(loaded: LoadedSpec) -> BlockLibrary:
    """Check a block-library file (what `imports:` names) and type it.

    Raises:
        SpecError: every violation, located in the library file.
    """
    diagnostics = schema_diagnostics(loaded.data, loaded.source, "library")
    if diagnostics:
        raise SpecError(diagnostics)
    try:
        return BlockLibrary.model_validate(loaded.data)
    except ValidationError as exc:
        raise SpecError(list(pydantic_diagnostics(exc, loaded.data, Origin(loaded.source, ())))) from None


@cache
def _validators(root: str) -> tuple[Any, dict[str, Any]]:
    """A validator for the document with layer bodies checked only as mappings, and one per body
    definition (Conv2d, GenericLayer, BlockCall, ...).

    The published schema says a body is `oneOf` the definitions, which is what editors need; but
    proving "exactly one" checks every body against all of them. Dispatching on `op` (or
    `block`) validates each body once, against the same definitions, with the same errors.
    """
    import jsonschema

    schema = {"spec": json_schema, "library": library_schema}[root]()
    defs = schema["$defs"]
    shell = {**schema, "$defs": {**defs, "LayerBody": {"type": "object"}}}
    names = [ref["$ref"].rsplit("/", 1)[-1] for ref in defs["LayerBody"]["oneOf"]]
    bodies = {name: jsonschema.Draft202012Validator({"$defs": defs, "$ref": f"#/$defs/{name}"}) for name in names}
    return jsonschema.Draft202012Validator(shell), bodies


def _layer_bodies(data: Any) -> list[tuple[Path, dict[str, Any]]]:
    """(path, body) of every `- NAME: {...}` layer entry, at the top level and inside blocks."""
    if not isinstance(data, dict):
        return []
    lists: list[tuple[Path, Any]] = [(("layers",), data.get("layers"))]
    if isinstance(data.get("blocks"), dict):
        lists += [(("blocks", name, "layers"), block.get("layers")) for name, block in data["blocks"].items()
                  if isinstance(block, dict)]
    found = []
    for prefix, entries in lists:
        for index, entry in enumerate(entries if isinstance(entries, list) else []):
            if isinstance(entry, dict) and len(entry) == 1:
                name, body = next(iter(entry.items()))
                if isinstance(body, dict):
                    found.append(((*prefix, index, name), body))
    return found


def _body_definition(body: dict[str, Any]) -> str | None:
    """The schema definition a layer body is meant to match, chosen as pydantic chooses it."""
    if "block" in body and "op" not in body:
        return "BlockCall"
    op = body.get("op")
    if not isinstance(op, str):
        return None
    if op in OPS:
        return OPS[op].__name__
    return "GenericLayer" if _OP_NAME.fullmatch(op) else None


def schema_diagnostics(data: Any, source: SourceMap, root: str = "spec") -> list[Diagnostic]:
    """Every violation of the schema by `data`, translated and de-duplicated, in file order.

    `root` is "spec" (the whole schema) or "library" (its BlockLibrary definition).
    """
    result = []
    shell, bodies = _validators(root)
    errors = list(shell.iter_errors(data))
    for path, body in _layer_bodies(data):
        definition = _body_definition(body)
        if definition is None:
            result.extend(untyped_body(path, body, data, source))
            continue
        for error in bodies[definition].iter_errors(body):
            error.path.extendleft(reversed(path))  # report it where it sits in the document
            errors.append(error)
    return result + jsonschema_diagnostics(errors, data, source)
