"""resgraph: declarative PyTorch architectures with named skip edges and automatic projections.

    >>> import resgraph
    >>> model = resgraph.build("examples/tutorial.yaml")  # doctest: +SKIP

Importing resgraph does not import torch; `build` does.
"""

from __future__ import annotations

from .api import build, check, count_parameters, load_spec, render, to_python
from .artifact import load
from .diagram import write_diagram
from .errors import Diagnostic, Location, ResgraphError, SpecError, UsageError
from .onnx_export import to_onnx
from .ops.generic import register_op
from .projections import ProjectionPlan
from .spec import Projection, Spec

__version__ = "0.1.0"

__all__ = [
    "Diagnostic",
    "Location",
    "Projection",
    "ProjectionPlan",
    "ResgraphError",
    "Spec",
    "SpecError",
    "UsageError",
    "__version__",
    "build",
    "check",
    "count_parameters",
    "load",
    "load_spec",
    "register_op",
    "render",
    "to_onnx",
    "to_python",
    "write_diagram",
]
