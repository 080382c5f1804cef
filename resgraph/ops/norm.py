"""BatchNorm1d-3d: normalisation over the batch (feature sizes inferred).

The normalisations computed per sample (InstanceNorm, LayerNorm, GroupNorm) are in `sample_norm.py`,
imported when a spec names one of them.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import Field

from .base import (
    FLOAT_DTYPES,
    NORM_DTYPES,
    FeatureMapLayer,
    TensorType,
    require_rank,
)
from .conv import spatial_family

__all__ = ["BATCH_NORMS", "BatchNormBase"]

Positive = Annotated[float, Field(gt=0)]


class BatchNormBase(FeatureMapLayer):
    """Shared arguments and rank rule of BatchNorm1d-3d."""

    eps: Positive = 1e-5
    momentum: Annotated[float, Field(ge=0, le=1)] | None = 0.1
    affine: bool = True
    track_running_stats: bool = True

    inferred: ClassVar[tuple[str, ...]] = ("num_features",)

    @property
    def input_dtypes(self) -> frozenset[str]:  # type: ignore[override]
        return NORM_DTYPES if self.affine or self.track_running_stats else FLOAT_DTYPES  # (its state is float32)

    def built_parameter_count(self, args: dict[str, Any]) -> int | None:
        return 2 * args["num_features"] if self.affine else 0  # running stats are buffers

    def output_type(self, inputs: list[TensorType]) -> TensorType:
        if self.spatial_dims == 1:  # BatchNorm1d normalises (C,) feature vectors and (C, L) sequences
            x = require_rank(inputs, (1, 2), "(C,) or (C, L)")
        else:
            x = self.feature_map(inputs)
        return x.with_layout("channels_first")


BATCH_NORMS = spatial_family(BatchNormBase, "BatchNorm")
