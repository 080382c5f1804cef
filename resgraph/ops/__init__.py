"""The op catalogue: every layer kind a spec can name, keyed by its `op` string.

`OPS` holds the curated ops (typed arguments, pure shape functions), each module of them imported
when one of its ops is first looked up (see `OpRegistry`); `GenericLayer` accepts any other
torch.nn class. Importing this package never imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import OPS, Identifier, Layer, Layout, Reference, ShapeError, StrictModel, TensorType, register_op
from .generic import GenericLayer, GenericOpError
from .merge import Merge, broadcast_shape, merge_code, merge_type

if TYPE_CHECKING:
    from .merge_ops import MergeLayer

__all__ = [
    "OPS",
    "GenericLayer",
    "GenericOpError",
    "Identifier",
    "Layer",
    "Layout",
    "Reference",
    "Merge",
    "MergeLayer",
    "ShapeError",
    "StrictModel",
    "TensorType",
    "broadcast_shape",
    "merge_code",
    "merge_type",
    "register_op",
]


def __getattr__(name: str) -> Any:
    # MergeLayer's module creates the merge layers' models: imported when first asked for (PEP 562).
    if name == "MergeLayer":
        from .merge_ops import MergeLayer

        return MergeLayer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

