"""ONNX export through PyTorch's exporter (needs the `onnx` extra: pip install 'resgraph[onnx]')."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from typing import Any

from .errors import ResgraphError, UsageError
from .files import atomic_write

__all__ = ["to_onnx"]


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's own progress lines and internal warnings are not the user's concern."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def to_onnx(module: Any, path: str, *, dynamic_batch: bool = True) -> None:
    """Export a module built by resgraph to an ONNX file, atomically.

    Inputs are named after the spec's inputs; the batch dimension, and every input size the model
    admits (see `resgraph sizes`), stay dynamic unless asked otherwise. The file passes `onnx.checker`.

    Raises:
        UsageError: the onnx / onnxscript packages are missing.
        ResgraphError: the exporter failed.
    """
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch's exporter needs it)
    except ImportError:
        raise UsageError("ONNX export needs the onnx and onnxscript packages: pip install 'resgraph[onnx]'") from None
    import torch

    graph = module.graph
    examples = module.example_inputs(batch=2)  # batch 2: a batch of 1 would be specialised into the graph
    # The batch, and each free input dim as far as the model admits other sizes, stay dynamic.
    dynamic = module.dynamic_shapes() if dynamic_batch else None
    was_training = module.training
    module.eval()
    try:
        with _quiet_exporter():
            program = torch.onnx.export(module, tuple(examples), dynamo=True, input_names=list(graph.inputs),
                                        dynamic_shapes=dynamic, verbose=False)
    except Exception as exc:  # the exporter raises many types
        raise ResgraphError(f"ONNX export failed: {str(exc).strip().splitlines()[0]}") from None
    finally:
        module.train(was_training)

    def write(tmp: str) -> None:
        program.save(tmp)
        onnx.checker.check_model(tmp)

    atomic_write(path, write)
