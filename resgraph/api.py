"""The library's public entry points, each a thin call into the pipeline.

`check`, `load_spec` and (for curated ops) `count_parameters` never import torch; `build`,
`render` and the exports do, through `model`.

>>> graph = check("resgraph: 1\\nname: M\\ninputs: {x: [3, 8, 8]}\\nlayers:\\n"
...               "  - conv: {op: Conv2d, out_channels: 4, kernel_size: 3, padding: 1}\\n"
...               "skips:\\n  - res: {from: x, to: conv}\\n")
>>> graph.nodes["res"].meta["projection"].reason
'3->4 channels'
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import UsageError
from .evaluate import plain_overrides
from .ops.generic import allowed_imports, import_prefixes
from .pipeline import (
    DEFAULT_MAX_PARAMS,
    BuildRecord,
    RecordingReader,
    SpecSource,
    check_loaded,
    check_loaded_library,
    load,
    static_parameter_counts,
)
from .sizes import DEFAULT_RANGE, MAX_SIZE_SPAN, SizeReport, check_range, solve_sizes
from .spec import BlockLibrary, Spec
from .validate import is_block_library, validate

if TYPE_CHECKING:
    import torch

    from .graph import Graph
    from .model import CompiledModule
    from .summarize import Summary

    M = TypeVar("M", bound=torch.nn.Module)

__all__ = ["DEFAULT_MAX_PARAMS", "MAX_SIZE_SPAN", "InputShapes", "build", "check", "check_library", "count_parameters",
           "load_spec", "materialize", "rebuild", "render", "summary", "to_python", "valid_sizes"]

InputShapes = Mapping[str, Sequence[int]]  # input name -> per-sample shape, e.g. {"x": (3, 299, 299)}

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
          input_shapes: InputShapes | None = None, file: str | None = None) -> Graph:
    """Run every check short of allocating weights: the resolved graph with every shape inferred.

    Args:
        allow_imports: module prefixes whose classes a spec may name as `op: package.module.Class`.
        input_shapes: per-sample shapes to check instead of the declared ones, e.g. {"x": (3, 299, 299)}.
    Raises:
        SpecError: every problem found, each with file:line:col.
        UsageError: the file cannot be read, or `input_shapes` names an unknown input.
    """
    with allowed_imports(allow_imports):
        return check_loaded(load(spec, file=file), params, input_shapes=input_shapes)[1]


def check_library(library: SpecSource, *, file: str | None = None) -> BlockLibrary:
    """Check a block library (a file `imports:` names) on its own: its structure and types, its
    imports (read as a spec would), the ops it names and the blocks it calls, and the names each
    block's layers, skips and outputs read (what reads its parameters or input shape is left out).

    A block's layers are checked in full where a spec calls it, since only a call gives its
    parameters values.

    >>> sorted(check_library("resgraph:blocks/resnet.yaml").blocks)
    ['basic', 'bottleneck']

    Args:
        library: a path (`resgraph:blocks/resnet.yaml` names the shipped library), YAML text or a dict.
    Raises:
        SpecError: every violation, located in the library file.
        UsageError: the file cannot be read, or it is a spec rather than a block library.
    """
    loaded = load(library, file=file)
    if not is_block_library(loaded.data):
        raise UsageError(f"{loaded.file} is not a block library (a file with `resgraph: 1` and `blocks:`, and no "
                         "`name:` or `layers:`)")
    return check_loaded_library(loaded)


def valid_sizes(spec: SpecSource, *, params: Mapping[str, Any] | None = None, input_shapes: InputShapes | None = None,
                low: int = DEFAULT_RANGE[0], high: int = DEFAULT_RANGE[1], allow_imports: Iterable[str] = (),
                file: str | None = None) -> SizeReport:
    """Every input size in [low, high] at which the spec's model works, per free dim (see `resgraph sizes`).

    Pure shape arithmetic: the spec is checked once, at its declared (or given) input sizes, and
    the decisions that checking made are evaluated at every other size. Invalid sizes name the
    first node whose decision fails there (`DimSizes.failures`).

    Raises:
        SpecError: the spec is invalid at its declared size.
        UsageError: an empty range, or one of more than MAX_SIZE_SPAN sizes or beyond 2^62.
    """
    check_range(low, high)  # (before the spec is checked: a range it refuses is refused at once)
    graph = check(spec, params=params, input_shapes=input_shapes, allow_imports=allow_imports, file=file)
    return solve_sizes(graph, low=low, high=high, failures=True)


def build(spec: SpecSource, *, params: Mapping[str, Any] | None = None, seed: int | None = None,
          max_params: int | None = DEFAULT_MAX_PARAMS, allow_imports: Iterable[str] = (),
          input_shapes: InputShapes | None = None, file: str | None = None,
          device: torch.device | str | int | None = None) -> CompiledModule:
    """Compile a spec into an ordinary torch.nn.Module.

    Args:
        spec: a path, YAML text, or a dict.
        params: overrides of the spec's declared parameters, e.g. {"num_classes": 10}.
        seed: makes weight initialisation deterministic (the global RNG is left untouched). Refused
            with `device="meta"`, which allocates no weights: `materialize` takes it.
        max_params: refuse, before allocating any weight, a model with more parameters (None: no
            limit). A meta build allocates nothing and is never refused; `materialize` checks.
        allow_imports: module prefixes whose classes the spec may name as `op: package.module.Class`;
            without them a spec cannot make resgraph import anything.
        input_shapes: per-sample example shapes instead of the declared ones (for the summary and
            the checks; the model works at every size its architecture admits either way).
        file: the name to report in error locations when `spec` is text or a dict.
        device: where to allocate the weights (default: torch's current default device).
            "meta" allocates nothing: shapes, counts, summary and code only, for `shard` and then
            `materialize`. Any device gets the weights a CPU build with `seed` gets.
    Returns:
        A `CompiledModule` whose class is named after the spec, with `.code`, `.spec`, `.graph`
        and `.build_record`. Its forward checks its inputs' shapes first (a ValueError names the
        input, the shape it must have and the one it got).
    Raises:
        SpecError: every problem found, each with file:line:col; or a model over `max_params`.
        UsageError: the file cannot be read, or `device` is not one this machine can allocate on
            (a malformed name, or `cuda` on a CPU-only torch), or `seed` is given with `device="meta"`,
            or `max_params` is neither a count nor None.
    """
    from .model import compile_model, require_limit

    require_limit(max_params)  # (before the spec is checked, which may take seconds)
    prefixes = import_prefixes(allow_imports)
    overrides = plain_overrides(params)  # (what the record stores: plain data a saved model loads back)
    loaded = load(spec, file=file)
    reader = RecordingReader()
    with allowed_imports(prefixes):
        typed, graph = check_loaded(loaded, overrides, reader, input_shapes)
    record = BuildRecord(spec=loaded.text, file=loaded.file, params=overrides, allow_imports=prefixes,
                         imports=tuple(sorted(reader.texts.items())),
                         input_shapes={name: tuple(shape) for name, shape in (input_shapes or {}).items()})
    return compile_model(typed, graph, record, seed=seed, max_params=max_params, device=device)


def materialize(model: M, *, device: torch.device | str | int = "cpu", seed: int | None = None,
                max_params: int | None = DEFAULT_MAX_PARAMS) -> M:
    """Allocate a (meta-built, possibly sharded) model's weights on `device` and initialise them.

    Every parameter and buffer equals, bit for bit, what `build(spec, seed=seed)` gives it; a
    sharded (FSDP2) parameter receives only this process's shard, and no process ever holds more
    than one layer's full weights besides its shards.

    >>> model = build("examples/residual_mlp.yaml", device="meta")
    >>> materialize(model, seed=0).fc1.weight.equal(build("examples/residual_mlp.yaml", seed=0).fc1.weight)
    True

    Args:
        model: a model returned by `build` (usually with `device="meta"`; then `shard`, if sharded).
        device: where to allocate.
        seed: the seed of the build to reproduce; None: draw from the global RNG.
        max_params: refuse to allocate more parameters than this in this process (None: no limit).
    Returns:
        `model`, allocated and initialised in place.
    Raises:
        SpecError: more than `max_params` parameters would be allocated in this process, or constants
            of more than `max_params` elements (as `build` refuses them).
    """
    from .model import materialize as materialize_model

    return materialize_model(model, device=device, seed=seed, max_params=max_params)


def rebuild(record: BuildRecord, *, allow_imports: Iterable[str] = (), seed: int | None = None,
            max_params: int | None = DEFAULT_MAX_PARAMS) -> CompiledModule:
    """Build the model a `BuildRecord` describes (e.g. `model.build_record`), from the record alone.

    The record holds the architecture, not the weights: with the `seed` the model was built with,
    the rebuilt model's weights are the same (`rebuild(model.build_record, seed=0)` after
    `build(spec, seed=0)`); without one they are freshly random. `resgraph.load` restores saved ones.

    Args:
        allow_imports: the prefixes the caller allows; a record that needs others is refused.
        seed: seeds the weights as `build(..., seed=...)` does; None leaves them random.
        max_params: the parameter limit, as for `build`.
    Raises:
        UsageError: the record needs imports the caller did not allow.
        SpecError: the recorded spec is invalid.
    """
    from .model import rebuild as rebuild_model

    return rebuild_model(record, allow_imports=allow_imports, seed=seed, max_params=max_params)


def count_parameters(spec: SpecSource | CompiledModule | Graph, *, params: Mapping[str, Any] | None = None,
                     allow_imports: Iterable[str] = (), input_shapes: InputShapes | None = None,
                     file: str | None = None) -> int:
    """The number of parameters a spec's model has, computed without allocating any weight.

    Args:
        spec: a path, YAML text, a dict, a graph from `check`, or a model from `build` (or torch.compile's
            or DistributedDataParallel's wrapper of one): its spec's count, as `summary` takes them.
        params, input_shapes, allow_imports, file: as for `build` (ignored for a graph or a model).
    Raises:
        SpecError: the spec is invalid.
        UsageError: an unreadable file, or a torch module resgraph did not build.
    """
    from .graph import Graph
    from .model import CompiledModule

    spec = _built_model(spec, "count_parameters")
    with allowed_imports(allow_imports):
        if isinstance(spec, CompiledModule):
            graph = spec.graph
        elif isinstance(spec, Graph):
            graph = spec
        else:
            _, graph = check_loaded(load(spec, file=file), params, input_shapes=input_shapes)
        counts = static_parameter_counts(graph)
        if counts is None:
            from .model import part_sizes

            counts = part_sizes(graph)
        return sum(counts.values())


def render(spec: SpecSource | CompiledModule | Graph, *, params: Mapping[str, Any] | None = None, shapes: bool = True,
           param_counts: bool = True, args: bool = True, depth: int | None = None, fold_repeats: bool = False,
           rankdir: str = "TB", layout: str = "default", dpi: int | None = None, allow_imports: Iterable[str] = (),
           input_shapes: InputShapes | None = None, file: str | None = None) -> Any:
    """The architecture diagram of a spec, a checked graph (`check`) or a built model, as a `graphviz.Digraph`.

    Weights are never allocated for a spec or a graph: parameter counts come from a meta-device build.

    Args:
        spec: a path, YAML text, a dict, a graph from `check`, or a model from `build` (or torch.compile's
            or DistributedDataParallel's wrapper of one).
        shapes, param_counts, args: what each node shows besides its name and op.
        depth: module levels to show, as torchinfo counts them (1: the top level, each block call one node).
        fold_repeats: draw a repeated block once, in a box labelled xN.
        rankdir: TB (top to bottom), LR (left to right), BT (bottom to top) or RL (right to left).
        layout: "u" draws an encoder-decoder as a U, the two ends of each top-level skip on one level.
        dpi: the resolution of PNG output (Graphviz's default: 96).
    Returns:
        The Digraph; its `spec_files` (the spec, then the block libraries drawn) are never written
        over by `write_diagram`.
    Raises:
        SpecError: the spec is invalid.
        UsageError: an unknown rankdir or layout, or a torch module resgraph did not build.
    """
    from .diagram import RenderOptions, render_graph
    from .graph import Graph
    from .model import CompiledModule, meta_module

    options = RenderOptions(shapes=shapes, param_counts=param_counts, args=args, depth=depth,
                            fold_repeats=fold_repeats, rankdir=rankdir, layout=layout, dpi=dpi)
    spec = _built_model(spec, "render")
    if isinstance(spec, CompiledModule):
        return render_graph(spec.graph, spec, options)
    if isinstance(spec, Graph):
        return render_graph(spec, meta_module(spec), options)
    with allowed_imports(allow_imports):
        _, graph = check_loaded(load(spec, file=file), params, input_shapes=input_shapes)
        module = meta_module(graph)
    return render_graph(graph, module, options)


def _built_model(spec: Any, what: str) -> Any:
    """`spec` itself, or, for a torch module, the model from `build` it is or wraps (`model.built_model`).

    Raises:
        UsageError: `spec` is a torch module resgraph did not build (it has no spec to read).
    """
    torch = sys.modules.get("torch")  # (without it loaded, no torch module can have been given)
    if torch is None or not isinstance(spec, torch.nn.Module):
        return spec
    from .model import built_model

    return built_model(spec, what, takes="a spec (a path, YAML text or a dict), a graph from resgraph.check or a "
                                         "model from resgraph.build")


def to_python(module: CompiledModule) -> str:
    """A standalone PyTorch file (importing only torch) defining `module`'s class.

    Its state_dict keys equal `module`'s, so `module.state_dict()` loads into it with strict=True.
    """
    from .export_py import module_source

    return module_source(module)


def summary(spec: SpecSource | CompiledModule | Graph, *, depth: int | None = None,
            columns: Sequence[str] | str | None = None, params: Mapping[str, Any] | None = None,
            input_shapes: InputShapes | None = None, allow_imports: Iterable[str] = (),
            file: str | None = None) -> Summary:
    """A torchinfo-style summary of a spec, a checked graph (`check`) or a built model.

    A spec or graph is summarised without allocating weights (counts come from a meta-device
    build). Rows carry name, op, input and output shapes, kernel, parameters (trainable or not),
    MACs, parameter and activation memory and the nodes each one reads; MACs and activations are
    per sample. Totals and the projection list are always the whole model's.

    >>> s = summary("examples/tutorial.yaml")
    >>> s.total_params, s.projections, s.outputs, s.total_macs
    (268928, ['shortcut1', 'shortcut2'], ['res2_conv2'], 275447808)

    Args:
        spec: a path, YAML text, a dict, a graph from `check`, or a model from `build` (or torch.compile's
            or DistributedDataParallel's wrapper of one).
        depth: module levels the rows show (1: the top level; default: all).
        columns: the table's columns after the layer name, as a list or "op,macs,..."
            (`resgraph.summarize.COLUMNS`; "default" and "all" expand).
        params, input_shapes, allow_imports, file: as for `build` (ignored for a graph or a model).
    Returns:
        A `Summary`: `str()` or `.table()` is the text table, `.to_dict()` the JSON form, `.rows`
        the rows shown.
    Raises:
        SpecError: the spec is invalid.
        UsageError: an unknown column, an unreadable file, or a torch module resgraph did not build.
    """
    from .graph import Graph
    from .model import CompiledModule, meta_module
    from .summarize import summarize

    spec = _built_model(spec, "summary")
    if isinstance(spec, CompiledModule):
        return summarize(spec.graph, spec, depth=depth, columns=columns, file=spec.build_record.file)
    if isinstance(spec, Graph):
        return summarize(spec, meta_module(spec), depth=depth, columns=columns, file=spec.file)
    with allowed_imports(allow_imports):
        loaded = load(spec, file=file)
        _, graph = check_loaded(loaded, params, input_shapes=input_shapes)
        return summarize(graph, meta_module(graph), depth=depth, columns=columns, file=loaded.file)
