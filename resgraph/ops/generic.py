"""Any other torch.nn class: arguments checked against its signature, shapes from the meta device.

Curated ops get typed schema entries and pure shape functions; this fallback keeps the rest of
`torch.nn` usable. It is the only op that imports torch during validation, and only when a spec
uses it.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import re
from collections.abc import Iterable, Iterator
from functools import cache
from typing import Annotated, Any, ClassVar

from pydantic import ConfigDict, Field, StringConstraints

from ..suggest import did_you_mean
from .base import DTYPES, IDENTIFIER_PATTERN, OPS, RESGRAPH_KEYS, Layer, ShapeError, TensorType

__all__ = ["CUSTOM_OPS", "GenericLayer", "INFERABLE", "allowed_imports", "register_op", "torch_module_class",
           "torch_module_names"]

DottedName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$",
                                             max_length=256)]

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

    op: DottedName = Field(description="A torch.nn class name, an op registered with resgraph.register_op, or an "
                                       "allowed import path (package.module.Class).",
                           json_schema_extra=_exclude_curated)

    max_inputs: ClassVar[int | None] = None

    def args(self) -> dict[str, Any]:
        return {k: tuple(v) if isinstance(v, list) else v for k, v in (self.model_extra or {}).items()
                if k not in RESGRAPH_KEYS}

    @property
    def torch_name(self) -> str:  # type: ignore[override]
        return self.op

    def build(self, args: dict[str, Any]) -> Any:
        return torch_module_class(self.op)(**args)

    def parameter_count(self, args: dict[str, Any]) -> int | None:
        return None  # an arbitrary constructor: only building it can tell

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


# Layers registered from Python with register_op, and the import prefixes the current caller
# allows (set by the API for the duration of one call: a spec can never allow imports itself).
CUSTOM_OPS: dict[str, type] = {}
ALLOWED_IMPORTS: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("allowed_imports", default=())


def register_op(name: str, module_class: type) -> type:
    """Make a Python `nn.Module` class usable in specs as `op: name`.

    Its constructor arguments are checked against its signature and its shapes are inferred on
    the meta device, like any uncurated torch.nn class; input sizes it names `in_channels`,
    `in_features`, ... are inferred too. Returns the class, so it works as a decorator factory.

    Raises:
        ValueError: `name` is not an identifier, or already names an op.
        TypeError: `module_class` is not an nn.Module subclass.
    """
    import torch

    if not isinstance(module_class, type) or not issubclass(module_class, torch.nn.Module):
        raise TypeError(f"register_op({name!r}, ...) needs a torch.nn.Module subclass, got {module_class!r}")
    if not re.fullmatch(IDENTIFIER_PATTERN.strip("^$"), name):
        raise ValueError(f"op name {name!r} must start with a letter and hold only letters, digits and _")
    if name in OPS or name in CUSTOM_OPS or name in torch_module_names():
        raise ValueError(f"op {name!r} is already defined; choose another name")
    CUSTOM_OPS[name] = module_class
    return module_class


@contextlib.contextmanager
def allowed_imports(prefixes: Iterable[str]) -> Iterator[None]:
    """Within the block, a spec's dotted `op: package.module.Class` may import under these prefixes."""
    token = ALLOWED_IMPORTS.set(tuple(prefixes))
    try:
        yield
    finally:
        ALLOWED_IMPORTS.reset(token)


def torch_module_class(op: str) -> type:
    """The class an uncurated op names: a registered op, an allowed import, or a torch.nn class.

    Raises:
        GenericOpError: an unknown name (with suggestions), or an import the caller did not allow.
    """
    import torch

    if op in CUSTOM_OPS:
        return CUSTOM_OPS[op]
    if "." in op:
        return _imported_class(op)
    if op not in torch_module_names():
        hint = did_you_mean(op, [*OPS, *CUSTOM_OPS, *torch_module_names()])
        raise GenericOpError(f"unknown op {op!r}: not a resgraph op or a torch.nn layer class{hint}", "op")
    return getattr(torch.nn, op)


def _imported_class(path: str) -> type:
    import importlib

    import torch

    allowed = ALLOWED_IMPORTS.get()
    if not any(path == prefix or path.startswith(prefix if prefix.endswith(".") else prefix + ".")
               for prefix in allowed):
        package = path.split(".")[0]
        raise GenericOpError(f"op {path!r} is a Python import; resgraph imports code named in a spec only when the "
                             f"caller allows it (--allow-import {package}, or allow_imports=['{package}'])", "op")
    module_name, _, class_name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise GenericOpError(f"cannot import {path!r}: {exc}", "op") from None
    if not isinstance(cls, type) or not issubclass(cls, torch.nn.Module):
        raise GenericOpError(f"{path!r} is not a torch.nn.Module class", "op")
    return cls


@cache
def _constructor_parameters(cls: type) -> dict[str, inspect.Parameter]:
    signature = inspect.signature(cls.__init__)
    return {name: p for name, p in signature.parameters.items()
            if name not in ("self", "device", "dtype") and p.kind is not p.VAR_POSITIONAL}
