"""The torch-free half of the pipeline: load -> validate -> expand -> resolve -> infer shapes.

`check_loaded` runs the stages in order; `BuildRecord` is what a compiled model was built from,
and `RecordingReader` collects the imported libraries' texts for it. The public entry points
are in `api`; lowering and the compiled model class are in `model` (they need torch).

>>> text = "resgraph: 1\\nname: M\\ninputs: {x: [4]}\\nlayers:\\n  - fc: {op: Linear, out_features: 2}\\n"
>>> spec, graph = check_loaded(load(text), None)
>>> graph.nodes["fc"].meta["type"].shape, static_parameter_counts(graph)
((2,), {'x': 0, 'fc': 10})
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any, Union

from .errors import Diagnostic, Location, SpecError, UsageError
from .evaluate import plain_overrides
from .expand import Reader, check_library_blocks, check_unreached_blocks, expand
from .expressions import expression_names
from .fitting import Edit, EditCheck, Trial, offering, tried, tried_edited
from .graph import Graph
from .loader import (
    MAX_DEPTH,
    MAX_INT,
    MAX_NODES,
    LoadedSpec,
    SourceMap,
    data_path,
    data_problem,
    gc_paused,
    load_file,
    load_text,
)
from .resolve import resolve
from .resources import is_shipped, read_import, read_shipped
from .shapes import check_uncalled_blocks, infer_shapes
from .spec import BlockLibrary, Spec
from .suggest import suggestion_budget
from .translate import keys_not_strings
from .validate import is_block_library, validate, validate_library
from .version import __version__

__all__ = ["DEFAULT_MAX_PARAMS", "BuildRecord", "RecordingReader", "SpecSource", "check_loaded", "check_loaded_library",
           "dict_spec_text", "load", "static_parameter_counts"]

SpecSource = Union[str, "os.PathLike[str]", dict, LoadedSpec]
DEFAULT_MAX_PARAMS = 2**31  # the default parameter limit of builds (about 8 GiB of float32 weights)


@dataclass(frozen=True)
class BuildRecord:
    """What a compiled model was built from: enough to rebuild its architecture exactly, anywhere.

    It holds neither the weights nor the seed: `rebuild(record, seed=...)` with the build's seed
    gives the same weights too.

    Attributes:
        spec: the spec's text (YAML; JSON for a spec given as a dict).
        file: the name its error locations use.
        params: the parameter overrides given to `build` (not the spec's defaults).
        allow_imports: the module prefixes the spec was allowed to import layers from.
        input_shapes: per-sample input shapes given instead of the declared ones.
        imports: (path, text) of every block library the spec imported, as read at build time;
            None for records from before resgraph stored them (libraries are read from disk).
        version: the resgraph version that built it.
    """

    spec: str
    file: str
    params: Mapping[str, Any] = field(default_factory=dict)
    allow_imports: tuple[str, ...] = ()
    imports: tuple[tuple[str, str], ...] | None = ()
    input_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    version: str = __version__

    def reader(self) -> Reader:
        """Reads imported libraries from this record instead of the file system."""
        if self.imports is None:
            return read_import
        stored = dict(self.imports)

        def read(path: str) -> LoadedSpec:
            if path not in stored:
                raise UsageError(f"{path}: not stored in the build record (it was not imported at build time)")
            return load_text(stored[path], path)

        return read


class RecordingReader:
    """Reads imported libraries (from disk, or shipped ones by name) and keeps their texts for the build record."""

    def __init__(self) -> None:
        self.texts: dict[str, str] = {}

    def __call__(self, path: str) -> LoadedSpec:
        loaded = read_import(path)
        self.texts[path] = loaded.text
        return loaded


def load(spec: SpecSource, *, file: str | None = None) -> LoadedSpec:
    """Parse a spec given as a path, YAML text or an already-parsed dict (a `LoadedSpec` is returned as is).

    A string is a path when it has no newline and names an existing path or ends in .yaml/.yml;
    `resgraph:NAME` names a file shipped in the package (`resources.read_shipped`).

    Raises:
        UsageError: the file cannot be read, or `spec` is none of these.
        SpecError: the text is not valid, safe YAML; a dict is not data a spec file could hold
            (`dict_spec_text`).
    """
    if isinstance(spec, LoadedSpec):
        return spec
    if isinstance(spec, dict):
        return LoadedSpec(spec, SourceMap(file or "<dict>"), dict_spec_text(spec, file or "<dict>"))
    if isinstance(spec, os.PathLike) or (isinstance(spec, str) and _looks_like_path(spec)):
        return read_shipped(os.fspath(spec)) if is_shipped(os.fspath(spec)) else load_file(spec)
    if isinstance(spec, str):
        return load_text(spec, file or "<string>")
    raise UsageError(f"a spec is a path, YAML text or a dict, not {type(spec).__name__}")


def dict_spec_text(spec: Any, file: str = "<dict>") -> str:
    r"""The text a spec given as a dict is recorded as (its build record's): indented JSON, which YAML
    reads back as the same data, so `rebuild` and `load` parse it as they parse any spec.

    Writing it is also the check that the dict holds data a spec file could: nested at most
    MAX_DEPTH deep (a dict that contains itself is infinitely deep), of at most MAX_NODES values
    (a list used in several places counted at each), only mappings with string keys, lists,
    strings, numbers under 10^100, booleans and None (`loader.data_problem`). Those bounds are
    what make every later pass over the data finite: a dict that contained itself hung the build.

    One difference from `json.dumps`: a character beyond U+FFFF (an emoji in a description) is
    written as itself, not as JSON's surrogate-pair escape, which YAML refuses ("invalid Unicode
    character escape code"); the text is JSON all the same.

    >>> dict_spec_text({"d": chr(0x1F600) + "\\ud83d"}) == '{\n  "d": "' + chr(0x1F600) + '\\\\ud83d"\n}'
    True

    Raises:
        SpecError: the dict breaks one of those bounds, naming the path into it where it does (each
            key that is not a string, as validation names them).
    """
    parts: list[str] = []
    try:
        _write_json(spec, "\n", parts)
        text = "".join(parts)
    except (_Unbounded, RecursionError, TypeError):  # (or a value json.dumps converts: an IntEnum, a str subclass)
        problem = data_problem(spec)
        if problem is not None:
            path, what, hint = problem
            message = f"{data_path(path)}: {what}" if path else what
            raise SpecError([Diagnostic(Location(file), message, hint)]) from None
        odd_keys, _ = keys_not_strings(spec, SourceMap(file))
        if odd_keys:  # (json.dumps would write `1: ...` as `"1": ...`, which another build reads as another spec)
            raise SpecError(odd_keys) from None
        text = json.dumps(spec, indent=2)
    return _unescape_pairs(text)


def _unescape_pairs(text: str) -> str:
    """JSON text with each surrogate-pair escape written as the character it stands for."""
    if "\\ud" not in text:
        return text
    # Left to right, so an escaped backslash (`\\`) is passed over whole and never read as the start
    # of an escape.
    return _PAIR_OR_BACKSLASH.sub(lambda found: found[0] if found[1] is None else
                                  chr(0x10000 + ((int(found[1], 16) - 0xD800) << 10) + int(found[2], 16) - 0xDC00),
                                  text)


_PAIR_OR_BACKSLASH = re.compile(r"\\\\|\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})")


class _Unbounded(Exception):
    """Raised by `_write_json` where the data passes the bounds a spec file is read within."""


# The bounds a spec's JSON text is written within, those of a spec file (loader.MAX_DEPTH and
# MAX_NODES): the indent of a collection MAX_DEPTH deep, and the pieces of MAX_NODES values (a
# value after a container's first writes two; a container is refused on entry when its own
# members would pass it). Past either, `loader.data_problem` counts exactly.
_DEEPEST_NEWLINE = len("\n") + 2 * MAX_DEPTH
_MOST_PARTS = 2 * MAX_NODES


def _write_json(value: Any, newline: str, parts: list[str]) -> None:
    """Append `value`'s pieces of indented JSON to `parts`; `newline` is "\n" and the indent of its line.

    The text is that of `json.dumps(value, indent=2)`, which writes indented JSON with its
    pure-Python encoder, a generator per container: it cost more than validating a 10,000-layer
    spec. Here a container writes its plain members itself (`_PLAIN_JSON`), so only containers
    cost a call. Anything but dicts with string keys, lists, tuples, strings, numbers, booleans
    and None raises TypeError; a collection past the bounds, `_Unbounded`.

    (A plain function, not a closure: a recursive closure is a reference cycle, which would keep
    `parts` alive until the next collection, and with it the process's peak memory up.)
    """
    if isinstance(value, (dict, list, tuple)):
        if not value:
            parts.append("{}" if isinstance(value, dict) else "[]")
            return
        if len(newline) > _DEEPEST_NEWLINE or len(parts) + 2 * len(value) > _MOST_PARTS:
            raise _Unbounded
        inner = newline + "  "
        separator = "," + inner
        # (Two loops written out: one loop over (lead, member) pairs for both took 1.6x as long on a
        # 100,000-layer chain.)
        if isinstance(value, dict):
            parts.append("{")
            for index, (key, item) in enumerate(value.items()):
                if not isinstance(key, str):
                    raise TypeError("a key json.dumps converts")
                parts.append(f"{separator if index else inner}{encode_basestring_ascii(key)}: ")
                plain = _PLAIN_JSON.get(type(item))
                if plain is not None:
                    parts.append(plain(item))
                else:
                    _write_json(item, inner, parts)
            parts.append(newline + "}")
        else:
            parts.append("[")
            for index, item in enumerate(value):
                parts.append(separator if index else inner)
                plain = _PLAIN_JSON.get(type(item))
                if plain is not None:
                    parts.append(plain(item))
                else:
                    _write_json(item, inner, parts)
            parts.append(newline + "]")
    elif isinstance(value, str):
        parts.append(encode_basestring_ascii(value))
    elif value is None or isinstance(value, bool):
        parts.append(_PLAIN_JSON[type(value)](value))
    elif isinstance(value, int):
        parts.append(_json_int(value))
    elif isinstance(value, float):
        parts.append(_json_float(value))
    else:
        raise TypeError("a value json.dumps converts or refuses")


def _json_int(value: int) -> str:
    """An int as `json.dumps` writes it; `_Unbounded` from 10^100 on, as a spec file's integers are
    refused (`loader.MAX_INT`; Python cannot even write one of more than 4,300 digits)."""
    if -MAX_INT < value < MAX_INT:
        return int.__repr__(value)
    raise _Unbounded


def _json_float(value: float) -> str:
    """A float as `json.dumps` writes it (NaN and the infinities included)."""
    if value != value:
        return "NaN"
    if value in (math.inf, -math.inf):
        return "Infinity" if value > 0 else "-Infinity"
    return float.__repr__(value)


# How `_write_json` writes a member of exactly these types (a subclass, an IntEnum, takes the long way).
_PLAIN_JSON: dict[type, Callable[[Any], str]] = {
    str: encode_basestring_ascii, int: _json_int, float: _json_float, bool: lambda flag: "true" if flag else "false",
    type(None): lambda _: "null"}


def _looks_like_path(text: str) -> bool:
    return "\n" not in text and (text.endswith((".yaml", ".yml")) or os.path.exists(text))


def check_loaded(loaded: LoadedSpec, params: Mapping[str, Any] | None, read: Reader = read_import,
                 input_shapes: Mapping[str, Sequence[int]] | None = None) -> tuple[Spec, Graph]:
    """Validate, expand, resolve and infer the shapes of a loaded spec.

    Args:
        input_shapes: per-sample shapes that replace the declared ones (input name -> shape).
    Raises:
        SpecError: every problem found, each with file:line:col.
        UsageError: `input_shapes` names an unknown input or is not a shape; a parameter override is
            not spec data (`evaluate.plain_overrides`); the document is a block library, not a spec.
    """
    params = plain_overrides(params)
    if is_block_library(loaded.data):
        raise UsageError(f"{loaded.file} is a block library, not a spec: `resgraph validate {loaded.file}` checks it, "
                         f"and a spec uses its blocks with `imports: [...]`")
    try:
        return _check_loaded(loaded, params, read, input_shapes)
    except SpecError as exc:
        if not params:
            raise
        raise type(exc)(_override_hints(exc.diagnostics, loaded, params)) from None  # (an OverrideError stays one)


def _override_hints(diagnostics: list[Diagnostic], loaded: LoadedSpec, params: Mapping[str, Any]) -> list[Diagnostic]:
    """`diagnostics`, each on a line of the spec whose `${...}` reads an overridden parameter with a
    hint giving the value it was given: a value of the wrong kind (`--set num_classes=ten`) is
    reported where it is used, at a layer, which says nothing of the override."""
    lines = loaded.text.splitlines() if loaded.source.values else []  # (a dict spec has no lines)
    hinted = []
    for diagnostic in diagnostics:
        line = diagnostic.location.line
        read: set[str] = set()
        if diagnostic.location.file == loaded.file and line and 0 < line <= len(lines):
            for body in _EXPRESSION_IN_LINE.findall(lines[line - 1]):
                read |= (expression_names(body) or set()) & params.keys()
        if read:
            given = "; ".join(f"{name} = {params[name]!r:.40} is an override of the spec's value"
                              for name in sorted(read))
            diagnostic = replace(diagnostic, hint=f"{diagnostic.hint}; {given}" if diagnostic.hint else given)
        hinted.append(diagnostic)
    return hinted


_EXPRESSION_IN_LINE = re.compile(r"\$\{([^}]*)\}")


def _check_loaded(loaded: LoadedSpec, params: dict[str, Any], read: Reader,
                  input_shapes: Mapping[str, Sequence[int]] | None) -> tuple[Spec, Graph]:
    diagnostics: list[Diagnostic] = []
    spec, graph = _typed(loaded, params, read, input_shapes, diagnostics)
    if diagnostics:
        raise SpecError(diagnostics)
    return spec, graph


def _typed(loaded: LoadedSpec, params: dict[str, Any], read: Reader, input_shapes: Mapping[str, Sequence[int]] | None,
           diagnostics: list[Diagnostic]) -> tuple[Spec, Graph]:
    """The spec and its graph, typed as far as it can be, every problem reported to `diagnostics`."""
    # Each stage reports what it can and leaves out what has a problem, and what depends on it, so
    # that one run reports every independent mistake.
    # (gc: the passes allocate many small, acyclic objects, see loader.gc_paused; suggestions: one
    # bound for every error's "did you mean", see suggest.MAX_COMPARED)
    with gc_paused(), suggestion_budget():
        spec = validate(loaded, params, diagnostics)
        declared = spec
        if input_shapes:
            spec = spec.with_input_shapes(input_shapes)
        graph = resolve(expand(spec, loaded.source, read=read, diagnostics=diagnostics), diagnostics=diagnostics)
        assert graph.outputs or diagnostics, "a graph without outputs passed resolution"
        with offering(_checker(loaded, params, read, spec, input_shapes), _edit_checker(loaded, params, read, spec,
                                                                                        input_shapes)):
            infer_shapes(graph, diagnostics=diagnostics)
        if diagnostics:  # the run fails: also name what blocks that were never typed hold
            reached = {instance.block for _, instance in graph.subgraphs() if instance.block}
            uncalled = [block for block in spec.blocks if block not in reached]
            # An op its failed instance already reported is not named again (a line gets one report).
            reported = {(d.location.file, d.location.line) for d in diagnostics}
            for found in (check_unreached_blocks(spec, loaded.source, reached),
                          check_uncalled_blocks(spec, loaded.source, uncalled, reached, read)):
                new = [d for d in found if (d.location.file, d.location.line) not in reported]
                reported |= {(d.location.file, d.location.line) for d in new}
                diagnostics.extend(new)
            diagnostics.extend(_batch_dims_given(declared, input_shapes or {}, loaded.source))
    return spec, graph


def _checker(loaded: LoadedSpec, params: dict[str, Any], read: Reader, spec: Spec,
             input_shapes: Mapping[str, Sequence[int]] | None) -> Callable[[dict[str, dict[int, int]]], Trial]:
    """How a hint checks the whole spec at other input sizes (input -> {axis: size}), the other inputs as
    given or declared (see `fitting`): the check a user who took the hint would run."""
    def check(sizes: dict[str, dict[int, int]]) -> Trial:
        shapes = _resized(spec, input_shapes, sizes)
        return tried(lambda: _check_loaded(loaded, params, read, shapes)[1])

    return check


def _resized(spec: Spec, input_shapes: Mapping[str, Sequence[int]] | None,
             sizes: dict[str, dict[int, int]]) -> dict[str, list[int]]:
    """The input shapes given (or declared, for an input given none) with `sizes` (input -> {axis: size})."""
    shapes = {name: list(shape) for name, shape in (input_shapes or {}).items()}
    for name, axes in sizes.items():
        shape = shapes.setdefault(name, list(spec.input_decls()[name].shape))
        for axis, size in axes.items():
            shape[axis] = size
    return shapes


def _edit_checker(loaded: LoadedSpec, params: dict[str, Any], read: Reader, spec: Spec,
                  input_shapes: Mapping[str, Sequence[int]] | None) -> EditCheck:
    """How a hint checks the whole spec with layers changed as it proposes (see `fitting.edited`), at the
    input sizes given or at others (input -> {axis: size}): the data as loaded, each layer's mapping changed
    where it is written; None where one is not in this file (a layer of an imported library) or not a
    mapping there."""
    def check(edits: tuple[Edit, ...], sizes: dict[str, dict[int, int]] | None = None) -> Trial | None:
        data = copy.deepcopy(loaded.data)
        for edit in edits:
            if edit.origin.source.file != loaded.file:
                return None
            layer = data
            for part in edit.origin.path:
                keyed = isinstance(layer, dict) and part in layer
                if not keyed and not (isinstance(layer, list) and isinstance(part, int) and 0 <= part < len(layer)):
                    return None
                layer = layer[part]
            if not isinstance(layer, dict):
                return None
            for key, value in edit.settings:
                if value is None:
                    layer.pop(key, None)
                else:
                    layer[key] = value
        changed = LoadedSpec(data, loaded.source, loaded.text)
        shapes = input_shapes if not sizes else _resized(spec, input_shapes, sizes)
        return tried_edited(lambda diagnostics: _typed(changed, params, read, shapes, diagnostics)[1])

    return check


def _batch_dims_given(declared: Spec, input_shapes: Mapping[str, Sequence[int]], source: SourceMap) -> list[Diagnostic]:
    """For a check that failed: each input given one dim more than the spec declares, in front of its
    declared first dim, which is most likely a batch dim (shapes are per sample, as in the spec),
    located at the input's declaration.
    (A shape of another rank can be meant, so it is named only once something failed.)"""
    decls = declared.input_decls()
    return [Diagnostic(source.locate(("inputs", name), key=True),
                       f"input {name}: the input shape given, {list(shape)}, has one dim more than the spec "
                       f"declares, {list(decls[name].shape)}: input shapes are per sample, without the batch dim",
                       f"give {list(shape[1:])}")
            for name, shape in input_shapes.items()
            if name in decls and decls[name].shape is not None and len(shape) == len(decls[name].shape) + 1
            and list(shape[1:2]) == list(decls[name].shape[:1])]  # (a trailing extra dim is not a batch)


def check_loaded_library(loaded: LoadedSpec, read: Reader = read_import) -> BlockLibrary:
    """Validate a loaded block library, then what it names: its imports, ops and called blocks,
    and, when those are sound, the names inside each block (`shapes.check_uncalled_blocks`).

    Raises:
        SpecError: every problem found, each with file:line:col.
    """
    with suggestion_budget():
        return _check_loaded_library(loaded, read)


def _check_loaded_library(loaded: LoadedSpec, read: Reader) -> BlockLibrary:
    library = validate_library(loaded)
    diagnostics = check_library_blocks(library, loaded.source, read)
    # Then each block as no call gives it values: its unknown names, its outputs, also where an op or
    # a called block is unknown (a library's every problem in one run; blind_scopes checks nothing
    # when an import cannot be read). A block another calls is met twice, with its defaults there,
    # and a line already reported is not reported again: a line gets one report.
    # (no top level: a library has no inputs or layers, which messages may look for)
    as_spec = Spec.model_construct(name="Library", imports=library.imports, blocks=library.blocks,
                                   inputs={}, layers=[])
    reported = {(d.location.file, d.location.line) for d in diagnostics}
    for found in check_uncalled_blocks(as_spec, loaded.source, list(library.blocks), (), read):
        if (found.location.file, found.location.line) not in reported:
            reported.add((found.location.file, found.location.line))
            diagnostics.append(found)
    if diagnostics:
        raise SpecError(diagnostics)
    return library


def static_parameter_counts(graph: Graph) -> dict[str, int] | None:
    """Parameters each top-level node owns, from the ops' own formulas; None when an uncurated
    op's count needs a (meta-device) build."""
    counts = {name: node.meta.get("params", 0) for name, node in graph.nodes.items()}
    return None if None in counts.values() else counts
