"""Stage 2, validate: plain data -> a typed `Spec`, or every structural mistake with a location.

The schema checks the structure of the whole document first and reports every violation at
once: a predicate compiled from the packaged schema (`schema_check`) accepts most documents, and
only one it rejects is walked by jsonschema, which words the errors. Then the spec's parameters
are resolved and its top-level sections (inputs, outputs, scale, defaults) evaluated and typed
with pydantic. Layers and skips stay templates, at the top
level as in blocks: the expansion stage evaluates and types them per scope, through `evaluate`.
Third-party wording is translated by `translate`.

>>> from resgraph.loader import load_text
>>> spec = validate(load_text("resgraph: 1\\nname: M\\ninputs: {x: [4]}\\n"
...                           "layers:\\n  - fc: {op: Linear, out_features: 2}\\n"))
>>> spec.name, spec.input_decls()["x"].shape
('M', [4])
"""

from __future__ import annotations

import json
import keyword
import re
from collections.abc import Mapping
from functools import cache
from typing import Any

from pydantic import ValidationError

from .errors import Diagnostic, OverrideError, SpecError
from .evaluate import FailedNames, evaluate_tree, holds_expression, names_read, override_problems, resolve_params
from .expressions import expression_body
from .loader import LoadedSpec, Origin, Path, SourceMap, gc_paused
from .ops import OPS, GenericOpError
from .ops.base import is_identifier
from .ops.generic import torch_module_class
from .resources import schema_path
from .schema import json_schema, library_schema
from .schema_check import Compiler, Predicate, UnsupportedSchema
from .spec import BUILTIN_NAMES, SCHEMA_CHECKED, BlockLibrary, Spec
from .suggest import suggestion_budget
from .translate import coerced_diagnostics, jsonschema_diagnostics, keys_not_strings, pydantic_diagnostics, untyped_body

__all__ = ["declared_name_problems", "is_block_library", "schema_diagnostics", "unknown_block_ops", "validate",
           "validate_library"]

_OP_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
# Sections a spec writes as templates (typed per scope by expansion) or keeps unevaluated.
_TEMPLATES = ("params", "blocks", "layers", "skips")


def validate(loaded: LoadedSpec, params: Mapping[str, Any] | None = None,
             diagnostics: list[Diagnostic] | None = None) -> Spec:
    """Check loaded data against the schema and type the spec's top-level sections.

    Args:
        params: overrides of the spec's declared `params` (as from `--set NAME=VALUE`).
        diagnostics: where to report the mistakes that leave the rest of the spec usable: a
            layer or skip entry, a block definition or an input declaration (its name, shape or
            dtype) that breaks the schema. They are marked invalid in the returned spec
            (`Spec.invalid_entries`, `invalid_block`, `invalid_input`), so later stages skip them
            and what depends on them, and report everything else in the same run. Without it,
            any mistake raises.
    Returns:
        The typed `Spec`, whose `params` hold the values in force (defaults, then overrides).
        Its layers and skips (and blocks') stay templates, typed per scope by `expand`.
    Raises:
        SpecError: every schema violation outside layer, skip and block entries and inputs (or
            any, without `diagnostics`), and every parameter or top-level section violation.
        OverrideError: an override of an undeclared parameter, or holding an expression (alone).
    """
    # (gc: a large spec's many small, acyclic objects, see loader.gc_paused; suggestions: bounded for
    # `load_spec` too, which validates alone, see suggest.MAX_COMPARED; in a check, the check's bound)
    with gc_paused(), suggestion_budget():
        return _validate(loaded, params, diagnostics)


# Top-level keys that only describe the model, with a valid stand-in for an invalid value (see `_validate`).
_DESCRIPTIVE: dict[str, Any] = {"name": "Model", "description": None}


def _validate(loaded: LoadedSpec, params: Mapping[str, Any] | None, diagnostics: list[Diagnostic] | None) -> Spec:
    problems, paths = _schema_problems(loaded.data, loaded.source)
    # An invalid `name` or `description` changes nothing else: checked on with a stand-in, the rest of
    # the spec's mistakes are reported in this run too (an invalid name hid a misspelt op).
    described = {path[0] for path in paths if path[:1] and path[0] in _DESCRIPTIVE}
    paths = [path for path in paths if not (path[:1] and path[0] in described)]
    entries, blocks, inputs, fatal = _invalid_parts(paths, loaded.data)
    misnamed = declared_name_problems(loaded.data, loaded.source)
    problems += [diagnostic for _, diagnostic in misnamed]
    blocks |= {str(path[1]) for path, _ in misnamed if path[0] == "blocks"}  # left out: its calls report nothing more
    if problems and (fatal or diagnostics is None):
        raise SpecError(problems)
    stand_ins = _input_stand_ins(loaded.data, inputs)
    data = _without(loaded.data, entries, blocks, stand_ins)
    if described:
        data = {**data, **{key: _DESCRIPTIVE[key] for key in described}}
    root = Origin(loaded.source, ())
    found: list[Diagnostic] = []
    declared = data.get("params", {})
    refused = override_problems(declared, params or {}, root.child("params"), data.get("blocks"))
    if refused:  # (the caller's mistake: said alone, before what the spec does with the values)
        raise OverrideError(refused)
    values = resolve_params(declared, params or {}, root.child("params"), found)
    shell = {k: v for k, v in data.items() if k not in _TEMPLATES}
    if found and diagnostics is not None:
        failed = set(values.failed) if isinstance(values, FailedNames) else set()
        if _reads_none_of(shell, failed):
            # A parameter with no value: leave out the entries and blocks that read it (reported
            # nothing more, as what reads a refused layer), and check everything else in this run.
            reading = _parts_reading(data, failed)
            entries |= reading[0]
            blocks |= reading[1]
            data = _without(loaded.data, entries, blocks, stand_ins)
            problems += found
            found = []
            # (nothing left reads a failed one: the rest of the run reads the values as plain data)
            values = dict(values.values) if isinstance(values, FailedNames) else values
    data = {**evaluate_tree(shell, values, root, found, dependent=[]), **{k: data[k] for k in _TEMPLATES if k in data}}
    if found:
        raise SpecError([*problems, *found])
    try:
        # (its entries are the schema's, or stand-ins; its `params` replaced by their values below: `Spec.mark_invalid`)
        spec = Spec.model_validate(data, context=SCHEMA_CHECKED)
    except ValidationError as exc:
        raise SpecError([*problems, *pydantic_diagnostics(exc, data, root)]) from None
    coerced = coerced_diagnostics(spec, data, [key for key, value in shell.items() if holds_expression(value)], root)
    if coerced:
        raise SpecError([*problems, *coerced])
    if diagnostics is not None:
        # A block the schema refused is never expanded, so a misspelt op in another of its layers
        # (which the schema cannot tell from an uncurated torch.nn class) is named now, not next run.
        invalid = {name: loaded.data["blocks"][name] for name in blocks if name in loaded.data.get("blocks", {})}
        diagnostics.extend(_one_per_line(problems, unknown_block_ops(invalid, loaded.source)))
    return spec.mark_invalid(frozenset(entries), frozenset(blocks), frozenset(stand_ins.values()), values)


def _reads_none_of(value: Any, names: set[str]) -> bool:
    """True when every `${...}` in `value` parses and reads none of `names`."""
    read = names_read(value)
    return read is not None and not read & names


def _parts_reading(data: dict[str, Any], names: set[str]) -> tuple[set[tuple[str, int]], set[str]]:
    """The top-level layer and skip entries (section, index) and the blocks whose text reads one of
    `names` (or holds an expression that does not parse, which might)."""
    entries = {(section, i) for section in ("layers", "skips") if isinstance(data.get(section), list)
               for i, entry in enumerate(data[section]) if not _reads_none_of(entry, names)}
    blocks = data.get("blocks")
    return entries, {name for name, block in (blocks.items() if isinstance(blocks, dict) else ())
                     if not _reads_none_of(block, names)}


def declared_name_problems(data: Any, source: SourceMap) -> list[tuple[Path, Diagnostic]]:
    """The names a spec or library declares that the schema cannot refuse, each with its path and a
    diagnostic at it: a block parameter named like a name resgraph binds in block bodies
    (`spec.BUILTIN_NAMES`: `index`, `num_blocks`, `in_channels`, ...), which would silently hide the
    built-in name; a parameter anywhere named a Python keyword, which no expression can read; and a
    block input listed twice (`inputs: [x, x]`), whose call would pass more values than the block's
    forward takes.

    >>> from resgraph.loader import load_text
    >>> text = "resgraph: 1\\nblocks:\\n  b: {params: {in_channels: 3, depth: 2}, inputs: [a, a]}\\n"
    >>> loaded = load_text(text, "s.yaml")
    >>> [(path, str(d.location)) for path, d in declared_name_problems(loaded.data, loaded.source)]
    [(('blocks', 'b', 'params', 'in_channels'), 's.yaml:3:16'), (('blocks', 'b', 'inputs', 1), 's.yaml:3:55')]
    """
    found: list[tuple[Path, Diagnostic]] = []
    # A parameter named a Python keyword (`if`, `lambda`, `None`) is never read: `${if}` does not parse
    # and `${None}` is null; said at its key, where it was said only as "invalid syntax" where read.
    top = data.get("params") if isinstance(data, dict) else None
    for name in top if isinstance(top, dict) else ():
        if isinstance(name, str) and keyword.iskeyword(name):
            found.append((("params", name), _keyword_parameter(source, ("params", name), "")))
    # (top-level parameters may take the built-in names: inside a block the built-in name wins, see `expand`)
    blocks = data.get("blocks") if isinstance(data, dict) else None
    for block, definition in blocks.items() if isinstance(blocks, dict) else ():
        params = definition.get("params") if isinstance(definition, dict) else None
        for name in params if isinstance(params, dict) else ():
            where: Path = ("blocks", block, "params", name)
            if isinstance(name, str) and keyword.iskeyword(name):
                found.append((where, _keyword_parameter(source, where, f"block {block!r}: ")))
            elif name in BUILTIN_NAMES:
                hint = (f"rename the parameter (e.g. {name}_value); inside a block, `{name}` already means "
                        f"{BUILTIN_NAMES[name]}")
                found.append((where, Diagnostic(source.locate(where, key=True),
                                                f"block {block!r}: parameter {name!r} would hide the built-in name "
                                                f"{name!r} ({BUILTIN_NAMES[name]})", hint)))
        inputs = definition.get("inputs") if isinstance(definition, dict) else None
        seen: set[str] = set()
        for i, name in enumerate(inputs if isinstance(inputs, list) else ()):
            if not isinstance(name, str):  # (a list or mapping there is the schema's error, and unhashable)
                continue
            if name in seen:
                where = ("blocks", block, "inputs", i)
                found.append((where, Diagnostic(source.locate(where), f"block {block!r}: inputs: {name!r} is listed "
                                                                      "twice; each input of a block needs its own name",
                                                f"rename one (e.g. {name}2) and read each by its name")))
            seen.add(name)
    return found


def _keyword_parameter(source: SourceMap, where: Path, owner: str) -> Diagnostic:
    name = where[-1]
    read = f"is the constant {name}" if name in ("True", "False", "None") else "does not parse"
    return Diagnostic(source.locate(where, key=True),
                      f"{owner}parameter {name!r} is a Python keyword, which no expression can read "
                      f"(`${{{name}}}` {read})",
                      f"rename the parameter (e.g. {name.lower()}_value)")


def _invalid_parts(paths: list[Path], data: Any) -> tuple[set[tuple[str, int]], set[str], set[str], bool]:
    """Which top-level entries, blocks and inputs schema errors at `paths` fall in, and whether any
    falls elsewhere (then nothing can be typed: the error is fatal)."""
    entries: set[tuple[str, int]] = set()
    blocks: set[str] = set()
    inputs: set[str] = set()
    fatal = False
    declared = data.get("inputs") if isinstance(data, dict) else None
    defined = data.get("blocks") if isinstance(data, dict) else None
    for path in paths:
        if len(path) >= 2 and path[0] in ("layers", "skips") and isinstance(path[1], int):
            entries.add((str(path[0]), path[1]))
        elif len(path) >= 2 and path[0] == "blocks" and isinstance(path[1], str):
            blocks.add(path[1])
        elif len(path) >= 2 and path[0] == "inputs" and isinstance(path[1], str):
            inputs.add(path[1])  # its shape or dtype
        elif path == ("inputs",) and isinstance(declared, dict) and any(not is_identifier(k) for k in declared):
            inputs.update(k for k in declared if not is_identifier(k))  # its name
        elif path[:1] == ("outputs",) and len(path) <= 2:  # an item (its index), or the list (-1)
            entries.add(("outputs", path[1] if len(path) == 2 and isinstance(path[1], int) else -1))
        elif path == ("blocks",) and isinstance(defined, dict) and any(not is_identifier(k) for k in defined):
            blocks.update(k for k in defined if not is_identifier(k))  # its name (a call naming it is refused too)
        else:
            fatal = True
    return entries, blocks, inputs, fatal


def _without(data: dict[str, Any], entries: set[tuple[str, int]], blocks: set[str],
             inputs: Mapping[str, str]) -> dict[str, Any]:
    """`data` with each invalid entry replaced by a well-formed stand-in at its place (so the others
    keep their indices and positions), invalid outputs left out, each invalid block by an empty one,
    and each invalid input by a one-dim stand-in under the name `inputs` maps it to. Expansion never
    types a stand-in: the spec marks it invalid, and an invalid input has no type, so what reads it
    is left out silently."""
    if not entries and not blocks and not inputs:
        return data
    result = dict(data)
    for section in ("layers", "skips"):
        if any(s == section for s, _ in entries):
            result[section] = [_stand_in(entry, f"invalid_{section[:-1]}_{i}") if (section, i) in entries else entry
                               for i, entry in enumerate(data[section])]
    refused = {i for section, i in entries if section == "outputs"}
    if refused:  # the valid outputs are kept; with none left, the last layer's value is the output
        kept = [o for i, o in enumerate(data["outputs"]) if i not in refused] \
            if -1 not in refused and isinstance(data["outputs"], list) else []
        if kept:
            result["outputs"] = kept
        else:
            del result["outputs"]
    if blocks:  # (one with an invalid name is left out: no valid call can name it)
        result["blocks"] = {name: ({"layers": [{"invalid": {}}]} if name in blocks else block)
                            for name, block in data["blocks"].items() if is_identifier(name)}
    if inputs:
        result["inputs"] = {inputs.get(name, name): ([1] if name in inputs else decl)
                            for name, decl in data["inputs"].items()}
    return result


def _input_stand_ins(data: Any, inputs: set[str]) -> dict[str, str]:
    """Each invalid input's name -> the name its stand-in takes: its own, or a placeholder where
    its own is not a valid name (it keeps its place, so the first layer still reads it)."""
    declared = data.get("inputs") if inputs else None
    return {name: name if is_identifier(name) else f"invalid_input_{i}"
            for i, name in enumerate(declared or {}) if name in inputs}


def _stand_in(entry: Any, placeholder: str) -> dict[str, Any]:
    """An entry with the invalid one's name when that is a valid name (so references to it are
    recognised as depending on it), else `placeholder`, a name of its own (two entries refused
    for their names must not collide as duplicates)."""
    if isinstance(entry, dict) and len(entry) == 1:
        name, body = next(iter(entry.items()))
        if is_identifier(name):
            # a chunk/split's readers name its outputs: keep them, so those readers are recognised too
            pieces = body.get("outputs") if isinstance(body, dict) else None
            valid = isinstance(pieces, list) and all(isinstance(p, str) and is_identifier(p) for p in pieces)
            return {name: {"outputs": pieces}} if valid and pieces else {name: {}}
    return {placeholder: {}}


def is_block_library(data: Any) -> bool:
    """True for a document that is a block library (`blocks:` and no `layers:`), not a spec."""
    return isinstance(data, dict) and "blocks" in data and "layers" not in data and "name" not in data


def validate_library(loaded: LoadedSpec) -> BlockLibrary:
    """Check a block-library file (what `imports:` names) and type it.

    Raises:
        SpecError: every violation, located in the library file.
    """
    diagnostics = schema_diagnostics(loaded.data, loaded.source, "library")
    diagnostics += [diagnostic for _, diagnostic in declared_name_problems(loaded.data, loaded.source)]
    if diagnostics:  # the library is refused whole: also name its misspelt ops, which the schema cannot see
        blocks = loaded.data.get("blocks") if isinstance(loaded.data, dict) else None
        raise SpecError(_one_per_line(diagnostics, unknown_block_ops(blocks, loaded.source)))
    try:
        return BlockLibrary.model_validate(loaded.data, context=SCHEMA_CHECKED)  # (refused above unless valid)
    except ValidationError as exc:
        raise SpecError(list(pydantic_diagnostics(exc, loaded.data, Origin(loaded.source, ())))) from None


def unknown_block_ops(blocks: Any, source: SourceMap) -> list[Diagnostic]:
    """Each op that blocks write as a literal and that names no op (a `${}` op is known only at a call).

    `blocks` maps block names to typed `BlockDef`s or to their plain data, which the schema may
    have refused (anything that is not a mapping or list where one belongs is passed over).

    >>> from resgraph.loader import load_text
    >>> loaded = load_text("blocks:\\n  b:\\n    layers:\\n      - act: {op: ReLUU}\\n", "lib.yaml")
    >>> [(str(d.location), d.message[:42]) for d in unknown_block_ops(loaded.data["blocks"], loaded.source)]
    [('lib.yaml:4:19', "block 'b', layer 'act': unknown op 'ReLUU'")]
    """
    found: list[Diagnostic] = []
    for block, definition in blocks.items() if isinstance(blocks, Mapping) else ():
        layers = definition.get("layers") if isinstance(definition, Mapping) else getattr(definition, "layers", None)
        for i, entry in enumerate(layers if isinstance(layers, list) else ()):
            for name, template in entry.items() if isinstance(entry, Mapping) else ():
                op = template.get("op") if isinstance(template, Mapping) else None
                if not isinstance(op, str) or op in OPS or "${" in op or "." in op:
                    continue
                try:
                    torch_module_class(op)
                except GenericOpError as exc:
                    where = Origin(source, ("blocks", block, "layers", i, name, "op"))
                    found.append(Diagnostic(where.locate(), f"block {block!r}, layer {name!r}: {exc}"))
    return found


def _one_per_line(diagnostics: list[Diagnostic], more: list[Diagnostic]) -> list[Diagnostic]:
    """`diagnostics`, then those of `more` on a line none of them is on (a line gets one report)."""
    lines = {(d.location.file, d.location.line) for d in diagnostics}
    return [*diagnostics, *(d for d in more if (d.location.file, d.location.line) not in lines)]


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


@cache
def _predicates(root: str) -> Predicate | None:
    """The compiled twin of `_validators(root)`, from the packaged schema file (a test keeps it equal
    to the generated schema, so start-up needs neither the generation nor jsonschema); None when the
    file cannot be read or compiled (then jsonschema checks every document).

    As there, each layer body is checked against the definition it names (`_body_definition`), not
    against the published `oneOf`: here within the same walk of the document.
    """
    try:
        defs = dict(json.loads(schema_path().read_text(encoding="utf-8"))["$defs"])
        spec = defs.pop("Spec")
        bodies = Compiler(defs)
        checks: dict[str, Predicate] = {}  # definition name -> its predicate, looked up once
        curated: dict[str, Predicate] = {}  # a curated op -> its definition's predicate

        def layer_body(body: Any) -> bool:
            if not isinstance(body, dict):
                return False
            op = body.get("op")
            if type(op) is str:  # (a body with an `op` is dispatched by it alone)
                check = curated.get(op)
                if check is not None:
                    return check(body)
            definition = _body_definition(body)
            if definition is None:
                return False
            check = checks.get(definition)
            if check is None:
                try:
                    check = checks[definition] = bodies.definition(definition)
                except UnsupportedSchema:
                    return False
            if type(op) is str and _CURATED_DEFINITIONS.get(op) == definition:
                curated[op] = check  # (a registered op's model never changes: see _CURATED_DEFINITIONS)
            return check(body)

        shell = Compiler(defs, given={"LayerBody": layer_body})
        return shell.compile(spec) if root == "spec" else shell.definition("BlockLibrary")
    except (OSError, ValueError, KeyError):
        return None


def _accepts(data: Any, root: str) -> bool:
    """True when the schema certainly has nothing to say about `data` (jsonschema would report no
    error); False when it might, and jsonschema must look."""
    accepts = _predicates(root)
    return accepts is not None and accepts(data)


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
    if expression_body(op) is not None:
        return "ComputedOp"  # typed as the op it names once evaluated, by expansion
    definition = _CURATED_DEFINITIONS.get(op)
    if definition is None and op in OPS:
        definition = _CURATED_DEFINITIONS[op] = OPS[op].__name__
    if definition is not None:
        return definition
    return "GenericLayer" if _OP_NAME.fullmatch(op) else None


# A curated op's model name, by op: asked once per op per process (an op, once registered, is
# never registered again, so its model never changes), not once per layer through the registry.
_CURATED_DEFINITIONS: dict[str, str] = {}


def schema_diagnostics(data: Any, source: SourceMap, root: str = "spec") -> list[Diagnostic]:
    """Every violation of the schema by `data`, translated and de-duplicated, in file order.

    `root` is "spec" (the whole schema) or "library" (its BlockLibrary definition).
    """
    return _schema_problems(data, source, root)[0]


def _schema_problems(data: Any, source: SourceMap, root: str = "spec") -> tuple[list[Diagnostic], list[Path]]:
    """The schema's diagnostics, and the data path of each violation."""
    if _accepts(data, root):
        return [], []
    return _jsonschema_problems(data, source, root)


def _jsonschema_problems(data: Any, source: SourceMap, root: str) -> tuple[list[Diagnostic], list[Path]]:
    """`_schema_problems` from jsonschema's own walk of the document."""
    odd_keys = keys_not_strings(data, source)
    if odd_keys[0]:  # (only a dict spec can have them; jsonschema cannot walk such a document)
        return odd_keys
    result, paths = [], []
    shell, bodies = _validators(root)
    errors = list(shell.iter_errors(data))
    for path, body in _layer_bodies(data):
        definition = _body_definition(body)
        if definition is None:
            problems = untyped_body(path, body, data, source)
            result.extend(problems)
            paths.extend([path] * len(problems))
            continue
        for error in bodies[definition].iter_errors(body):
            error.path.extendleft(reversed(path))  # report it where it sits in the document
            errors.append(error)
    paths += [tuple(error.absolute_path) for error in errors]
    return result + jsonschema_diagnostics(errors, data, source), paths
