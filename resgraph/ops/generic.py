"""Any other torch.nn class: arguments checked against its signature, shapes from the meta device.

Curated ops get typed schema entries and pure shape functions; this fallback keeps the rest of
`torch.nn` usable. It is the only op that imports torch during validation, and only when a spec
uses it.
"""

from __future__ import annotations

import inspect
from functools import cache
from typing import Any, ClassVar

from pydantic import ConfigDict, Field

from ..suggest import did_you_mean
from .base import DTYPES, OPS, RESGRAPH_KEYS, Identifier, Layer, ShapeError, TensorType

__all__ = ["GenericLayer", "INFERABLE", "torch_module_class", "torch_module_names"]

# Input-size arguments resgraph fills in for any torch.nn class whose signature has them.
INFERABLE: dict[str, str] = {
    "in_channels": "channels",
    "num_features": "channels",
    "num_channels": "channels",
    "in_features": "last",
    "normalized_shape": "last",
    "embed_dim": "last",
    "d_model": "last",
}

# Containers and abstract bases are not layers.
_NOT_LAYERS = {"Module", "Sequential", "ModuleList", "ModuleDict", "ParameterList", "ParameterDict", "Container"}


def _exclude_curated(schema: dict[str, Any]) -> None:
    schema["not"] = {"enum": sorted(OPS)}


class GenericOpError(ShapeError):
    """An uncurated op's name or arguments are wrong (not its shapes)."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


class GenericLayer(Layer):
    """Any torch.nn class not curated by resgraph; its keys are the class's constructor arguments."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False, frozen=True,
                              json_schema_extra={"description": __doc__})

    op: Identifier = Field(description="A torch.nn class name.", json_schema_extra=_exclude_curated)

    max_inputs: ClassVar[int | None] = None

    def args(self) -> dict[str, Any]:
        return {k: tuple(v) if isinstance(v, list) else v for k, v in (self.model_extra or {}).items()
                if k not in RESGRAPH_KEYS}

    @property
    def torch_name(self) -> str:  # type: ignore[override]
        return self.op

    def inferred_args(self, inputs: list[TensorType]) -> dict[str, Any]:
        parameters = _constructor_parameters(torch_module_class(self.op))
        given = self.args()
        x = inputs[0]
        if not x.rank:
            return {}
        return {name: x.shape[0] if rule == "channels" else x.shape[-1]
                for name, rule in INFERABLE.items() if name in parameters and name not in given}

    def call(self, module: str, operands: list[str]) -> str:
        pick = (self.model_extra or {}).get("output")
        return super().call(module, operands) + (f"[{int(pick)}]" if pick is not None else "")

    def check_arguments(self) -> None:
        """Raise GenericOpError for an unknown class or arguments its signature does not take."""
        cls = torch_module_class(self.op)
        parameters = _constructor_parameters(cls)
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        for name in self.args():
            if name not in parameters and not takes_any:
                raise GenericOpError(f"torch.nn.{self.op} has no argument {name!r}{did_you_mean(name, parameters)}",
                                     name)
        missing = [name for name, p in parameters.items()
                   if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                   and name not in self.args() and name not in INFERABLE]
        if missing:
            raise GenericOpError(f"torch.nn.{self.op} needs argument(s) {', '.join(map(repr, missing))}", "op")

    def output_type(self, inputs: list[TensorType]) -> TensorType:
        import torch

        self.check_arguments()
        try:
            with torch.device("meta"):
                module = torch_module_class(self.op)(**self.module_args(inputs))
                tensors = [torch.empty((2, *t.shape), dtype=getattr(torch, t.dtype)) for t in inputs]
                out = module(*tensors)
        except Exception as exc:  # torch reports bad arguments and shapes in many exception types
            raise ShapeError(f"torch.nn.{self.op} rejected input {', '.join(map(str, inputs))}: "
                             f"{_first_line(exc)}") from None
        pick = (self.model_extra or {}).get("output")
        if pick is not None:
            if not isinstance(out, (tuple, list)) or not isinstance(pick, int) or not -len(out) <= pick < len(out):
                size = f"a tuple of {len(out)}" if isinstance(out, (tuple, list)) else "a single tensor"
                raise GenericOpError(f"output: {pick!r} does not index the result, which is {size}", "output")
            out = out[pick]
        if not isinstance(out, torch.Tensor):
            what = f"a tuple of {len(out)}" if isinstance(out, (tuple, list)) else type(out).__name__
            raise ShapeError(f"torch.nn.{self.op} returns {what}, not a tensor; pick one element with `output: 0`")
        dtype = str(out.dtype).removeprefix("torch.")
        shape = tuple(out.shape[1:])
        layout = inputs[0].layout if len(shape) == inputs[0].rank else (
            "channels_first" if len(shape) >= 3 else "features_last")
        return TensorType(shape, dtype if dtype in DTYPES else "float32", layout)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@cache
def torch_module_names() -> tuple[str, ...]:
    """Public torch.nn classes usable as layers."""
    import torch

    return tuple(sorted(name for name, obj in vars(torch.nn).items()
                        if isinstance(obj, type) and issubclass(obj, torch.nn.Module)
                        and not name.startswith("_") and name not in _NOT_LAYERS))


def torch_module_class(op: str) -> type:
    """The torch.nn class named `op`. Raises GenericOpError with suggestions when there is none."""
    import torch

    if op not in torch_module_names():
        hint = did_you_mean(op, [*OPS, *torch_module_names()])
        raise GenericOpError(f"unknown op {op!r}: not a resgraph op or a torch.nn layer class{hint}", "op")
    return getattr(torch.nn, op)


@cache
def _constructor_parameters(cls: type) -> dict[str, inspect.Parameter]:
    signature = inspect.signature(cls.__init__)
    return {name: p for name, p in signature.parameters.items()
            if name not in ("self", "device", "dtype") and p.kind is not p.VAR_POSITIONAL}
