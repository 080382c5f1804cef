"""resgraph: declarative PyTorch architectures with named skip edges and automatic projections.

    >>> import resgraph
    >>> model = resgraph.build("examples/tutorial.yaml")  # doctest: +SKIP

Importing resgraph imports nothing heavy: each public name is loaded from its module on first
use (PEP 562), so `resgraph --help` starts fast and `check` never imports torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__

# Public name -> the module that defines it.
_EXPORTS = {
    "BuildRecord": "pipeline",
    "CompiledModule": "model",
    "Diagnostic": "errors",
    "Location": "errors",
    "Projection": "spec",
    "ProjectionPlan": "projections",
    "ResgraphError": "errors",
    "Spec": "spec",
    "SpecError": "errors",
    "UsageError": "errors",
    "WeightMapping": "weights",
    "WeightsError": "weights",
    "build": "api",
    "check": "api",
    "checkpoint": "distributed",
    "compile": "distributed",
    "count_parameters": "api",
    "export_program": "model",
    "load": "artifact",
    "load_weights": "weights",
    "load_spec": "api",
    "materialize": "api",
    "rebuild": "api",
    "register_op": "ops.generic",
    "render": "api",
    "save": "formats",
    "summary": "api",
    "shard": "distributed",
    "to_onnx": "onnx_export",
    "to_python": "api",
    "valid_sizes": "api",
    "write_diagram": "formats",
}

__all__ = [
    "BuildRecord", "CompiledModule", "Diagnostic", "Location", "Projection", "ProjectionPlan", "ResgraphError", "Spec",
    "SpecError", "UsageError", "WeightMapping", "WeightsError", "__version__", "build", "check", "checkpoint",
    "compile", "count_parameters", "export_program", "load", "load_spec", "load_weights", "materialize", "rebuild",
    "register_op", "render", "save", "shard", "summary", "to_onnx", "to_python", "valid_sizes", "write_diagram",
]

if TYPE_CHECKING:
    from .api import (
        build,
        check,
        count_parameters,
        load_spec,
        materialize,
        rebuild,
        render,
        summary,
        to_python,
        valid_sizes,
    )
    from .artifact import load
    from .distributed import checkpoint, compile, shard
    from .errors import Diagnostic, Location, ResgraphError, SpecError, UsageError
    from .formats import save, write_diagram
    from .model import CompiledModule, export_program
    from .onnx_export import to_onnx
    from .ops.generic import register_op
    from .pipeline import BuildRecord
    from .projections import ProjectionPlan
    from .spec import Projection, Spec
    from .weights import WeightMapping, WeightsError, load_weights


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        try:  # a submodule, as `resgraph.ops` after `import resgraph`
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError:
            raise AttributeError(f"module 'resgraph' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
