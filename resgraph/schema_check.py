"""A JSON Schema compiled into one yes/no predicate: the fast path of `validate`.

`validate` must report every schema violation in jsonschema's terms, but almost every document
it sees has none. Walking a 10,000-layer spec with jsonschema's validator costs most of a
second; the same answer (valid or not) from closures compiled once per schema costs a tenth
of it, and needs neither jsonschema nor the schema's generation from the models at start-up.
`validate` asks this predicate first and runs jsonschema only for a document it rejects, to word
the errors exactly as before.

The predicate accepts a document exactly when jsonschema's Draft 2020-12 validator (without
format assertions) reports no error: the same type rules (an integer-valued float is an
integer, a bool is not a number), the same equality for `const` and `enum` (`True` is not `1`),
`pattern` by `re.search`. It compiles only the keywords resgraph's schema uses; any other
raises `UnsupportedSchema` at compile time, never a wrong answer at run time.

>>> accepts = compile_schema({"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}},
...                           "required": ["n"], "additionalProperties": False})
>>> accepts({"n": 2}), accepts({"n": 2.0}), accepts({"n": True}), accepts({"n": 2, "m": 1}), accepts({})
(True, True, False, False, False)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from numbers import Number
from typing import Any

__all__ = ["Compiler", "Predicate", "UnsupportedSchema", "compile_schema", "equal"]

Predicate = Callable[[Any], bool]

# Keywords that only annotate (jsonschema asserts no `format` unless asked to).
_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$comment", "$schema", "$id", "deprecated",
                          "readOnly", "writeOnly", "format", "$defs"})


class UnsupportedSchema(ValueError):
    """The schema uses a keyword (or a `$ref` form) this compiler does not implement."""


def _is_integer(x: Any) -> bool:
    if type(x) is int:  # the common case, answered first
        return True
    if isinstance(x, float):
        return x.is_integer()
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, Number) and not isinstance(x, bool)


_TYPES: dict[str, Predicate] = {
    "array": lambda x: isinstance(x, list),
    "boolean": lambda x: isinstance(x, bool),
    "integer": _is_integer,
    "null": lambda x: x is None,
    "number": _is_number,
    "object": lambda x: isinstance(x, dict),
    "string": lambda x: isinstance(x, str),
}

_TRUE = object()
_FALSE = object()


def _unbool(x: Any) -> Any:
    return _TRUE if x is True else _FALSE if x is False else x


def equal(one: Any, two: Any) -> bool:
    """jsonschema's equality for `const` and `enum`: as `==`, except that booleans equal only booleans."""
    if one is two:
        return True
    if isinstance(one, str) or isinstance(two, str):
        return bool(one == two)
    if isinstance(one, list) and isinstance(two, list):
        return len(one) == len(two) and all(equal(a, b) for a, b in zip(one, two))
    if isinstance(one, dict) and isinstance(two, dict):
        return one.keys() == two.keys() and all(equal(one[k], two[k]) for k in one)
    return bool(_unbool(one) == _unbool(two))


def compile_schema(schema: Any, defs: Mapping[str, Any] | None = None) -> Predicate:
    """A predicate that is True exactly for the instances `schema` accepts.

    Args:
        schema: a Draft 2020-12 schema (a dict or a boolean).
        defs: the `$defs` that `#/$defs/NAME` references resolve in; default: `schema["$defs"]`.
    Returns:
        The predicate. References are compiled once each, on first use, so recursive schemas work.
    Raises:
        UnsupportedSchema: the schema uses a keyword or reference this compiler does not implement.
    """
    if defs is None:
        defs = schema.get("$defs", {}) if isinstance(schema, dict) else {}
    return Compiler(defs).compile(schema)


class Compiler:
    """Compiles schemas whose references resolve in one set of `$defs`, each definition once.

    `given`: definitions supplied as ready predicates instead of compiled from `defs` (`validate`
    checks each layer body against the definition its `op` names, as jsonschema is run).
    """

    def __init__(self, defs: Mapping[str, Any], given: Mapping[str, Predicate] | None = None) -> None:
        self.defs = defs
        self.compiled: dict[str, Predicate] = dict(given or {})

    def definition(self, name: str) -> Predicate:
        """The predicate of `$defs/NAME`. Raises UnsupportedSchema (also for an unknown NAME)."""
        return self.ref(f"#/$defs/{name}")

    def ref(self, ref: str) -> Predicate:
        name = ref.removeprefix("#/$defs/")
        if name != ref and name in self.compiled:
            return self.compiled[name]
        if name == ref or "/" in name or name not in self.defs:
            raise UnsupportedSchema(f"unsupported reference {ref!r}")
        slot: list[Predicate] = []
        self.compiled[name] = lambda x: slot[0](x)  # a cycle reaches this while compiling
        slot.append(self.compile(self.defs[name]))
        self.compiled[name] = slot[0]
        return slot[0]

    def compile(self, schema: Any) -> Predicate:  # noqa: C901  (one branch per keyword)
        """The predicate of `schema`. Raises UnsupportedSchema."""
        if schema is True or schema == {}:
            return lambda x: True
        if schema is False:
            return lambda x: False
        if not isinstance(schema, dict):
            raise UnsupportedSchema(f"a schema must be a mapping or a boolean, got {schema!r}")
        unknown = set(schema) - _ANNOTATIONS - _KEYWORDS
        if unknown:
            raise UnsupportedSchema(f"unsupported keywords {sorted(unknown)}")
        kinds = None if "type" not in schema else \
            schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        # A keyword of one type holds for an instance of any other (`maxLength` for a number). With
        # one declared type, only that type's keywords can fail; and when nothing is checked before
        # them (`const`, `enum`), their check, answering False for another type, is the type test too.
        single = kinds[0] if kinds is not None and len(kinds) == 1 else None
        fused = single in _FAMILIES and "const" not in schema and "enum" not in schema
        checks: list[Predicate] = []
        # An op's name (`{type: string, const: Conv2d}`): the type test and `equal` (which is `==`
        # for a string) as one check, before any other, as they are run apart.
        string_const = single == "string" and isinstance(schema.get("const"), str) and "enum" not in schema
        if string_const:
            const = schema["const"]
            checks.append(lambda x: isinstance(x, str) and x == const)
        elif kinds is not None and not fused:
            tests = [_TYPES[k] for k in kinds]
            checks.append(tests[0] if len(tests) == 1 else (lambda x: any(t(x) for t in tests)))
        if "const" in schema and not string_const:
            const = schema["const"]
            checks.append(lambda x: equal(x, const))
        if "enum" in schema:
            members = list(schema["enum"])
            hashable = [m for m in members if isinstance(m, str)]
            if len(hashable) == len(members):  # names: a set lookup answers the same as `equal`
                names = frozenset(hashable)
                checks.append(lambda x: isinstance(x, str) and x in names)
            else:
                checks.append(lambda x: any(equal(x, m) for m in members))
        integers = single == "integer"
        groups = {"string": self._strings(schema, not fused),
                  "number": self._numbers(schema, not fused, _is_integer if integers and fused else _is_number),
                  "array": self._arrays(schema, not fused), "object": self._objects(schema, not fused)}
        family = _FAMILIES.get(single) if single is not None else None
        if fused and groups[family] is None:  # (`family` is set: `fused` needs `single` in _FAMILIES)
            checks.append(_TYPES[single])
        checks += [group for kind, group in groups.items()
                   if group is not None and (single is None or kind == family)]
        if "$ref" in schema:
            checks.append(self.ref(schema["$ref"]))  # (in a cycle, the slot that forwards to it)
        if "anyOf" in schema:
            checks.append(_any([self.compile(s) for s in schema["anyOf"]]))
        if "allOf" in schema:
            members_all = [self.compile(s) for s in schema["allOf"]]
            checks.append(lambda x: all(m(x) for m in members_all))
        if "oneOf" in schema:
            members_one = [self.compile(s) for s in schema["oneOf"]]
            checks.append(lambda x: sum(1 for m in members_one if m(x)) == 1)
        if "not" in schema:
            negated = self.compile(schema["not"])
            checks.append(lambda x: not negated(x))
        if "if" in schema:
            condition = self.compile(schema["if"])
            then = self.compile(schema.get("then", True))
            otherwise = self.compile(schema.get("else", True))
            checks.append(lambda x: then(x) if condition(x) else otherwise(x))
        return _all(checks)

    # Each type's keywords as one check; `other`: its answer for an instance of another type (True
    # where the keywords merely do not apply, False where the schema declares this type alone).

    def _strings(self, schema: dict[str, Any], other: bool) -> Predicate | None:
        search = re.compile(schema["pattern"]).search if "pattern" in schema else None
        longest, shortest = schema.get("maxLength"), schema.get("minLength")
        if search is None and longest is None and shortest is None:
            return None

        def string_ok(x: Any) -> bool:
            if not isinstance(x, str):
                return other
            return ((search is None or search(x) is not None) and (longest is None or len(x) <= longest)
                    and (shortest is None or len(x) >= shortest))

        return string_ok

    def _numbers(self, schema: dict[str, Any], other: bool, is_instance: Predicate) -> Predicate | None:
        # jsonschema fails a bound on the opposite comparison (`instance < minimum`), so NaN, which
        # compares false with everything, passes every bound: written the same way, so does it here.
        # (`is_instance` is `_is_integer` for a schema of type integer alone: every integer is a number.)
        lowest, highest = schema.get("minimum"), schema.get("maximum")
        above, below = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
        if lowest is None and highest is None and above is None and below is None:
            return None

        def number_ok(x: Any) -> bool:
            if type(x) is not int and not is_instance(x):  # (an int is both an integer and a number)
                return other
            return ((lowest is None or not x < lowest) and (highest is None or not x > highest)
                    and (above is None or not x <= above) and (below is None or not x >= below))

        return number_ok

    def _arrays(self, schema: dict[str, Any], other: bool) -> Predicate | None:
        if isinstance(schema.get("items"), list):
            raise UnsupportedSchema("`items` as a list (use prefixItems)")
        item = self.compile(schema["items"]) if "items" in schema else None
        fewest, most = schema.get("minItems"), schema.get("maxItems")
        if item is None and fewest is None and most is None:
            return None

        def array_ok(x: Any) -> bool:
            if not isinstance(x, list):
                return other
            if item is not None:
                for value in x:
                    if not item(value):
                        return False
            return (fewest is None or len(x) >= fewest) and (most is None or len(x) <= most)

        return array_ok

    def _objects(self, schema: dict[str, Any], other: bool) -> Predicate | None:
        required = frozenset(schema["required"]) if "required" in schema else None
        fewest, most = schema.get("minProperties"), schema.get("maxProperties")
        name_ok = self.compile(schema["propertyNames"]) if "propertyNames" in schema else None
        closed = schema.get("additionalProperties") is False and not schema.get("patternProperties")
        if closed and name_ok is None and fewest is None and most is None:
            # A model's record (a layer body): its keys and members checked here, in one call.
            named = {key: self.compile(s) for key, s in schema.get("properties", {}).items()}
            allowed = frozenset(named)

            def record_ok(x: Any) -> bool:
                if not isinstance(x, dict):
                    return other
                if (required is not None and not x.keys() >= required) or not x.keys() <= allowed:
                    return False
                for key, value in x.items():
                    if not named[key](value):
                        return False
                return True

            return record_ok

        patterns = schema.get("patternProperties") or {}
        names = schema.get("propertyNames", {})
        if (isinstance(names, dict) and set(names) <= {"maxLength"} and len(patterns) == 1 and required is None
                and "properties" not in schema and schema.get("additionalProperties") is False):
            # A map from names to values of one kind (`blocks`, `inputs`, every layer and skip entry):
            # each key's length, pattern and value checked in one loop, in one call.
            longest = names.get("maxLength")
            ((pattern, value_schema),) = patterns.items()
            search, value_ok = re.compile(pattern).search, self.compile(value_schema)

            def name_map_ok(x: Any) -> bool:
                if not isinstance(x, dict):
                    return other
                if (fewest is not None and len(x) < fewest) or (most is not None and len(x) > most):
                    return False
                for key, value in x.items():
                    if not isinstance(key, str) or (longest is not None and len(key) > longest) \
                            or search(key) is None or not value_ok(value):
                        return False
                return True

            return name_map_ok

        members = self._members(schema) \
            if any(k in schema for k in ("properties", "patternProperties", "additionalProperties")) else None
        if required is None and fewest is None and most is None and name_ok is None and members is None:
            return None

        def object_ok(x: Any) -> bool:
            if not isinstance(x, dict):
                return other
            if (required is not None and not x.keys() >= required) or (fewest is not None and len(x) < fewest) \
                    or (most is not None and len(x) > most):
                return False
            if name_ok is not None:
                for key in x:
                    if not name_ok(key):
                        return False
            return members is None or members(x)

        return object_ok

    def _members(self, schema: dict[str, Any]) -> Predicate:
        """`properties`, `patternProperties` and `additionalProperties` as one pass over a mapping's keys."""
        named = {key: self.compile(s) for key, s in schema.get("properties", {}).items()}
        patterns = [(re.compile(p).search, self.compile(s)) for p, s in schema.get("patternProperties", {}).items()]
        extra = schema.get("additionalProperties", True)
        other = None if extra is True or extra == {} else self.compile(extra)

        if not patterns and extra is False:  # the common case: a closed record
            allowed = frozenset(named)

            def record(x: dict[Any, Any]) -> bool:
                if not x.keys() <= allowed:
                    return False
                for key, value in x.items():
                    if not named[key](value):
                        return False
                return True

            return record

        def members(x: dict[Any, Any]) -> bool:
            for key, value in x.items():
                check = named.get(key)
                if check is not None and not check(value):
                    return False
                matched = False
                if patterns:
                    if not isinstance(key, str):
                        return False  # jsonschema would fail on it: let it say what it says
                    for search, pattern_check in patterns:
                        if search(key) is not None:
                            matched = True
                            if not pattern_check(value):
                                return False
                if other is not None and check is None and not matched and not other(value):
                    return False
            return True

        return members


# The family of keywords that apply to each type (`minimum` to integers and numbers alike).
_FAMILIES = {"string": "string", "integer": "number", "number": "number", "array": "array", "object": "object"}


_KEYWORDS = frozenset({"type", "const", "enum", "pattern", "maxLength", "minLength", "minimum", "maximum",
                       "exclusiveMinimum", "exclusiveMaximum", "items", "minItems", "maxItems", "required",
                       "minProperties", "maxProperties", "propertyNames", "properties", "patternProperties",
                       "additionalProperties", "$ref", "anyOf", "allOf", "oneOf", "not", "if", "then", "else"})


def _any(members: list[Predicate]) -> Predicate:
    if len(members) == 2:
        first, second = members
        return lambda x: first(x) or second(x)

    def some(x: Any) -> bool:
        for member in members:
            if member(x):
                return True
        return False

    return some


def _all(checks: list[Predicate]) -> Predicate:
    if not checks:
        return lambda x: True
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        first, second = checks
        return lambda x: first(x) and second(x)

    def every(x: Any) -> bool:
        for check in checks:
            if not check(x):
                return False
        return True

    return every
