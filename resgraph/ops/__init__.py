"""The op catalogue: every layer kind a spec can name, keyed by its `op` string.

`OPS` holds the curated ops (typed arguments, pure shape functions), each module of them imported
when one of its ops is first looked up (see `OpRegistry`); `GenericLayer` accepts any other
torch.nn class. Importing this package never imports torch.
"""

from __future__ import annotations

from .base import OPS, Identifier, Layer, Layout, Reference, ShapeError, StrictModel, TensorType, register_op
from .generic import GenericLayer, GenericOpError
from .merge import Merge, MergeLayer, broadcast_shape, merge_code, merge_type

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
