"""ONNX export through PyTorch's exporter (needs the `onnx` extra: pip install 'resgraph[onnx]')."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Iterator
from typing import Any

from .errors import ResgraphError, UsageError
from .files import atomic_write_staged, path_name
from .formats import check_writable, refuse_model_sources
from .ownership import output_names, unique_name

__all__ = ["EXTERNAL_DATA_BYTES", "to_onnx"]

# Weights above this size are stored beside the .onnx file, in `NAME.onnx.data` (torch's own
# threshold: a protobuf file cannot exceed 2 GiB).
EXTERNAL_DATA_BYTES = 1_610_612_736


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's own progress lines and internal warnings are not the user's concern.

    onnxscript's version converter logs a failed down-conversion (`--opset 1`) with its traceback
    (`logger.exception`, at ERROR): to_onnx reports that case itself, so onnxscript is silenced
    up to CRITICAL.
    """
    quieted = {"torch.onnx": logging.ERROR, "onnxscript": logging.CRITICAL}
    loggers = {name: logging.getLogger(name) for name in quieted}
    levels = {name: logger.level for name, logger in loggers.items()}
    for name, logger in loggers.items():
        logger.setLevel(quieted[name])
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for name, logger in loggers.items():
            logger.setLevel(levels[name])


def exporter_failure(text: str) -> str:
    """The first line of the exporter's message, and, where it gives one, the cause its "Exception
    summary" names first (its first line alone is a step number and next steps, not what failed).

    >>> exporter_failure("\x1b[96mFailed to convert (step 3/3). Next steps:\\n- report it\\n## Exception summary\\n"
    ...                  "<class 'AssertionError'>: only 4D query, key, and value are supported\\n⬆️\\n...")
    'Failed to convert (step 3/3): only 4D query, key, and value are supported'
    """
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", text).strip().splitlines()]  # (in colour)
    if not lines:
        return ""
    first = lines[0]
    if "## Exception summary" in lines[1:]:
        cause = next((line for line in lines[lines.index("## Exception summary") + 1:] if line), "")
        cause = re.sub(r"^<class '[\w.]+'>:\s*", "", cause)
        if cause:
            first = re.sub(r"\.?\s*Next steps:$", "", first) + ": " + cause
    return first


def to_onnx(module: Any, path: str, *, dynamic_batch: bool = True, opset: int | None = None) -> None:
    """Export a module built by resgraph to an ONNX file, atomically.

    Inputs and outputs carry the spec's names (`x`; `res2_conv2`, not the exporter's `add_61`); the
    batch dimension, and every input size the model admits (see `resgraph sizes`), stay dynamic unless
    asked otherwise. The file passes `onnx.checker`.

    Args:
        opset: the ONNX opset version (default: the exporter's).
    Raises:
        UsageError: `path` is no path, the onnx / onnxscript packages are missing, the model was built on the meta
            device or is sharded,
            `opset` is newer than the installed onnx package knows, or `path` cannot be written (a missing
            folder, a directory there, the spec the model was built from: said before the export, which may
            take minutes).
        ResgraphError: the exporter failed (an unsupported opset included).
        OSError: the files could not be written after all (a full disk; nothing is left half-written).
    """
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch's exporter needs it)
    except ImportError:
        raise UsageError("ONNX export needs the onnx and onnxscript packages: pip install 'resgraph[onnx]'") from None
    import torch

    from .distributed import require_unsharded
    from .lower import require_weights
    from .model import built_model

    path = path_name(path, "to_onnx's path")
    module = built_model(module, "to_onnx")  # (torch.compile's or DistributedDataParallel's wrapper: its model)
    require_weights(module, "export")  # torch's exporter fails deep inside, in colour, and logs at ERROR
    require_unsharded(module, "an ONNX file")  # (it failed on the DTensors, naming a FakeTensor)
    refuse_model_sources(path, module)  # (never over the spec it was built from)
    check_writable(path)  # before the export; at the write, the error named the staging folder
    newest = onnx.defs.onnx_opset_version()
    if opset is not None and opset > newest:  # (the exporter failed with its own multi-line message)
        raise UsageError(f"ONNX opset {opset} does not exist yet: the installed onnx package knows opsets up to "
                         f"{newest}; choose --opset {newest} or lower (Python: opset={newest})")
    graph = module.graph
    examples = module.example_inputs(batch=2)  # batch 2: a batch of 1 would be specialised into the graph
    # The batch, and each free input dim as far as the model admits other sizes, stay dynamic.
    dynamic = module.dynamic_shapes() if dynamic_batch else None
    was_training = module.training
    module.eval()
    try:
        with _quiet_exporter():
            program = torch.onnx.export(module, tuple(examples), dynamo=True, input_names=list(graph.inputs),
                                        output_names=output_names(graph), dynamic_shapes=dynamic, verbose=False,
                                        **({"opset_version": opset} if opset is not None else {}))
    except Exception as exc:  # the exporter raises many types
        raise ResgraphError(f"ONNX export failed: {exporter_failure(str(exc)) or type(exc).__name__}") from None
    finally:
        module.train(was_training)
    _keep_spec_names(program.model.graph)
    written = program.model.opset_imports.get("")
    if opset is not None and written != opset:
        # torch's exporter logs a failed down-conversion and keeps its own opset: say so rather than mislabel
        raise ResgraphError(f"ONNX export: this model cannot be converted to opset {opset} (the exporter wrote "
                            f"opset {written}); choose an opset from {written} to {newest} (--opset {written}; "
                            f"Python: opset={written}), or one below {written} that has a conversion for each of "
                            f"the model's ops")

    # Weights beyond protobuf's comfort go to `NAME.data` beside the file, which names it. Written
    # under a temporary name, the file named a temporary `.data` that was left behind (gigabytes,
    # once per export): both are staged under their final names and moved into place.
    external = _stored_bytes(module) > EXTERNAL_DATA_BYTES

    def write(staged: str) -> None:
        program.save(staged, external_data=external)
        _name_dims(staged, graph)
        onnx.checker.check_model(staged)

    atomic_write_staged(path, write)


def _keep_spec_names(graph: Any) -> None:
    """Give a fresh name to every value inside the exported graph (an `onnx_ir.Graph`) that bears the name
    of one of its inputs or outputs.

    The exporter names values after torch's nodes (`relu`, `linear`, `cat`) and then gives the outputs
    the spec's names: an output named `relu` after an earlier ReLU left two values named `relu`, which
    `onnx.checker` refuses (single static assignment)."""
    import onnx_ir

    ends = {id(value) for value in [*graph.inputs, *graph.outputs]}
    reserved = {value.name for value in [*graph.inputs, *graph.outputs]}
    values = [value for node in onnx_ir.traversal.RecursiveGraphIterator(graph) for value in node.outputs]
    taken = reserved | {value.name for value in values} | set(graph.initializers)
    for value in values:
        if value.name in reserved and id(value) not in ends:
            value.name = unique_name(value.name, taken)
            taken.add(value.name)


def _stored_bytes(module: Any) -> int:
    """Bytes of the weights and buffers the exporter stores (a tied tensor once)."""
    tensors = {id(t): t for t in [*module.parameters(), *module.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _name_dims(path: str, graph: Any) -> None:
    """Name the input dims torch's exporter left unnamed (`s53`: a `Dim.DYNAMIC` hint) as resgraph
    names them (`x_H`, as `resgraph sizes` does), in every value of the ONNX file at `path` that carries
    them: runtimes refer to dynamic dims by name (optimisation profiles, shape bindings)."""
    import onnx

    model = onnx.load(path, load_external_data=False)  # (weights stored beside it are left as they are)
    renames: dict[str, str] = {}
    for value in model.graph.input:
        if value.name not in graph.inputs:
            continue
        dims = value.type.tensor_type.shape.dim
        for dim in graph.meta["sizes"].of(value.name):
            given = dims[dim.axis + 1].dim_param if dim.axis + 1 < len(dims) else ""
            if re.fullmatch(r"s\d+", given):
                renames.setdefault(given, f"{value.name}_{dim.name}")
    if not renames:
        return
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:  # a name, or within a size expression: ((s53 - 1)//2) + 1
            if dim.dim_param:
                dim.dim_param = re.sub(r"\bs\d+\b", lambda m: renames.get(m.group(), m.group()), dim.dim_param)
    onnx.save(model, path)
