"""The library's entry points: load -> validate -> resolve -> infer shapes -> lower.

Everything before `lower` is torch-free (unless a spec uses an uncurated torch.nn class), so
checking a spec is cheap and `resgraph validate` starts fast.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Union

from .errors import Diagnostic, SpecError, UsageError
from .expand import expand
from .graph import Graph, build_graph
from .loader import LoadedSpec, SourceMap, gc_paused, load_file, load_text
from .ops.generic import allowed_imports
from .shapes import infer_shapes
from .spec import Spec
from .validate import validate

if TYPE_CHECKING:
    from .lower import CompiledModule

__all__ = ["DEFAULT_MAX_PARAMS", "SpecSource", "build", "check", "count_parameters", "load", "load_spec", "render",
           "to_python"]

SpecSource = Union[str, "os.PathLike[str]", dict]


def load(spec: SpecSource, *, file: str | None = None) -> LoadedSpec:
    """Parse a spec given as a path, YAML text or an already-parsed dict.

    A string is a path when it has no newline and names an existing path or ends in .yaml/.yml.
    """
    if isinstance(spec, dict):
        return LoadedSpec(spec, SourceMap(file or "<dict>"), json.dumps(spec, indent=2))
    if isinstance(spec, os.PathLike) or (isinstance(spec, str) and _looks_like_path(spec)):
        return load_file(spec)
    if isinstance(spec, str):
        return load_text(spec, file or "<string>")
    raise UsageError(f"a spec is a path, YAML text or a dict, not {type(spec).__name__}")


def _looks_like_path(text: str) -> bool:
    return "\n" not in text and (text.endswith((".yaml", ".yml")) or os.path.exists(text))


def load_spec(spec: SpecSource, *, params: Mapping[str, Any] | None = None, file: str | None = None) -> Spec:
    """The validated spec object (its `params` hold the values in force).

    Args:
        params: overrides of the spec's declared parameters.
    Raises:
        SpecError: every problem found, each with file:line:col.
        UsageError: the file cannot be read.
    """
    return validate(load(spec, file=file), params)


def check(spec: SpecSource, *, params: Mapping[str, Any] | None = None, allow_imports: Iterable[str] = (),
          file: str | None = None) -> Graph:
    """Run every check short of allocating weights: the resolved graph with every shape inferred.

    Args:
        allow_imports: module prefixes whose classes a spec may name as `op: package.module.Class`.
    Raises:
        SpecError: every problem found, each with file:line:col.
    """
    with allowed_imports(allow_imports):
        return _check_loaded(load(spec, file=file), params)[1]


def _check_loaded(loaded: LoadedSpec, params: Mapping[str, Any] | None) -> tuple[Spec, Graph]:
    with gc_paused():  # the passes allocate many small, acyclic objects: see loader.gc_paused
        spec = validate(loaded, params)
        graph = build_graph(expand(spec, loaded.source, spec.params))
        return spec, infer_shapes(graph)


DEFAULT_MAX_PARAMS = 2**31


def build(spec: SpecSource, *, params: Mapping[str, Any] | None = None, seed: int | None = None,
          max_params: int | None = DEFAULT_MAX_PARAMS, allow_imports: Iterable[str] = (),
          file: str | None = None) -> CompiledModule:
    """Compile a spec into an ordinary torch.nn.Module.

    Args:
        spec: a path, YAML text, or a dict.
        params: overrides of the spec's declared parameters, e.g. {"num_classes": 10}.
        seed: makes weight initialisation deterministic (the global RNG is left untouched).
        max_params: refuse, before allocating any weight, a model with more parameters (None: no limit).
        allow_imports: module prefixes whose classes the spec may name as `op: package.module.Class`;
            without them a spec cannot make resgraph import anything.
        file: the name to report in error locations when `spec` is text or a dict.
    Returns:
        A `CompiledModule` whose class is named after the spec, with `.code` and `.spec`.
    Raises:
        SpecError: every problem found, each with file:line:col; or a model over `max_params`.
    """
    from .lower import lower

    prefixes = tuple(allow_imports)
    with allowed_imports(prefixes):
        loaded = load(spec, file=file)
        typed, graph = _check_loaded(loaded, params)
        if max_params is not None:
            _check_size(graph, typed, max_params)
        with gc_paused():
            module = lower(graph, typed, spec_text=loaded.text, spec_file=loaded.file, params=dict(params or {}),
                           seed=seed)
    module._resgraph_allow_imports = prefixes
    return module


def count_parameters(spec: SpecSource, *, params: Mapping[str, Any] | None = None, allow_imports: Iterable[str] = (),
                     file: str | None = None) -> int:
    """The number of parameters a spec's model has, computed without allocating any weight."""
    with allowed_imports(allow_imports):
        loaded = load(spec, file=file)
        typed, graph = _check_loaded(loaded, params)
        return sum(_part_sizes(graph, typed).values())


def _part_sizes(graph: Graph, spec: Spec) -> dict[str, int]:
    """Parameters of each top-level node: from the ops' own counts, else from a meta-device build."""
    counts = {name: node.meta.get("params", 0) for name, node in graph.nodes.items()}
    if None not in counts.values():
        return counts
    module = _meta_module(graph, spec)  # an uncurated op somewhere: only building can tell
    sizes = {name: sum(p.numel() for p in child.parameters()) for name, child in module.named_children()}
    return sizes | {name: p.numel() for name, p in module.named_parameters(recurse=False)}


def _meta_module(graph: Graph, spec: Spec) -> Any:
    """The model built on the meta device: every shape and count, no storage."""
    import torch

    from .lower import lower

    with torch.device("meta"):
        return lower(graph, spec)


def _check_size(graph: Graph, spec: Spec, limit: int) -> None:
    """Refuse a model over `limit` parameters, pointing at its largest top-level part."""
    sizes = _part_sizes(graph, spec)
    total = sum(sizes.values())
    if total <= limit:
        return
    largest = max(sizes, key=sizes.__getitem__)
    where = graph.where(graph.nodes[largest])
    raise SpecError([Diagnostic(where, f"the model would have {total:,} parameters ({_size(total * 4)} as float32), "
                                       f"more than the limit of {limit:,}; the largest part, {largest!r}, has "
                                       f"{sizes[largest]:,}",
                                "raise the limit with --max-params N (Python: max_params=N) if this is intended")])


def _size(n_bytes: float) -> str:
    """`3.8 MiB`: a byte count in the largest unit that keeps it at or above 1 (up to GiB)."""
    if n_bytes < 1024:
        return f"{int(n_bytes)} bytes"
    for unit in ("KiB", "MiB"):
        n_bytes /= 1024
        if n_bytes < 1024:
            return f"{n_bytes:.1f} {unit}"
    return f"{n_bytes / 1024:.1f} GiB"


def render(spec: SpecSource, *, params: Mapping[str, Any] | None = None, shapes: bool = True,
           param_counts: bool = True, args: bool = True, depth: int | None = None, fold_repeats: bool = False,
           rankdir: str = "TB", allow_imports: Iterable[str] = (), file: str | None = None) -> Any:
    """The architecture diagram of a spec, as a `graphviz.Digraph` (no file is written).

    Weights are never allocated: parameter counts come from modules built on the meta device.

    Args:
        shapes, param_counts, args: what each node shows besides its name and op.
        depth: module levels to show, as torchinfo counts them (1: the top level, each block call one node).
        fold_repeats: draw a repeated block once, in a box labelled xN.
        rankdir: TB (top to bottom) or LR (left to right).
    Raises:
        SpecError: the spec is invalid.
    """
    from .diagram import RenderOptions, render_graph

    with allowed_imports(allow_imports):
        loaded = load(spec, file=file)
        typed, graph = _check_loaded(loaded, params)
        module = _meta_module(graph, typed)
    options = RenderOptions(shapes=shapes, param_counts=param_counts, args=args, depth=depth,
                            fold_repeats=fold_repeats, rankdir=rankdir)
    return render_graph(graph, module, options)


def to_python(module: CompiledModule) -> str:
    """A standalone PyTorch file (importing only torch) defining `module`'s class.

    Its state_dict keys equal `module`'s, so `module.state_dict()` loads into it with strict=True.
    """
    from .export_py import export_python

    text, file, _ = module._resgraph_source
    return export_python(module._resgraph_graph, spec_file=file, spec_text=text)
