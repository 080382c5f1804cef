"""Third-party errors -> resgraph diagnostics: jsonschema's and pydantic's, translated once, here.

Both validation (the whole spec) and expansion (each block instance's concrete layers) report
through these functions, so one mistake reads the same wherever it is found: it names the layer
or skip, the key, what was expected and what was found, with a "did you mean" where one helps.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from pydantic import BaseModel

from .errors import Diagnostic
from .loader import Origin, Path, SourceMap
from .ops import OPS
from .ops.base import DTYPES, dtype_suggestion
from .schema import EXPRESSION, json_schema
from .suggest import did_you_mean

__all__ = ["NAME_RULE", "coerced_diagnostics", "describe", "jsonschema_diagnostics", "keys_not_strings",
           "pydantic_diagnostics", "subject", "untyped_body"]

NAME_RULE = "names start with an ASCII letter and hold only ASCII letters, digits and '_'"


# --- where: a readable name for the part of the spec a path points into --------------------------

def subject(path: Path, data: Any, op: Any = None) -> tuple[str, Path]:
    """('layer 'conv1' (Conv2d)', rest-of-path) for a path into the spec (or one of its blocks).

    `op` names the layer's op; None looks it up in `data`; "" leaves it out.
    """
    if len(path) >= 2 and path[0] == "blocks":
        inner, rest = subject(path[2:], _get(data, path[:2]), op)
        return (f"block {path[1]!r}" + (f", {inner}" if inner != "spec" else "")), rest
    if len(path) >= 3 and path[0] in ("layers", "skips") and isinstance(path[1], int):
        name = path[2]
        if path[0] == "skips":
            return f"skip {name!r}", path[3:]
        if op is None:
            body = _get(data, path[:3])
            op = body.get("op") if isinstance(body, dict) else None
        return (f"layer {name!r} ({op})" if isinstance(op, str) and op else f"layer {name!r}"), path[3:]
    if len(path) >= 2 and path[0] == "inputs":
        return f"input {path[1]!r}", path[2:]
    if len(path) >= 2 and path[0] in ("layers", "skips", "outputs"):
        return f"{path[0]}[{path[1]}]", path[2:]
    if path:
        return str(path[0]), path[1:]
    return "spec", ()


def _get(data: Any, path: Path) -> Any:
    for part in path:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _label(path: Path, data: Any, op: Any = None) -> str:
    who, rest = subject(path, data, op)
    if path[:1] == ("inputs",) and rest[-1:] and isinstance(rest[-1], int) and rest[:-1] in ((), ("shape",)):
        rest = (f"dim {rest[-1]} of the shape",)  # `x: [0, -1]`: a size, said as the dim it is
    field = ".".join(str(p) for p in rest)
    return f"{who}: {field}" if field else who


def _show(value: Any) -> str:
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list",
            dict: "mapping", type(None): "null"}.get(type(value), type(value).__name__)
    if isinstance(value, (dict, list)) or value is None:  # (`got null`, not `got null None`)
        return kind
    text = repr(value)
    return f"{kind} {text if len(text) <= 40 else text[:37] + '...'}"


# --- jsonschema -----------------------------------------------------------------------------------

def jsonschema_diagnostics(errors: Iterable[Any], data: Any, source: SourceMap) -> list[Diagnostic]:
    """jsonschema's errors about `data` as diagnostics, de-duplicated, in the order given."""
    errors = list(errors)
    tuples = _tuples_written(data, data, source)
    # An entry that is not a one-key mapping is mis-indented: errors inside it are only noise.
    broken = {tuple(e.absolute_path) for e in errors if e.validator in ("minProperties", "maxProperties")}
    seen: set[tuple[Any, str]] = set()
    result = []
    for error in errors:
        path = tuple(error.absolute_path)
        if any(path[:len(b)] == b and len(path) > len(b) for b in broken):
            continue
        for diagnostic in _translate(error, data, source):
            tuple_written = tuples.get(diagnostic.location)
            if tuple_written is not None:  # one mistake, said once, at its first part
                diagnostic = tuple_written
            key = (diagnostic.location, diagnostic.message)
            if key not in seen:
                seen.add(key)
                result.append(diagnostic)
    return result


def _tuples_written(root: Any, data: Any, source: SourceMap, path: Path = ()) -> dict[Any, Diagnostic]:
    """Values written as a Python tuple, `kernel_size: (3, 3)`: location of each part -> the one error.

    YAML has no tuples: in a block mapping `(3, 3)` is the string '(3, 3)'; in a flow mapping
    (`{op: Conv2d, kernel_size: (3, 3)}`) its comma ends the value, so it is the string '(3' and a
    key '3)' with no value. Where the schema refuses one of those parts, the parts are one mistake.
    """
    found: dict[Any, Diagnostic] = {}
    if isinstance(data, list):
        for index, item in enumerate(data):
            found.update(_tuples_written(root, item, source, (*path, index)))
        return found
    if not isinstance(data, dict):
        return found
    keys = list(data)
    for position, key in enumerate(keys):
        value = data[key]
        if not isinstance(value, str) or not value.startswith("(") or not isinstance(key, str):
            found.update(_tuples_written(root, value, source, (*path, key)))
            continue
        parts, strays = [value], []
        if ")" not in value:  # a flow mapping split it: the keys after it, with no value, up to the one closing it
            for stray in keys[position + 1:]:
                if data[stray] is not None or not isinstance(stray, (str, int, float)):
                    break
                parts.append(str(stray))
                strays.append(stray)
                if str(stray).endswith(")"):
                    break
        written = ", ".join(part.strip() for part in parts)
        if not written.endswith(")"):
            continue
        listed = "[" + written[1:-1].strip() + "]"
        where = source.locate((*path, key))
        read = (f"the string {value!r}" if not strays else
                f"the string {value!r} and {'a key' if len(strays) == 1 else 'keys'} "
                f"{', '.join(repr(str(p)) for p in strays)}: in a {{...}} mapping a comma ends a value")
        diagnostic = Diagnostic(where, f"{_label((*path, key), root)}: {written} is a Python tuple, which YAML does "
                                       f"not have (it read {read}); write a list: {listed}")
        found[where] = diagnostic
        for stray in strays:
            found[source.locate((*path, stray), key=True)] = diagnostic
    return found


def _translate(error: Any, data: Any, source: SourceMap) -> Iterator[Diagnostic]:
    path: Path = tuple(error.absolute_path)
    kind = error.validator
    instance = error.instance
    schema = error.schema if isinstance(error.schema, dict) else {}

    if kind in ("type", "anyOf", "oneOf") and path[:1] == ("inputs",) and isinstance(path[-1], int) \
            and isinstance(instance, str) and "${" not in instance:  # `x: [3, H, W]`: a size written as a symbol
        yield Diagnostic(source.locate(path), f"{_label(path, data)}: expected {describe(schema)}, "
                                              f"got {_show(instance)}",
                         "input sizes are examples, not symbols: write one (e.g. 224), or a parameter (`\"${size}\"`); "
                         "the model works at every size its layers admit (`resgraph sizes SPEC` lists them)")
        return
    if kind in ("oneOf", "anyOf") and error.context:
        chosen = _branch_errors(error, path)
        if chosen is not None:
            for sub in chosen:
                yield from _translate(sub, data, source)
            return
        yield Diagnostic(source.locate(path), f"{_label(path, data)}: expected {describe(schema)}, "
                                              f"got {_show(instance)}")
        return

    if kind == "additionalProperties" and isinstance(instance, dict):
        allowed = list(schema.get("properties", {}))
        patterns = schema.get("patternProperties", {})
        for key in instance:
            if key in allowed or (patterns and _matches_any(key, patterns)):
                continue
            yield _unexpected_key(path, key, allowed, bool(patterns), data, source)
        return

    if kind == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        known = schema.get("properties", {})
        if isinstance(instance, dict) and any(isinstance(key, str) and key not in known and did_you_mean(key, [missing])
                                              for key in instance):
            return  # a misspelling of it is there: its "unknown key ...; did you mean" says it, once
        who = _label(path, data)
        noun = "argument" if _is_layer_body(path, data) else "key"
        yield Diagnostic(source.locate(path, key=True), f"{who}: missing required {noun} {missing!r}")
        return

    if kind in ("minProperties", "maxProperties") and len(path) == 2 and path[0] in ("layers", "skips"):
        what = "layer" if path[0] == "layers" else "skip"
        keys = ", ".join(map(str, instance)) or "none"
        example = "- conv1: {op: Conv2d, out_channels: 64, kernel_size: 3}" if what == "layer" \
            else "- shortcut: {from: x, to: conv2, merge: add}"
        yield Diagnostic(source.locate(path),
                         f"{path[0]}[{path[1]}]: each {what} is a one-key mapping NAME: {{...}}, found keys: {keys}",
                         f"write it as `{example}`; indent the body under its name")
        return

    if kind in ("minProperties", "minItems") and not instance:
        yield Diagnostic(source.locate(path), f"{_label(path, data)}: must not be empty")
        return

    if kind == "pattern" and isinstance(instance, str) and schema.get("pattern") == EXPRESSION["pattern"]:
        # (a value that takes a number or an expression: it failed as the expression, not as a name)
        yield _malformed_expression(path, instance, data, source)
        return
    if kind == "pattern" and isinstance(instance, str) and "${" in instance:
        yield Diagnostic(source.locate(path), f"{_label(path, data)}: a name cannot be an expression ({instance!r}): "
                                              "the graph's nodes, edges and blocks are fixed before parameters are "
                                              "evaluated",
                         "write one layer, skip or call per choice, each with a `when:` "
                         "(e.g. `when: \"${use_b}\"` on the one reading b, `when: \"${not use_b}\"` on the other)")
        return
    if kind == "pattern" and isinstance(instance, str):
        yield Diagnostic(source.locate(path), f"{_label(path, data)}: invalid name {instance!r}: {NAME_RULE}")
        return

    if kind in ("enum", "const"):
        options = schema.get("enum", [schema.get("const")])
        hint = _choice_hint(instance, map(str, options))
        yield Diagnostic(source.locate(path),
                         f"{_label(path, data)}: expected {describe(schema)}, got {_show(instance)}{hint}")
        return

    if kind == "type" and len(path) in (3, 5) and (path[0] in ("layers", "skips") or path[0] == "blocks"):
        if _is_layer_body(path, data) or (len(path) == 3 and path[0] == "skips"):
            example = "{op: ReLU}" if _is_layer_body(path, data) else "{from: x, to: conv2, merge: add}"
            yield Diagnostic(source.locate(path, key=True),
                             f"{subject(path, data)[0]}: expected a mapping like {example}, got {_show(instance)}")
            return
    if kind == "type":
        yield Diagnostic(source.locate(path), f"{_label(path, data)}: expected {describe(schema)}, "
                                              f"got {_show(instance)}")
        return

    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "maxLength", "minItems", "maxItems"):
        got = f"{len(instance)}" if isinstance(instance, (list, str)) and kind != "maxLength" else _show(instance)
        yield Diagnostic(source.locate(path), f"{_label(path, data)}: {_bound_message(kind, error.validator_value)}, "
                                              f"got {got}")
        return

    yield Diagnostic(source.locate(path), f"{_label(path, data)}: {error.message}")


def keys_not_strings(data: Any, source: SourceMap) -> tuple[list[Diagnostic], list[Path]]:
    """A diagnostic, and the path of its mapping, for every mapping key in `data` that is not a string
    (a spec given as a dict may hold any key; YAML's are refused as the text is read)."""
    found: tuple[list[Diagnostic], list[Path]] = ([], [])
    stack: list[tuple[Path, Any]] = [((), data)]
    while stack:  # in document order: children are pushed last first
        path, value = stack.pop()
        children: list[tuple[Path, Any]] = []
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str):
                    children.append(((*path, key), item))
                else:
                    found[0].append(Diagnostic(source.locate(path), f"{_label(path, data)}: mapping key {key!r} "
                                                                     "must be a string"))
                    found[1].append(path)
        elif isinstance(value, list):
            children = [((*path, index), item) for index, item in enumerate(value)]
        stack.extend(reversed(children))
    return found


def untyped_body(path: Path, body: dict[str, Any], data: Any, source: SourceMap) -> list[Diagnostic]:
    """A layer body whose `op` is missing or not a name: no definition fits it."""
    who = subject(path, data, "")[0]
    if "op" not in body:
        for key in body:  # `blok: unit`, `Op: ReLU`: point at the misspelt key
            hint = did_you_mean(key, ("op", "block")) if isinstance(key, str) else ""
            if hint:
                return [Diagnostic(source.locate((*path, key), key=True),
                                   f"{who}: unknown key {key!r}{hint} (a layer needs `op:`, a block instance "
                                   "`block:`)")]
        return [Diagnostic(source.locate(path, key=True),
                           f"{who}: needs `op:` (a layer) or `block:` (a block instance)")]
    op = body["op"]
    return [Diagnostic(source.locate((*path, "op")), f"{who}: unknown op {op!r}{did_you_mean(str(op), OPS)}",
                       "op is a torch.nn class name such as Conv2d, or one of add, concat, mul")]


def _is_layer_body(path: Path, data: Any) -> bool:
    """True for the body of a `- NAME: {...}` layer entry, at the top level or in a block."""
    if len(path) == 3 and path[0] == "layers":
        return True
    return len(path) == 5 and path[0] == "blocks" and path[2] == "layers"


def _branch_errors(error: Any, path: Path) -> list[Any] | None:
    """For a failed oneOf/anyOf, the errors of the alternative the user evidently meant.

    An alternative is ruled out when it fails on the value's type or, for layer bodies, on the
    `op` tag; if exactly one is left, its errors are the useful ones.
    """
    branches: dict[int, list[Any]] = {}
    for sub in error.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)

    def ruled_out(errors: list[Any]) -> bool:
        for sub in errors:
            rel = tuple(sub.absolute_path)[len(path):]
            if sub.validator == "type" and rel == ():
                return True
            if sub.validator == "required" and rel == () and isinstance(sub.instance, dict) and any(
                    key in ("op", "block") and key not in sub.instance for key in sub.validator_value):
                return True  # the discriminating key is absent: this alternative is not the one meant
            if rel == ("op",) and sub.validator in ("const", "not", "enum", "pattern"):
                return True
        return False

    alternatives = error.schema.get(error.validator, []) if isinstance(error.schema, dict) else []
    expression_meant = isinstance(error.instance, str) and error.instance.startswith("${")

    def is_expression(index: int) -> bool:
        return index < len(alternatives) and alternatives[index] == {"$ref": "#/$defs/Expression"}

    left = [errors for index, errors in branches.items() if not ruled_out(errors)
            and (expression_meant or not is_expression(index))]
    if len(left) == 1:
        return left[0]
    return None


def _matches_any(key: str, patterns: dict[str, Any]) -> bool:
    return any(re.search(pattern, key) for pattern in patterns)


def _malformed_expression(path: Path, text: str, data: Any, source: SourceMap) -> Diagnostic:
    """A string starting with `${` that is not one expression: its `${` never closed (`"${c"`), a line
    break inside it (`|` blocks, `"\\n"`), or text after its `}` (only whitespace: said as such). Was said
    as "a name cannot be an expression", of a number. Each is said where it goes wrong in the text: at the
    `${`, at the line break (of a `|` block too, not at its `|`), or where the text after the `}` starts."""
    if "}" not in text:
        return Diagnostic(source.locate_in(path, 0)[0], f"{_label(path, data)}: {text!r} is not an expression: its "
                                                        "`${` is never closed by `}`",
                          'close it: write the value as `"${...}"`, e.g. `"${c * 2}"` (quoted, so that YAML keeps '
                          "the braces)")
    closed = _closed_at(text)
    if closed and text[closed:].isspace() and "\n" not in text[:closed]:  # no text to move: spaces, or `|+`'s breaks
        return _whitespace_after_expression(path, text, closed, data, source)
    if "\n" in text.rstrip("\n"):
        return Diagnostic(source.locate_in(path, text.index("\n"))[0],
                          f"{_label(path, data)}: an expression is written on one line; {text!r} holds a line break",
                          'join its lines: quote it on one line, or fold it with `>-` and indent its lines alike')
    return Diagnostic(source.locate_in(path, closed)[0],
                      f"{_label(path, data)}: {text!r} has text after its expression; an expression is the whole "
                      "value, `${...}`", "move the text inside the braces, or remove it")


def _whitespace_after_expression(path: Path, text: str, closed: int, data: Any, source: SourceMap) -> Diagnostic:
    """Only whitespace follows the expression's `}`: said as what it is, with how to drop it, just past the `}`.

    A block scalar's one final line break is taken as part of the expression (`|`, `>`: see
    `expression_body`); blank lines after it are there because the block keeps them (`|+`), and `|-`
    drops them. They are not accepted: the published schema's pattern, which editors check with, ends
    at the `}`, and a value should mean the same to resgraph and to the editor.
    """
    tail = text[closed:]
    style = source.blocks.get(tuple(path))
    where = source.locate_in(path, closed)[0]
    label = f"{_label(path, data)}: {text!r}"
    spaces = bool(tail.strip("\n"))
    blank_lines = tail.count("\n") > 1 if style else "\n" in tail  # (one final break of a block is allowed)
    if style and not spaces:
        return Diagnostic(where, f"{label} ends in blank lines after its expression, which its block keeps "
                                 f"(`{style}+`); an expression is the whole value, `${{...}}`",
                          f"write the block as `{style}-`, which drops its final line breaks")
    blanks = "spaces" if not tail.strip("\n ") else "whitespace"  # (a tab too)
    fixes = [f"delete the {blanks} after its closing `}}`"] if spaces else []
    if blank_lines:
        fixes.append(f"write the block as `{style}-`, which drops its final line breaks" if style
                     else "delete the line breaks (`\\n`) after its closing `}`")
    kind = " and ".join(name for name, found in ((blanks, spaces), ("line breaks", blank_lines)) if found)
    return Diagnostic(where, f"{label} has {kind} after its expression; an expression is the whole value, `${{...}}`",
                      "; ".join(fixes))


def _closed_at(text: str) -> int:
    """The offset just past the `}` that closes the `${` starting `text` (0 where none does); a brace
    inside a string literal of the expression (`${len('}')} x`) closes nothing.

    >>> _closed_at("${a} x"), _closed_at("${ {1: 2}[1] } x"), _closed_at("${len('}')} x"), _closed_at("${a")
    (4, 14, 11, 0)
    """
    depth, quote = 0, ""
    for index, char in enumerate(text[1:], 1):
        if quote:
            quote = "" if char == quote and text[index - 1] != "\\" else quote
        elif char in "'\"":
            quote = char
        else:
            depth += (char == "{") - (char == "}")
            if depth == 0:
                return index + 1
    return 0


def _unexpected_key(path: Path, key: str, allowed: list[str], named: bool, data: Any,
                    source: SourceMap) -> Diagnostic:
    where = source.locate((*path, key), key=True)
    if named:  # a mapping of user-chosen names: the key is a bad name, not a misspelling
        return Diagnostic(where, f"{_label(path, data)}: invalid name {key!r}: {NAME_RULE}")
    if _is_layer_body(path, data):
        message, hint = _unknown_argument(_get(data, path).get("op"), key, allowed)
        return Diagnostic(where, f"{_label(path, data)}: {message}", hint)
    return Diagnostic(where, f"{_label(path, data)}: unknown key {key!r}{did_you_mean(key, allowed)}"
                      if path else f"unknown top-level key {key!r}{did_you_mean(key, allowed)}")


def _unknown_argument(op: Any, key: str, allowed: list[str]) -> tuple[str, str | None]:
    """(message, hint) for a key that a layer body's op (None: a block call) does not take, whichever
    check finds it: the schema for a literal op, the op's model for a computed one."""
    model = OPS.get(op) if isinstance(op, str) else None
    if model is not None and key in model.inferred:
        return f"{key!r} is inferred from the input; remove it", None
    hint = did_you_mean(key, [k for k in allowed if k != "op"])
    takes = ", ".join(k for k in allowed if k not in ("op",))
    if op is None:  # a block call (it names no op): its block's parameters go under `with:`
        takes = f"a block call takes: {takes}; pass the block's parameters under with: {{{key}: ...}}"
    return f"unknown argument {key!r}{hint}", None if hint else takes if op is None else f"{op} takes: {takes}"


def _choice_hint(value: Any, options: Iterable[str]) -> str:
    """The "did you mean" for a string that is none of a closed set of names; a dtype's from the dtype rules."""
    if not isinstance(value, str):
        return ""
    options = list(options)
    return dtype_suggestion(value) if set(options) == set(DTYPES) else did_you_mean(value, options)


def _bound_message(kind: str, bound: Any) -> str:
    return {
        "minimum": f"must be at least {bound}",
        "maximum": f"must be at most {bound}",
        "exclusiveMinimum": f"must be greater than {bound}",
        "exclusiveMaximum": f"must be less than {bound}",
        "maxLength": f"must be at most {bound} characters",
        "minItems": f"needs at least {bound} item{'s' if bound != 1 else ''}",
        "maxItems": f"takes at most {bound} item{'s' if bound != 1 else ''}",
    }[kind]


def describe(schema: Any, seen: frozenset[str] = frozenset()) -> str:
    """A short English description of what a schema accepts ('an integer >= 1 or a list of ...').

    `seen`: the definitions being described; a recursive one (a nested list literal) is named once.
    """
    if not isinstance(schema, dict):
        return "a valid value"
    if schema.get("$ref") == "#/$defs/Expression":
        return "a ${...} expression"
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        if name in seen:
            return "a list nested the same way"
        return describe(json_schema()["$defs"].get(name, {}), seen | {name})
    for union in ("anyOf", "oneOf"):
        if union in schema:
            # Any value may be a ${...} expression; saying so in every message is only noise.
            options = [s for s in schema[union] if s != {"$ref": "#/$defs/Expression"}] or schema[union]
            parts = list(dict.fromkeys(describe(s, seen) for s in options))
            return " or ".join(parts)
    if "const" in schema:
        return repr(schema["const"])
    if "enum" in schema:
        return "one of " + ", ".join(repr(v) for v in schema["enum"])
    kind = schema.get("type")
    if kind == "integer":
        bound = schema.get("minimum")
        return "an integer" + (f" >= {bound}" if bound is not None else "")
    if kind == "number":
        return "a number"
    if kind == "boolean":
        return "true or false"
    if kind == "null":
        return "null"
    if kind == "string":
        return "a name" if "pattern" in schema else "a string"
    if kind == "array":
        return f"a list of {_plural(describe(schema['items'], seen))}" if "items" in schema else "a list"
    if kind == "object":
        return "a mapping"
    return "a valid value"


def _plural(description: str) -> str:
    for single, many in (("an integer", "integers"), ("a number", "numbers"), ("a name", "names"),
                         ("a string", "strings"), ("a mapping", "mappings")):
        if description.startswith(single):
            return many + description[len(single):]
    return f"({description})"


# --- pydantic --------------------------------------------------------------------------------------

def pydantic_diagnostics(exc: Any, data: Any, origin: Origin) -> Iterator[Diagnostic]:
    """Translate a pydantic ValidationError about `data`, which was written at `origin`.

    A value that fails every alternative of a union (`init: zeros | 1e-6 | [list]`) is one
    mistake, reported once (see `_union_messages`), as the JSON Schema translation reports it.
    """
    for path, item, message in _union_messages(
            [(_data_path(item["loc"], data), item) for item in exc.errors(include_url=False)]):
        named = re.match(r"'(\w+)'", message)  # a model rule names its key first: point at that key
        if named and isinstance(_get(data, path), dict) and named.group(1) in _get(data, path):
            path = (*path, named.group(1))
            message = message[named.end():].lstrip()
        full = (*origin.path, *path)
        op = _get(data, ("op",)) if origin.path else None
        of_key = item["loc"][-1:] == ("[key]",) and bool(path)  # a key's own name (`params: {"3": 4}`)
        where = origin.source.locate(full, key=item["type"] == "extra_forbidden" or bool(named) or of_key)
        if of_key:  # said of its mapping, as the schema says a bad name in `inputs:`
            full = full[:-1]
        if item["type"] == "extra_forbidden" and len(path) == 1 and isinstance(op, str) and op in OPS:
            # a layer body typed only once its `op` is computed: said as the schema says it of a literal op
            message, hint = _unknown_argument(op, str(path[0]), list(_fields(OPS[op])))
            yield Diagnostic(where, f"{_label(origin.path, None, op)}: {message}", hint)
            continue
        yield Diagnostic(where, f"{_label(full, data if not origin.path else None, op)}: {message}")


# The kind of value each of pydantic's type errors expects (bool: true/false, number: an int or float, ...):
# an alternative of a union whose kind is not the value's own was not the one the spec meant.
_EXPECTED_KIND = {"bool_type": "bool", "bool_parsing": "bool", "int_type": "number", "int_parsing": "number",
                  "int_from_float": "number", "float_type": "number", "float_parsing": "number",
                  "string_type": "str", "string_pattern_mismatch": "str", "literal_error": "str", "enum": "str",
                  "list_type": "list", "dict_type": "dict", "model_type": "dict", "model_attributes_type": "dict"}


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "str", list: "list", tuple: "list", dict: "dict"}.get(type(value), "other")


def _union_messages(items: list[tuple[Path, dict[str, Any]]]) -> Iterator[tuple[Path, dict[str, Any], str]]:
    """(data path, pydantic error, message) for each mistake, the alternatives of a union merged.

    pydantic reports a value that no alternative of a union takes once per alternative, at one data
    path (its tags dropped): `value: .inf` on `bool | int | float` gave "expected true or false" and
    "expected a finite number" twice. At a path holding several errors, or errors below it (an
    alternative that took the value's kind and failed inside it), the alternatives expecting
    another kind of value are left out; what is left is said once. Where every alternative expects
    another kind, they are one message: "expected an integer or a list, got string 'a'".

    >>> items = [(("v",), {"type": "bool_type", "input": 1.5, "msg": ""}),
    ...          (("v",), {"type": "finite_number", "input": 1.5, "msg": ""}),
    ...          (("v",), {"type": "finite_number", "input": 1.5, "msg": ""})]
    >>> [message for _, _, message in _union_messages(items)]
    ['expected a finite number, got number 1.5']
    """
    groups: dict[Path, list[dict[str, Any]]] = {}
    for path, item in items:
        groups.setdefault(path, []).append(item)
    above = {other[:end] for other in groups for end in range(len(other))}  # paths with errors below them
    for path, group in groups.items():
        deeper = path in above
        if len(group) == 1 and not deeper:
            yield path, group[0], _pydantic_message(group[0])
            continue
        meant = [item for item in group if _EXPECTED_KIND.get(item["type"], _kind(item.get("input")))
                 == _kind(item.get("input"))]
        if meant or deeper:
            said: set[str] = set()
            for item in meant:
                message = _pydantic_message(item)
                if message not in said:
                    said.add(message)
                    yield path, item, message
            continue
        expected, got = [], ""
        for item in group:
            head, _, got = _pydantic_message(item).removeprefix("expected ").partition(", got ")
            if head not in expected:
                expected.append(head)
        yield path, group[0], f"expected {' or '.join(expected)}, got {got}"


def coerced_diagnostics(typed: Any, body: dict[str, Any], computed: Iterable[str], origin: Origin) -> list[Diagnostic]:
    """Computed values pydantic converted to another kind of value, as errors: what the schema
    refuses written is refused computed.

    pydantic's lax mode reads true as 1 and 1 as true, and "4" as 4. A written `out_channels: true`
    never reaches it (the JSON Schema refuses it first), but `out_channels: "${flag}"` with a
    boolean `flag` did, and built one channel (`p: "${flag}"`: a dropout of probability 1). Values
    are compared all the way down: `kernel_size: ["${flag}", 3]`, `scale: {width: "${s}"}`.

    Args:
        typed: the model `body` was typed as.
        computed: the keys of `body` whose values hold `${...}` expressions.
    """
    found = []
    for key in computed:
        if key not in _fields(type(typed)):
            continue
        found_leaf = _coerced(body[key], typed.__dict__.get(_fields(type(typed))[key]), ())
        if found_leaf is None:
            continue
        where, given, kept = found_leaf
        expected = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
            type(kept), f"a {type(kept).__name__}")
        full = (*origin.path, key, *where)
        op = body.get("op") if origin.path else None
        found.append(Diagnostic(origin.source.locate(full), f"{_label(full, None, op)}: expected {expected}, got "
                                                            f"{_show(given)}"))
    return found


def _coerced(given: Any, kept: Any, path: Path) -> tuple[Path, Any, Any] | None:
    """The first leaf where typing changed the kind of value (a boolean for a number or back, a
    string for a number), as (its path below `path`, given, kept), walking dicts, lists and nested
    models alike."""
    if isinstance(given, dict) and isinstance(kept, BaseModel):
        fields = _fields(type(kept))
        pairs = [(key, value, kept.__dict__.get(fields[key])) for key, value in given.items() if key in fields]
    elif isinstance(given, dict) and isinstance(kept, dict):
        pairs = [(key, value, kept[key]) for key, value in given.items() if key in kept]
    elif isinstance(given, (list, tuple)) and isinstance(kept, (list, tuple)) and len(given) == len(kept):
        pairs = [(index, *pair) for index, pair in enumerate(zip(given, kept))]
    else:
        if given is None or kept is None:
            return None
        if isinstance(given, bool) or isinstance(kept, bool):
            changed = isinstance(given, bool) != isinstance(kept, bool)
        else:
            changed = isinstance(given, str) != isinstance(kept, str)
        return (path, given, kept) if changed else None
    for key, value, typed in pairs:
        leaf = _coerced(value, typed, (*path, key))
        if leaf is not None:
            return leaf
    return None


def _fields(model: type[BaseModel]) -> dict[str, str]:
    """A model's keys as written (aliases) -> its field names (once per model)."""
    fields = _FIELDS.get(model)
    if fields is None:
        fields = _FIELDS[model] = {(info.alias or name): name for name, info in model.model_fields.items()}
    return fields


_FIELDS: dict[type, dict[str, str]] = {}


_PYDANTIC_BOUNDS = {"greater_than_equal": ("ge", "minimum"), "greater_than": ("gt", "exclusiveMinimum"),
                    "less_than_equal": ("le", "maximum"), "less_than": ("lt", "exclusiveMaximum")}


def _pydantic_message(item: dict[str, Any]) -> str:
    """pydantic's message in the words the jsonschema translation uses for the same mistake."""
    kind, ctx = item["type"], item.get("ctx") or {}
    got = _show(item.get("input"))
    if kind in _PYDANTIC_BOUNDS:
        key, schema_word = _PYDANTIC_BOUNDS[kind]
        return f"{_bound_message(schema_word, ctx.get(key))}, got {got}"
    words = {"int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
             "bool_type": "true or false", "bool_parsing": "true or false", "float_type": "a number",
             "float_parsing": "a number", "string_type": "a string", "list_type": "a list", "dict_type": "a mapping",
             "finite_number": "a finite number"}
    if kind in words:
        return f"expected {words[kind]}, got {got}"
    if kind in ("literal_error", "enum"):
        value = item.get("input")
        hint = _choice_hint(value, re.findall(r"'([^']*)'", str(ctx.get("expected", ""))))
        return f"expected {ctx.get('expected', 'another value')}, got {got}{hint}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping, got {got}"
    if kind == "string_pattern_mismatch":
        return f"invalid name {item.get('input')!r}: {NAME_RULE}"
    if kind in ("string_too_long", "string_too_short"):
        bound = ctx.get("max_length", ctx.get("min_length"))
        return f"must be {'at most' if kind == 'string_too_long' else 'at least'} {bound} characters, got {got}"
    if kind in ("too_long", "too_short"):
        bound = ctx.get("max_length", ctx.get("min_length"))
        actual = ctx.get("actual_length", got)
        return f"{_bound_message('maxItems' if kind == 'too_long' else 'minItems', bound)}, got {actual}"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":  # a body checked only once typed (an `op` computed by an expression)
        key = item["loc"][-1] if item.get("loc") else None
        return f"missing required argument {key!r}" if isinstance(key, str) else "missing"
    if kind in ("value_error", "assertion_error"):  # resgraph's own validators: already in its words
        return item["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    # Any other kind: pydantic's "Input should be ..." phrased as the messages above are.
    message = str(item.get("msg", "invalid value"))
    expected = message.removeprefix("Input should be ")
    if expected != message:
        return f"expected {expected}, got {got}"
    return f"{message[:1].lower()}{message[1:]} (got {got})"


def _data_path(loc: tuple[Any, ...], data: Any) -> Path:
    """Drop pydantic's union tags from a loc, keeping only the steps that exist in the data.

    A tag can equal a key of the data (a block call's tag is `block`, also its key): a step is
    not taken when the next one exists where we are but not inside it.
    """
    path: list[str | int] = []
    for i, part in enumerate(loc):
        if not _has(data, part):
            continue
        following = loc[i + 1] if i + 1 < len(loc) else None
        if following is not None and _has(data, following) and not _has(data[part], following):
            continue  # `part` is a tag that happens to be a key too
        data = data[part]
        path.append(part)
    return tuple(path)


def _has(data: Any, part: Any) -> bool:
    if isinstance(data, dict):
        return part in data
    return isinstance(data, list) and isinstance(part, int) and not isinstance(part, bool) and 0 <= part < len(data)
