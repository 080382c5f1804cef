"""The spec language as pydantic models; the JSON Schema in schemas/ is generated from these.

A spec is inputs, an ordered list of layers (`- NAME: {op: ..., args}`), named skip edges
(`- NAME: {from: A, to: B, merge: add}`) and outputs. Layer bodies are a union tagged by `op`:
one typed model per curated op, `GenericLayer` for every other torch.nn class.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag, model_validator

from .ops import OPS, GenericLayer, Identifier, Layer, Layout, Merge, StrictModel
from .ops.base import DTYPES

__all__ = ["FORMAT_VERSION", "Defaults", "InputDecl", "LayerBody", "Projection", "Skip", "Spec"]

FORMAT_VERSION = 1


class Projection(str, Enum):
    """How a skip whose shape does not fit its target is reconciled (see the README's table)."""

    auto = "auto"
    conv = "conv"
    avgpool = "avgpool"
    pad = "pad"
    crop = "crop"
    none = "none"


Dim = Annotated[int, Field(ge=1)]


class InputDecl(StrictModel):
    """An input's per-sample shape (the batch dimension is implicit), dtype and layout."""

    shape: list[Dim]
    dtype: Literal[DTYPES] = "float32"  # type: ignore[valid-type]
    layout: Layout | None = Field(
        default=None,
        description="channels_first (C, ...) or features_last (..., F); default: by rank (3+ dims: channels_first).",
    )


class Skip(StrictModel):
    """Merge the output of `from` into the output of `to`; later uses of `to` see the result."""

    source: Identifier = Field(alias="from", description="An input or a layer before `to`.")
    to: Identifier = Field(description="The layer whose output receives the merge.")
    merge: Merge = Field(default=Merge.add, description="add, concat (along dim) or mul (gating, broadcasting).")
    projection: Projection | None = Field(default=None, description="Overrides defaults.projection for this skip.")
    dim: int | None = Field(default=None, description="Concat dim (batch is dim 0); default 1, the channels.")

    @model_validator(mode="after")
    def _dim_only_for_concat(self) -> Skip:
        if self.dim is not None and self.merge is not Merge.concat:
            raise ValueError(f"'dim' only applies to merge: concat, not merge: {self.merge.value}")
        return self

    @property
    def concat_dim(self) -> int:
        return 1 if self.dim is None else self.dim


class Defaults(StrictModel):
    """Spec-wide defaults."""

    projection: Projection = Field(default=Projection.auto, description="Projection policy of every skip.")


def _layer_tag(value: Any) -> str:
    op = value.get("op") if isinstance(value, dict) else getattr(value, "op", None)
    return op if isinstance(op, str) and op in OPS else "generic"


def _layer_union() -> Any:
    members = tuple(Annotated[model, Tag(name)] for name, model in OPS.items())
    return Annotated[Union[(*members, Annotated[GenericLayer, Tag("generic")])], Discriminator(_layer_tag)]


LayerBody = _layer_union()


def _one_key(body: Any, what: str) -> Any:
    """A `- NAME: body` list entry: a mapping with exactly one valid name."""
    return Annotated[dict[Identifier, body], Field(
        min_length=1, max_length=1, json_schema_extra={"additionalProperties": False, "description": what})]


class Spec(StrictModel):
    """A resgraph architecture spec."""

    resgraph: Literal[1] = Field(description="Spec format version.")
    name: Identifier = Field(description="The model's name; the compiled module's class name.")
    description: str | None = None
    inputs: dict[Identifier, list[Dim] | InputDecl] = Field(
        min_length=1, json_schema_extra={"additionalProperties": False},
        description="Input name -> per-sample shape, or {shape, dtype, layout}.")
    defaults: Defaults = Field(default_factory=Defaults)
    layers: list[_one_key(LayerBody, "- NAME: {op: ..., arguments}")] = Field(  # type: ignore[valid-type]
        min_length=1, description="Ordered; each layer reads the previous one unless it names `input`.")
    skips: list[_one_key(Skip, "- NAME: {from: A, to: B, merge: add}")] = Field(  # type: ignore[valid-type]
        default_factory=list, description="Named edges merging one node's output into a later layer's.")
    outputs: list[Identifier] | None = Field(default=None, min_length=1,
                                              description="The returned nodes; default: the last layer.")

    def layer_items(self) -> list[tuple[int, str, Layer]]:
        """(index, name, layer) for every layer, in order."""
        return [(i, name, body) for i, entry in enumerate(self.layers) for name, body in entry.items()]

    def skip_items(self) -> list[tuple[int, str, Skip]]:
        """(index, name, skip) for every skip, in order."""
        return [(i, name, body) for i, entry in enumerate(self.skips) for name, body in entry.items()]

    def input_decls(self) -> dict[str, InputDecl]:
        """Every input in its long form."""
        return {name: value if isinstance(value, InputDecl) else InputDecl(shape=value)
                for name, value in self.inputs.items()}
