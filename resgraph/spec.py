"""The spec language as pydantic models; the JSON Schema in schemas/ is generated from these.

A spec is inputs, an ordered list of layers (`- NAME: {op: ..., args}`), named skip edges
(`- NAME: {from: A, to: B, merge: add}`) and outputs, plus parameters and reusable blocks.
Layer bodies are a union tagged by `op`: one typed model per curated op, `GenericLayer` for
every other torch.nn class, and `BlockCall` for `{block: ...}`. Layer and skip bodies are
templates (they may hold `${...}` expressions over parameters), at the top level as inside
`blocks:`: they stay data here and are typed per scope by the expansion stage.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from enum import Enum
from functools import cache
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    AfterValidator,
    Discriminator,
    Field,
    PrivateAttr,
    SkipValidation,
    StrictBool,
    Tag,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    WrapValidator,
    model_validator,
)

from .errors import UsageError
from .expressions import MAX_MAGNITUDE, make_divisible
from .ops import OPS, GenericLayer, Identifier, Layout, Merge, Reference, StrictModel
from .ops.base import DTYPES, is_identifier
from .ops.merge import concat_dim
from .suggest import did_you_mean

__all__ = ["BUILTIN_NAMES", "INSTANCE_NAMES", "MAX_DIM", "MAX_RANK", "REQUIRED", "SCHEMA_CHECKED", "SHAPE_NAMES",
           "BlockCall",
           "BlockDef", "BlockLibrary", "Defaults", "InputDecl", "Projection", "Scale", "Skip", "Spec", "Training",
           "layer_body"]


class Projection(str, Enum):
    """How a skip whose shape does not fit its target is reconciled (see the README's table)."""

    auto = "auto"
    conv = "conv"
    avgpool = "avgpool"
    pad = "pad"
    crop = "crop"
    none = "none"


# An input's per-sample size: at most 2^62, the bound of every number an expression makes (larger sizes
# are never real, and size solving works in int64, which a larger one overflowed with a traceback).
MAX_DIM = MAX_MAGNITUDE
# The most dims a tensor has, the batch dim included: torch's own bound (ATen's `dim_bitset_size`), past
# which its reductions, `flip` and others refuse the tensor ("only tensors with up to 64 dims are
# supported") at the first forward, after every check here had passed.
MAX_RANK = 64
Dim = Annotated[int, Field(ge=1, le=MAX_DIM)]


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

    source: Reference = Field(alias="from", description="An input or a layer before `to` (or one output of a "
                                                        "block call: `call.out`, `call.0`).")
    # A Reference, not an Identifier, only so that `to: call.out` reaches the resolver, which says
    # why a skip cannot merge into one value of a call and what to write instead ("invalid name" did not).
    to: Reference = Field(description="The layer whose output receives the merge (a layer name; not one output "
                                      "of a block call).")
    merge: Merge = Field(default=Merge.add, description="add, concat (along dim) or mul (gating, broadcasting).")
    projection: Projection | None = Field(default=None, description="Overrides defaults.projection for this skip.")
    dim: int | None = Field(default=None, description="Concat dim (batch is dim 0); default the channels (1) of a "
                                                      "channels-first map, the features (-1) of a features-last value.")
    when: StrictBool = Field(default=True, description="false (usually an expression): the skip is left out.")

    @model_validator(mode="after")
    def _dim_only_for_concat(self) -> Skip:
        if self.dim is not None and self.merge is not Merge.concat:
            raise ValueError(f"'dim' only applies to merge: concat, not merge: {self.merge.value}")
        return self

    def concat_dim(self, layout: str) -> int:
        """The dim a concat joins along, given the target's `layout` (see `ops.merge.concat_dim`)."""
        return concat_dim(self.dim, layout)


class Defaults(StrictModel):
    """Spec-wide defaults."""

    projection: Projection = Field(default=Projection.auto, description="Projection policy of every skip.")


class BlockCall(StrictModel):
    """A layer that instantiates a block; with `repeat: N`, N chained instances (`NAME.0`, `NAME.1`...)."""

    block: Identifier = Field(description="The block to instantiate (from `blocks:` or an imported file).")
    input: Reference | list[Reference] | None = Field(
        default=None, description="The node(s) the block reads; default: the previous layer.")
    repeat: Annotated[int, Field(ge=1, le=100_000)] | None = Field(
        default=None, description="Chain this many instances, nested as NAME.0, NAME.1, ... (scaled by scale.depth).")
    when: StrictBool = Field(default=True, description="false (usually an expression): the layer is left out.")
    collect: bool = Field(default=False, description=(
        "true (with repeat): every instance's output stays readable, as NAME.0, NAME.1, ... and NAME.* (all of "
        "them, in order, e.g. in a concat's input list); NAME alone is still the last one's."))
    scale: bool = Field(default=True, description="false: scale.depth leaves `repeat` as written "
                                                  "(e.g. a repeat over the rows of a stage table).")
    checkpoint: bool = Field(default=False, description=(
        "true: activation checkpointing; each instance's activations are recomputed in the backward pass "
        "instead of stored (torch.utils.checkpoint, non-reentrant). Gradients are unchanged."))
    with_: dict[Identifier, Any] = Field(
        default_factory=dict, alias="with",
        description="Block parameter values; expressions may use `index` (the instance) and `block_index`.")


def _layer_tag(value: Any) -> str:
    if isinstance(value, dict):
        if "block" in value and "op" not in value:
            return "block"
        op = value.get("op")
    else:
        if isinstance(value, BlockCall):
            return "block"
        op = getattr(value, "op", None)
    return op if isinstance(op, str) and op in OPS else "generic"


@cache
def layer_body() -> Any:
    """The type of a layer body (`$defs/LayerBody` in the schema): a union of every op's model,
    `GenericLayer` and `BlockCall`, tagged by `op`.

    Built on first use (by the schema generator), not at import: naming every op imports every op
    module, and checking a spec needs only the ops it names (`evaluate` types each body by its tag).
    """
    members = tuple(Annotated[model, Tag(name)] for name, model in OPS.items())
    return Annotated[Union[(*members, Annotated[GenericLayer, Tag("generic")], Annotated[BlockCall, Tag("block")])],
                     Discriminator(_layer_tag)]

# Where a body is a template (inside `blocks:`), pydantic keeps it as data until each instance
# is expanded; the JSON Schema still describes it as a layer (or skip) for editors and checks.
LayerTemplate = Annotated[dict[str, Any], WithJsonSchema({"$ref": "#/$defs/LayerBody"})]
SkipTemplate = Annotated[dict[str, Any], WithJsonSchema({"$ref": "#/$defs/Skip"})]


def _one_key(body: Any, what: str) -> Any:
    """A `- NAME: body` list entry: a mapping with exactly one valid name.

    The typed model keeps each entry as given instead of copying it: entries are templates, only
    read (expansion types each body from a copy), and a copy of a 10,000-layer spec's entries held
    8 MiB for the model's life. The annotations in order: the schema's constraints, pydantic's
    validation skipped (it would copy), the schema's wording, and `_entry_as_given`'s check.
    """
    return Annotated[dict[Identifier, body], Field(min_length=1, max_length=1), SkipValidation,
                     Field(json_schema_extra={"additionalProperties": False, "description": what}),
                     AfterValidator(_entry_as_given)]


def _entries(body: Any, what: str) -> Any:
    """A list of `_one_key` entries, whose entries are not checked again where the JSON Schema has
    checked them (`SCHEMA_CHECKED`)."""
    return Annotated[list[_one_key(body, what)], WrapValidator(_entries_unless_schema_checked)]  # type: ignore[misc]


# The validation context of a document the JSON Schema accepted (or whose refused parts were
# replaced by valid stand-ins), as `validate` gives it: the schema checks each `- NAME: {...}`
# entry as `_entry_as_given` does, so its check is not run again (once per layer, at every build).
SCHEMA_CHECKED: Mapping[str, bool] = {"schema_checked": True}


def _entries_unless_schema_checked(entries: Any, validate_each: ValidatorFunctionWrapHandler,
                                   info: ValidationInfo) -> Any:
    if info.context is SCHEMA_CHECKED and type(entries) is list:
        return list(entries)  # (a list of its own, as pydantic's validation makes)
    return validate_each(entries)


def _entry_as_given(entry: Any) -> Any:
    """`entry` itself when it is one `NAME: {...}` pair with a valid name (the JSON Schema checks a
    spec's entries before this, and words its errors; this guards models built directly).

    Raises:
        ValueError: anything else.
    """
    if not isinstance(entry, dict) or len(entry) != 1:
        raise ValueError("an entry is one `NAME: {...}` pair")
    ((name, body),) = entry.items()
    if not is_identifier(name):
        raise ValueError(f"{name!r} is not a valid name (an ASCII letter, then ASCII letters, digits and _)")
    if not isinstance(body, dict):
        raise ValueError(f"{name}: the body is a mapping, not {type(body).__name__}")
    return entry


LAYER_ENTRY = "- NAME: {op: ..., arguments} or - NAME: {block: ..., repeat: N, with: {...}}"
SKIP_ENTRY = "- NAME: {from: A, to: B, merge: add}"


class BlockDef(StrictModel):
    """A named, parameterised sub-graph. Its inputs are referable by name inside it."""

    description: str | None = None
    params: dict[Identifier, Any] = Field(
        default_factory=dict, description="Parameter -> default; the value `required` marks one without a default.")
    inputs: list[Identifier] = Field(default_factory=lambda: ["x"], min_length=1,
                                     description="Names of the block's inputs; default [x].")
    layers: _entries(LayerTemplate, LAYER_ENTRY) = Field(min_length=1)  # type: ignore[valid-type]
    skips: _entries(SkipTemplate, SKIP_ENTRY) = Field(default_factory=list)  # type: ignore[valid-type]
    outputs: list[Reference] | None = Field(
        default=None, min_length=1,
        description="The block's outputs; default: its last layer. With several, a call's are read as CALL.NAME.")


REQUIRED = "required"

# The names a block body reads without declaring them: its instance's place (bound per instance by
# expansion) and its input's sizes (read lazily, see `expand._ShapeNames`). A parameter of the same
# name would hide one of them silently (a block's `index: 3` wins over the instance's position, a
# top-level `in_channels` over every block's input size), so no parameter may take one.
INSTANCE_NAMES = ("index", "repeats", "block_index", "num_blocks")
SHAPE_NAMES = ("in_channels", "in_features", "in_shape", "in_shapes")
BUILTIN_NAMES: dict[str, str] = {
    "index": "the instance's position in its repeat",
    "repeats": "the number of instances of its repeat",
    "block_index": "the position among all block instances of the network",
    "num_blocks": "the number of block instances of the network",
    "in_channels": "dim 0 of the block's first input",
    "in_features": "the last dim of the block's first input",
    "in_shape": "the per-sample shape of the block's first input",
    "in_shapes": "every block input's per-sample shape",
}


class Scale(StrictModel):
    """Global multipliers: `width` scales every conv's out_channels, `depth` every block repeat.

    The rounding follows the reference being reproduced: EfficientNet and MobileNet round a width
    to the nearest multiple of `divisor` (never more than 10% down) and a depth up
    (`ceil(n * depth)`); Ultralytics' YOLO caps a width at `max_channels`, rounds it up to a
    multiple of the divisor, and rounds a depth to the nearest (`max(round(n * depth), 1)`).
    """

    width: Annotated[float, Field(gt=0, le=64)] = 1.0
    depth: Annotated[float, Field(gt=0, le=64)] = 1.0
    divisor: Annotated[int, Field(ge=1)] = Field(default=8, description="Scaled channels are multiples of this.")
    max_channels: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="Channels are capped at this before the width multiplier (Ultralytics).")
    width_rounding: Literal["nearest", "up"] = Field(
        default="nearest", description="nearest: MobileNet's make_divisible (default); up: ceil to a multiple "
                                       "of the divisor (Ultralytics).")
    depth_rounding: Literal["up", "nearest"] = Field(
        default="up", description="up: ceil(n * depth) (EfficientNet, default); nearest: max(round(n * depth), 1) "
                                  "(Ultralytics).")

    @property
    def scales_widths(self) -> bool:
        """False where every conv keeps its written width (width 1, no cap)."""
        return self.width != 1 or self.max_channels is not None

    def scaled_width(self, channels: float) -> float:
        """The out_channels a scaled conv written with `channels` gets (`channels` itself when
        `scales_widths` is false); expressions read it as `scaled(...)`."""
        return self.channels(channels) if self.scales_widths else channels

    def channels(self, channels: float) -> int:
        """A layer's channels after width scaling (and the cap), rounded as configured."""
        channels = min(channels, self.max_channels) if self.max_channels is not None else channels
        scaled = channels * self.width
        if self.width_rounding == "up":
            return max(self.divisor, math.ceil(scaled / self.divisor) * self.divisor)
        return make_divisible(scaled, self.divisor)

    def repeats(self, repeat: int) -> int:
        """A block call's instance count after depth scaling, rounded as configured."""
        if self.depth_rounding == "nearest":
            return max(round(repeat * self.depth), 1)
        return max(1, math.ceil(repeat * self.depth - 1e-9))


class Training(StrictModel):
    """The plan for training at scale: which blocks `resgraph.shard` and `resgraph.compile` use
    when called without `blocks=` (activation checkpointing is `checkpoint: true` on a block call)."""

    shard: list[Identifier] | None = Field(
        default=None, description="Blocks whose instances become FSDP2 units (fully_shard, then the root); "
                                  "default: every block called with `repeat`.")
    compile: list[Identifier] | None = Field(
        default=None, description="Blocks compiled one forward per distinct instance class (regional "
                                  "torch.compile); default: every block called with `repeat`.")


# (what `Spec._invalid_parts` reads for a spec validation found nothing invalid in)
_NONE_INVALID: tuple[frozenset[Any], frozenset[str], frozenset[str]] = (frozenset(), frozenset(), frozenset())


class Spec(StrictModel):
    """A resgraph architecture spec."""

    resgraph: Literal[1] = Field(description="Spec format version.")
    name: Identifier = Field(description="The model's name; the compiled module's class name.")
    description: str | None = None
    imports: list[str] = Field(default_factory=list,
                               description="Block library files (paths relative to this file) whose blocks to use.")
    params: dict[Identifier, Any] = Field(
        default_factory=dict, description="Parameters usable as ${name} anywhere; override with --set NAME=VALUE.")
    scale: Scale = Field(default_factory=Scale)
    blocks: dict[Identifier, BlockDef] = Field(default_factory=dict, json_schema_extra={"additionalProperties": False})
    inputs: dict[Identifier, list[Dim] | InputDecl] = Field(
        min_length=1, json_schema_extra={"additionalProperties": False},
        description="Input name -> per-sample shape, or {shape, dtype, layout}.")
    defaults: Defaults = Field(default_factory=Defaults)
    layers: _entries(LayerTemplate, LAYER_ENTRY) = Field(  # type: ignore[valid-type]
        min_length=1, description="Ordered; each layer reads the previous one unless it names `input`.")
    skips: _entries(SkipTemplate, SKIP_ENTRY) = Field(  # type: ignore[valid-type]
        default_factory=list, description="Named edges merging one node's output into a later layer's.")
    outputs: list[Reference] | None = Field(default=None, min_length=1,
                                             description="The returned nodes; default: the last layer.")
    training: Training = Field(default_factory=Training,
                               description="Which blocks resgraph.shard and resgraph.compile use by default.")

    nested_first: ClassVar[tuple[type[StrictModel], ...]] = (Scale, BlockDef, InputDecl, Defaults, Training)

    # What validation found invalid and reported (expansion leaves them out, and what depends on
    # them reports nothing more): entries as (section, index), block names and input names; None
    # where it found nothing. (One attribute, whose default is None: pydantic copies each private
    # attribute's default for every Spec made, and three sets cost a fifth of typing the tutorial's.)
    _invalid: tuple[frozenset[tuple[str, int]], frozenset[str], frozenset[str]] | None = PrivateAttr(None)

    def _invalid_parts(self) -> tuple[frozenset[Any], frozenset[str], frozenset[str]]:
        """(entries, blocks, inputs) validation refused, read where pydantic keeps them: `self._invalid`
        is found only after the ordinary lookup fails, by pydantic's `__getattr__` (2.5 us, a tenth
        of a small spec's expansion)."""
        private = self.__pydantic_private__
        invalid = private.get("_invalid") if private is not None else None
        return invalid if invalid is not None else _NONE_INVALID

    @property
    def invalid_entries(self) -> frozenset[tuple[str, int]]:
        """The `layers`/`skips` entries validation refused (and reported), as (section, index)."""
        return self._invalid_parts()[0]

    def invalid_block(self, name: str) -> bool:
        """True for a block whose definition validation refused (and reported)."""
        return name in self._invalid_parts()[1]

    def invalid_input(self, name: str) -> bool:
        """True for an input whose declaration validation refused (and reported): it has no type."""
        return name in self._invalid_parts()[2]

    def mark_invalid(self, entries: frozenset[tuple[str, int]], blocks: frozenset[str], inputs: frozenset[str],
                     params: dict[str, Any]) -> Spec:
        """This spec, with the entries, blocks and inputs validation refused marked as such, and its
        `params` the values in force (set as `model_copy(update=...)` sets a field: not validated, and
        counted as set).

        Changes this spec: only `validate` calls it, on the spec it has just typed, which nothing else
        holds yet (a spec is otherwise never changed). A copy made for it cost 7% of validating the
        tutorial.
        """
        self.__dict__["params"] = params
        self.__pydantic_fields_set__.add("params")
        self._invalid = (entries, blocks, inputs) if entries or blocks or inputs else None
        return self

    def input_decls(self) -> dict[str, InputDecl]:
        """Every input in its long form."""
        return {name: value if isinstance(value, InputDecl) else InputDecl(shape=value)
                for name, value in self.inputs.items()}

    def with_input_shapes(self, shapes: Mapping[str, Sequence[int]]) -> Spec:
        """This spec with some inputs declared at other per-sample shapes (dtype and layout kept).

        Raises:
            UsageError: an unknown input, or a shape that is not a list of positive ints, or of more
                dims than a tensor has (MAX_RANK).
        """
        decls = self.input_decls()
        if not isinstance(shapes, Mapping):  # `input_shapes=(3, 224, 224)`, as torchinfo's input_size is given
            raise UsageError(f"input shapes: expected a mapping from input name to per-sample shape, e.g. "
                             f"{{{next(iter(decls), 'x')!r}: (3, 224, 224)}}, got {shapes!r}")
        for name, shape in shapes.items():
            if name not in decls:
                raise UsageError(f"input shape for {name!r}: the spec has no input {name!r}"
                                 f"{did_you_mean(name, decls)} (its inputs: {', '.join(decls)})")
            whole = isinstance(shape, Sequence) and not isinstance(shape, str) and all(
                isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= MAX_DIM for d in shape)
            if not shape or not whole:
                raise UsageError(f"input shape for {name!r}: expected whole sizes per sample from 1 to 2^62, "
                                 f"got {shape!r}")
            if len(shape) >= MAX_RANK:  # (said of the caller's shape, as a size above 2^62 is, not of the spec's input)
                raise UsageError(f"input shape for {name!r}: {len(shape):,} dims per sample, {len(shape) + 1:,} with "
                                 f"the batch dim; a torch tensor has at most {MAX_RANK}")
        inputs = {name: decl.model_copy(update={"shape": list(shapes[name])}) if name in shapes else decl
                  for name, decl in decls.items()}
        return self.model_copy(update={"inputs": inputs})


class BlockLibrary(StrictModel):
    """A file of blocks for other specs to import."""

    resgraph: Literal[1] = Field(description="Spec format version.")
    description: str | None = None
    imports: list[str] = Field(default_factory=list)
    blocks: dict[Identifier, BlockDef] = Field(min_length=1, json_schema_extra={"additionalProperties": False})

    nested_first: ClassVar[tuple[type[StrictModel], ...]] = (BlockDef,)
