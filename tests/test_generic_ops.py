"""Uncurated and registered ops: what a spec may write for them, and that the batch stays dim 0.

Any torch.nn class without a curated model, a class registered with `resgraph.register_op`, or an
allowed `package.module.Class` import is checked by its signature and probed on the meta device.
These tests pin the rules: argument names and values that are safe to write back as Python,
construction arguments a spec may not set, lazy modules, batch-first sequence ops, ops that drop
or mix the batch, and one meta build per distinct configuration.
"""

from __future__ import annotations

import ast
import inspect
import itertools
import json
import math
import os
import subprocess
import sys
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn

import resgraph
from conftest import ROOT
from resgraph.ops import OPS, GenericLayer, TensorType
from resgraph.ops.generic import FIXED, REFUSED, SAMPLE_RANKS, torch_module_class, torch_module_names
from resgraph.ops.probe import PROBE_BATCH_SIZES, probe


def spec(layers: str, **inputs: Any) -> str:
    """A one-model spec with the given inputs (default `x: [4]`; a shape or {shape, dtype}) and layer lines."""
    declared = "".join(f"  {name}: {json.dumps(shape)}\n" for name, shape in (inputs or {"x": [4]}).items())
    return f"resgraph: 1\nname: G\ninputs:\n{declared}layers:\n{layers}"


def error_of(text: str, **kwargs: Any) -> resgraph.Diagnostic:
    """The single diagnostic `resgraph.check` reports for `text`."""
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(text, **kwargs)
    (diagnostic,) = caught.value.diagnostics
    return diagnostic


def position_of(text: str, needle: str) -> tuple[int, int]:
    """1-based (line, column) of the first occurrence of `needle` in `text`."""
    before = text[:text.index(needle)]
    return before.count("\n") + 1, len(before) - before.rfind("\n")


def assert_samples_independent(model: nn.Module, inputs: list[torch.Tensor], *, check_effect: bool = True) -> None:
    """Replace one sample at a time: every other sample's output must stay bit-identical.

    With `check_effect`, the replaced sample's own output must change (so the test can fail).
    """
    def run(values: list[torch.Tensor]) -> torch.Tensor:
        torch.manual_seed(0)  # random ops (fractional pooling, dropout) draw the same numbers each call
        with torch.no_grad():
            return model(*values)

    reference = run(inputs)
    batch = inputs[0].shape[0]
    assert reference.shape[0] == batch
    fresh = torch.Generator().manual_seed(1234)
    for j in range(batch):
        changed = [x.clone() for x in inputs]
        for x in changed:
            if x.is_floating_point():
                value = torch.randn(x[j].shape, generator=fresh)
                x[j] = value.sigmoid() if 0 <= x.min() and x.max() <= 1 else value  # probabilities stay so
            else:
                x[j] = (x[j] + 1) % 2  # indices stay valid for any table or class count
        out = run(changed)
        others = [i for i in range(batch) if i != j]
        torch.testing.assert_close(out[others], reference[others], rtol=0, atol=0, equal_nan=True,
                                   msg=lambda m, j=j: f"changing sample {j} changed other samples: {m}")
        if check_effect:
            assert not torch.equal(out[j], reference[j]), f"changing sample {j} did not change its own output"


def unique_op(name: str, cls: type) -> str:
    """Register `cls` under a name no other test uses (the registry is process-wide)."""
    if name not in resgraph.ops.generic.CUSTOM_OPS:
        resgraph.register_op(name, cls)
    assert resgraph.ops.generic.CUSTOM_OPS[name] is cls
    return name


# Registered classes used below; module-level so that the standalone export can import them.
class PassThrough(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class PaddedConv(nn.Module):
    """A reflection pad of 3 then a Conv1d of 7: the length passes through, from L = 4 (pad < L) on."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pad, self.conv = nn.ReflectionPad1d(3), nn.Conv1d(channels, channels, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pad(x))


class Keywords(nn.Module):
    """Takes any keyword argument and keeps it: the shape a spec key takes in generated code."""

    def __init__(self, in_features: int, **kwargs: Any) -> None:
        super().__init__()
        self.kwargs = kwargs
        self.scale = nn.Parameter(torch.ones(in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class Counted(nn.Module):
    """Counts its constructions (and where its weights were), to test the probe cache."""

    calls: list[str] = []

    def __init__(self, in_features: int, width: int = 2) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(width, in_features))
        Counted.calls.append(self.weight.device.type)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T


class Sequence(nn.Module):
    """A registered sequence layer with torch's batch_first convention."""

    def __init__(self, input_size: int, batch_first: bool = False) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.proj = nn.Linear(input_size, input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = x if self.batch_first else x.transpose(0, 1)
        mixed = self.proj(seq).cumsum(dim=1)  # each position sees the ones before it, within its sample
        return mixed if self.batch_first else mixed.transpose(0, 1)


class BatchSum(nn.Module):
    """Sums over the batch: one row for the whole batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=0, keepdim=True)


class BatchFlatten(nn.Module):
    """Flattens the batch into the features."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1)


class BatchSizedSlice(nn.Module):
    """Keeps as many features as there are samples: the shape depends on the batch size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, : x.shape[0]]


class HiddenLazy(nn.Module):
    """Uninitialised parameters without LazyModuleMixin."""

    def __init__(self, out_features: int) -> None:
        super().__init__()
        self.weight = nn.parameter.UninitializedParameter()
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class GrowsInForward(nn.Module):
    """Creates a parameter at its first call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not hasattr(self, "weight"):
            self.weight = nn.Parameter(torch.ones(x.shape[-1]))
        return x * self.weight


# --- batch first ----------------------------------------------------------------------------------

def _takes_batch_first(name: str) -> bool:
    from resgraph.ops.generic import _constructor_parameters

    return "batch_first" in _constructor_parameters(torch_module_class(name))[0]


BATCH_FIRST_CLASSES = [n for n in torch_module_names() if n not in OPS and _takes_batch_first(n)]

# Every class with a batch_first argument, configured to build from a (5, 8) sample.
SEQUENCE_OPS = {
    "RNN": "{op: RNN, hidden_size: 6, output: 0}",
    "LSTM": "{op: LSTM, hidden_size: 6, output: 0}",
    "GRU": "{op: GRU, hidden_size: 6, output: 0}",
    "TransformerEncoderLayer": "{op: TransformerEncoderLayer, nhead: 2, dim_feedforward: 16}",
    "TransformerDecoderLayer": "{op: TransformerDecoderLayer, nhead: 2, dim_feedforward: 16, input: [x, x]}",
    "Transformer": "{op: Transformer, nhead: 2, num_encoder_layers: 1, num_decoder_layers: 1, dim_feedforward: 16, "
                   "input: [x, x]}",
}


def test_the_audit_covers_every_torch_class_with_a_batch_first_argument() -> None:
    assert set(BATCH_FIRST_CLASSES) == set(SEQUENCE_OPS)
    assert {"RNN", "LSTM", "GRU", "Transformer", "TransformerEncoderLayer"} <= set(BATCH_FIRST_CLASSES)


@pytest.mark.parametrize("name", sorted(SEQUENCE_OPS))
def test_classes_that_take_batch_first_are_built_batch_first(name: str) -> None:
    text = spec(f"  - seq: {SEQUENCE_OPS[name]}\n", x=[5, 8])
    model = resgraph.build(text, seed=0)
    flags = [m.batch_first for m in model.seq.modules() if hasattr(m, "batch_first")]
    assert flags and all(flags)  # the layer itself and every sublayer (a Transformer's attention too)
    assert "batch_first=True" in resgraph.summary(model).table()  # the summary shows the convention
    assert "batch_first=True" in resgraph.to_python(model)  # and the export writes it
    assert model(torch.randn(3, 5, 8)).shape[:2] == (3, 5)


@pytest.mark.parametrize("value", ["false", "0", "1", "null", "'yes'"])
def test_batch_first_other_than_true_is_an_error_at_the_key(value: str) -> None:
    text = spec(f"  - lstm: {{op: LSTM, hidden_size: 6, batch_first: {value}, output: 0}}\n", x=[5, 8])
    diagnostic = error_of(text)
    assert (diagnostic.location.line, diagnostic.location.column) == position_of(text, "batch_first")
    assert "the batch is dim 0 in every resgraph model" in diagnostic.message
    assert "always built with batch_first=True" in diagnostic.message


def test_writing_batch_first_true_is_allowed() -> None:
    model = resgraph.build(spec("  - lstm: {op: LSTM, hidden_size: 6, batch_first: true, output: 0}\n", x=[5, 8]))
    assert model.lstm.batch_first


def test_a_registered_class_that_takes_batch_first_is_built_batch_first() -> None:
    op = unique_op("GenericTestSequence", Sequence)
    model = resgraph.build(spec(f"  - seq: {{op: {op}}}\n", x=[5, 8]), seed=0)
    assert model.seq.batch_first
    assert_samples_independent(model, [torch.randn(4, 5, 8)])


def test_input_size_is_inferred_for_recurrent_layers() -> None:
    model = resgraph.build(spec("  - gru: {op: GRU, hidden_size: 6, output: 0}\n  - pooled: {op: mean, dim: 1}\n"
                                "  - cell: {op: GRUCell, hidden_size: 3}\n", x=[5, 8]))
    assert model.gru.input_size == 8 and model.cell.input_size == 6


# Sample independence, per family: change one sample, the others' outputs must not move.
# Each entry: the layer, and its inputs (name: per-sample shape, or {shape, dtype}).
SEQ, SEQ2 = [5, 8], [7, 8]
FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "rnn": ("{op: RNN, hidden_size: 6, num_layers: 2, nonlinearity: relu, output: 0}", {"x": SEQ}),
    "rnn-bidirectional": ("{op: RNN, hidden_size: 6, bidirectional: true, output: 0}", {"x": SEQ}),
    "lstm": ("{op: LSTM, hidden_size: 6, num_layers: 2, output: 0}", {"x": SEQ}),
    "lstm-projected": ("{op: LSTM, hidden_size: 6, proj_size: 3, bidirectional: true, output: 0}", {"x": SEQ}),
    "gru": ("{op: GRU, hidden_size: 6, num_layers: 2, bidirectional: true, output: 0}", {"x": SEQ}),
    "rnn-cell": ("{op: RNNCell, hidden_size: 6}", {"x": [8]}),
    "rnn-cell-with-state": ("{op: RNNCell, hidden_size: 6, input: [x, h]}", {"x": [8], "h": [6]}),
    "lstm-cell": ("{op: LSTMCell, hidden_size: 6, output: 0}", {"x": [8]}),
    "gru-cell": ("{op: GRUCell, hidden_size: 6, input: [x, h]}", {"x": [8], "h": [6]}),
    "transformer-encoder-layer": ("{op: TransformerEncoderLayer, nhead: 2, dim_feedforward: 16}", {"x": SEQ}),
    "transformer-encoder-layer-norm-first": (
        "{op: TransformerEncoderLayer, nhead: 4, dim_feedforward: 16, norm_first: true, activation: gelu}", {"x": SEQ}),
    "transformer-decoder-layer": ("{op: TransformerDecoderLayer, nhead: 2, dim_feedforward: 16, input: [x, m]}",
                                  {"x": SEQ, "m": SEQ2}),
    "transformer": ("{op: Transformer, nhead: 2, num_encoder_layers: 2, num_decoder_layers: 1, dim_feedforward: 16, "
                    "input: [x, m]}", {"x": SEQ, "m": [3, 8]}),
    "multihead-attention": ("{op: MultiheadAttention, num_heads: 2}", {"x": SEQ}),
    "multihead-attention-cross": ("{op: MultiheadAttention, num_heads: 2, add_bias_kv: true, add_zero_attn: true, "
                                  "input: [x, k, v]}", {"x": SEQ, "k": [7, 6], "v": [7, 4]}),
    "softmax2d": ("{op: Softmax2d}", {"x": [3, 4, 5]}),
    "softmin": ("{op: Softmin, dim: -1}", {"x": SEQ}),
    "cosine-similarity": ("{op: CosineSimilarity, dim: -1, input: [x, y]}", {"x": SEQ, "y": SEQ}),
    "pairwise-distance": ("{op: PairwiseDistance, keepdim: true, input: [x, y]}", {"x": SEQ, "y": SEQ}),
    "glu": ("{op: GLU, dim: 1}", {"x": [6, 8]}),
    "embedding-bag": ("{op: EmbeddingBag, num_embeddings: 10, embedding_dim: 3, mode: max}",
                      {"x": {"shape": [5], "dtype": "int64"}}),
    "local-response-norm": ("{op: LocalResponseNorm, size: 2}", {"x": [4, 6]}),
    "channel-shuffle": ("{op: ChannelShuffle, groups: 2}", {"x": [4, 3, 3]}),
    "fractional-max-pool": ("{op: FractionalMaxPool2d, kernel_size: 2, output_size: 3}", {"x": [2, 6, 6]}),
    "unfold": ("{op: Unfold, kernel_size: 2}", {"x": [2, 4, 4]}),
    "rms-norm": ("{op: RMSNorm}", {"x": SEQ}),
    "loss-without-reduction": ("{op: SmoothL1Loss, reduction: none, input: [x, y]}", {"x": SEQ, "y": SEQ}),
    "cross-entropy-without-reduction": ("{op: CrossEntropyLoss, reduction: none, input: [x, t]}",
                                        {"x": [5], "t": {"shape": [], "dtype": "int64"}}),
}


def _family_spec(body: str, inputs: dict[str, Any]) -> tuple[str, list[torch.Tensor]]:
    """The spec of one family's layer, and a batch of 4 for each of its inputs."""
    text = spec(f"  - out: {body}\n", **inputs)
    values = []
    for declared in inputs.values():
        if isinstance(declared, dict):  # integer indices: embedding rows, class targets (< 5 here)
            values.append(torch.randint(0, 5, (4, *declared["shape"])))
        else:
            values.append(torch.randn(4, *declared))
    return text, values


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_no_sample_depends_on_another(family: str, mode: str) -> None:
    text, inputs = _family_spec(*FAMILIES[family])
    model = resgraph.build(text, seed=0)
    model.train(mode == "train")  # eval takes torch's fused fast paths (attention, transformer layers)
    assert_samples_independent(model, inputs)


def _forward_arity(cls: type) -> int:
    try:
        parameters = inspect.signature(cls.forward).parameters.values()
    except (TypeError, ValueError):
        return 1
    return max(1, sum(1 for p in parameters if p.name != "self" and p.default is p.empty
                      and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)))


# Arguments that make each uncurated class constructible; the audit tries every class on samples
# of 1 to 4 dims, with and without `reduction: none`.
AUDIT_ARGS: dict[str, str] = {
    "AdaptiveLogSoftmaxWithLoss": "n_classes: 10, cutoffs: [4]", "Bilinear": "in1_features: 6, in2_features: 6, "
    "out_features: 3", "ChannelShuffle": "groups: 2", "CrossMapLRN2d": "size: 2", "EmbeddingBag": "num_embeddings: "
    "10, embedding_dim: 3", "Fold": "output_size: [4, 4], kernel_size: 2", "FractionalMaxPool2d": "kernel_size: 2, "
    "output_size: 2", "FractionalMaxPool3d": "kernel_size: 2, output_size: 2", "GRU": "hidden_size: 3, output: 0",
    "GRUCell": "hidden_size: 3", "LPPool1d": "norm_type: 2, kernel_size: 2", "LPPool2d": "norm_type: 2, "
    "kernel_size: 2", "LPPool3d": "norm_type: 2, kernel_size: 2", "LSTM": "hidden_size: 3, output: 0", "LSTMCell":
    "hidden_size: 3, output: 0", "LinearCrossEntropyLoss": "num_classes: 3", "LocalResponseNorm": "size: 2",
    "MaxUnpool1d": "kernel_size: 2", "MaxUnpool2d": "kernel_size: 2", "MaxUnpool3d": "kernel_size: 2",
    "RNN": "hidden_size: 3, output: 0", "RNNCell": "hidden_size: 3", "Softmin": "dim: -1",
    "Threshold": "threshold: 0.1, value: 0.0", "Transformer":
    "nhead: 2, num_encoder_layers: 1, num_decoder_layers: 1, dim_feedforward: 8", "TransformerDecoderLayer":
    "nhead: 2, dim_feedforward: 8", "TransformerEncoderLayer": "nhead: 2, dim_feedforward: 8", "Unfold":
    "kernel_size: 2", "UpsamplingBilinear2d": "scale_factor: 2", "UpsamplingNearest2d": "scale_factor: 2",
    **{f"{kind}Pad{n}d": "padding: 1" for kind in ("Reflection", "Replication", "Circular", "Zero")
       for n in (1, 2, 3)},
    **{f"ConstantPad{n}d": "padding: 1, value: 0.5" for n in (1, 2, 3)},
}
UNCURATED = [n for n in torch_module_names() if n not in OPS]


@pytest.mark.parametrize("name", UNCURATED)
def test_every_uncurated_class_that_validates_keeps_samples_apart(name: str) -> None:
    """The audit: whatever validation accepts builds a model in which no sample reads another."""
    cls = torch_module_class(name)
    arity = _forward_arity(cls)
    takes_reduction = "reduction" in inspect.signature(cls.__init__).parameters
    accepted = 0
    for shape, reduction in itertools.product([[6], [4, 6], [2, 4, 6], [2, 2, 4, 6]],
                                              ["", ", reduction: none"] if takes_reduction else [""]):
        args = ", ".join(filter(None, [AUDIT_ARGS.get(name, ""), reduction.lstrip(", ")]))
        inputs = f", input: [{', '.join(f'x{i}' for i in range(arity))}]" if arity > 1 else ""
        text = spec(f"  - out: {{op: {name}{', ' if args else ''}{args}{inputs}}}\n",
                    **{f"x{i}" if arity > 1 else "x": shape for i in range(arity)})
        try:
            resgraph.check(text)
        except resgraph.SpecError:
            continue
        accepted += 1
        model = resgraph.build(text, seed=0).eval()
        values = [torch.rand(3, *shape) for _ in range(arity)]  # in [0, 1): valid for probability losses too
        assert_samples_independent(model, values, check_effect=False)
    if name in SEQUENCE_OPS or name in ("RNNCell", "GRUCell", "LSTMCell", "Softmin", "Threshold", "ZeroPad2d"):
        assert accepted, f"{name} should build in at least one configuration"


@pytest.mark.parametrize(("body", "shape", "needs"), [
    ("{op: LSTM, hidden_size: 6, output: 0}", [8], "torch.nn.LSTM reads (N, sequence, features) with the batch "
                                                   "first: each sample needs 2 dims (sequence, features), got (8,)"),
    ("{op: GRU, hidden_size: 6, output: 0}", [2, 5, 8], "each sample needs 2 dims (sequence, features), got (2, 5, 8)"),
    ("{op: TransformerEncoderLayer, nhead: 2}", [8], "torch.nn.TransformerEncoderLayer reads (N, sequence, "
                                                     "features)"),
    ("{op: RNNCell, hidden_size: 6}", [5, 8], "torch.nn.RNNCell reads (N, features) with the batch first: each "
                                              "sample needs 1 dim (features,), got (5, 8)"),
    ("{op: Softmax2d}", [4, 4], "torch.nn.Softmax2d reads (N, C, H, W) with the batch first: each sample needs "
                                "3 dims (C, H, W), got (4, 4)"),
])
def test_a_sample_of_the_unbatched_rank_is_refused(body: str, shape: list[int], needs: str) -> None:
    diagnostic = error_of(spec(f"  - seq: {body}\n", x=shape))
    assert needs in diagnostic.message and "mixing samples" in diagnostic.message


def test_sample_ranks_name_real_torch_classes() -> None:
    for name in SAMPLE_RANKS:
        assert isinstance(getattr(nn, name), type)


# --- ops that drop or mix the batch are caught by probing two batch sizes ---------------------------

@pytest.mark.parametrize(("body", "inputs", "key", "message"), [
    ("{op: CosineSimilarity, dim: 0, input: [x, y]}", {"x": [6], "y": [6]}, "dim",
     "CosineSimilarity(dim=0): dim=0 is the batch dimension"),
    ("{op: CosineSimilarity, dim: -3, input: [x, y]}", {"x": [2, 6], "y": [2, 6]}, "dim",
     "dim=-3 is the batch dimension"),
    ("{op: Softmin, dim: 0}", {"x": [6]}, "dim", "Softmin(dim=0): dim=0 is the batch dimension"),
    ("{op: Softmin, dim: -2}", {"x": [6]}, "dim", "dim=-2 is the batch dimension"),
    ("{op: GLU, dim: 0}", {"x": [6]}, "dim", "GLU(dim=0): dim=0 is the batch dimension"),
    ("{op: GLU, dim: -1}", {"x": []}, "dim", "the input has no dims besides the batch"),
    ("{op: GLU, dim: -2}", {"x": [4]}, "dim", "use dim=1 (or -1)"),
    ("{op: Softmin, dim: -4}", {"x": [2, 3, 4]}, "dim", "use a dim between 1 and 3 (or count from the end)"),
    ("{op: Softmin}", {"x": [4, 6]}, "op", "torch.nn.Softmin needs `dim` here"),
])
def test_a_dim_argument_that_names_the_batch_is_an_error_at_the_key(body: str, inputs: dict[str, list[int]],
                                                                   key: str, message: str) -> None:
    text = spec(f"  - out: {body}\n", **inputs)
    diagnostic = error_of(text)
    assert message in diagnostic.message
    anchor = f"{key}: " if key != "op" else "op: "
    assert (diagnostic.location.line, diagnostic.location.column) == position_of(text, anchor)


@pytest.mark.parametrize(("body", "inputs", "message"), [
    ("{op: MSELoss, input: [x, y]}", {"x": [6], "y": [6]},
     "torch.nn.MSELoss with reduction='mean' reduces the whole batch to one value"),
    ("{op: KLDivLoss, reduction: batchmean, log_target: true, input: [x, y]}", {"x": [6], "y": [6]},
     "torch.nn.KLDivLoss with reduction='batchmean' reduces the whole batch to one value"),
    ("{op: HuberLoss, reduction: sum, input: [x, y]}", {"x": [6], "y": [6]}, "set `reduction: none`"),
    ("{op: MSELoss, reduce: true, input: [x, y]}", {"x": [6], "y": [6]},
     "MSELoss(reduce=True) does not keep the batch as dim 0 (a batch of 2 gives (), a batch of 3 gives (), batch "
     "included)"),
    ("{op: PairwiseDistance, input: [x, y]}", {"x": [], "y": []}, "does not keep the batch as dim 0"),
    ("{op: GRU, hidden_size: 3, output: 1}", {"x": [5, 4]},
     "GRU(input_size=4, hidden_size=3, batch_first=True) does not keep the batch as dim 0 (a batch of 2 gives "
     "(1, 2, 3), a batch of 3 gives (1, 3, 3)"),
    ("{op: ConstantPad2d, padding: 1, value: 0.0}", {"x": [6]}, "a batch of 2 gives (4, 8), a batch of 3 gives (5, 8)"),
    ("{op: Unfold, kernel_size: 2}", {"x": [4, 6]}, "does not keep the batch as dim 0"),
    ("{op: RMSNorm, normalized_shape: [2, 6]}", {"x": [6]}, "accepts a batch of 2 but not of 3"),
])
def test_an_op_that_drops_or_mixes_the_batch_is_refused(body: str, inputs: dict[str, list[int]],
                                                        message: str) -> None:
    diagnostic = error_of(spec(f"  - out: {body}\n", **inputs))
    assert message in diagnostic.message
    assert diagnostic.message.startswith("layer 'out' (")


@pytest.mark.parametrize(("cls", "message"), [
    (BatchSum, "does not keep the batch as dim 0 (a batch of 2 gives (1, 4), a batch of 3 gives (1, 4)"),
    (BatchFlatten, "does not keep the batch as dim 0 (a batch of 2 gives (8,), a batch of 3 gives (12,)"),
    (BatchSizedSlice, "gives each sample a shape that depends on the batch size (a batch of 2 gives (2, 2), a "
                      "batch of 3 gives (3, 3)"),
])
def test_a_registered_op_that_drops_or_mixes_the_batch_is_refused(cls: type, message: str) -> None:
    op = unique_op(f"GenericTest{cls.__name__}", cls)
    diagnostic = error_of(spec(f"  - out: {{op: {op}}}\n"))
    assert message in diagnostic.message


def test_an_input_too_large_for_any_tensor_is_refused_at_the_layer_not_raised() -> None:
    # Shapes are arithmetic until a registered op is probed: 2^56 channels of 8x8 (2^62 elements, the
    # most shape inference admits) overflow the byte count even on the meta device (found by the
    # fuzz run at 10,000 examples, with 10^17 channels, now refused at the conv that makes them).
    op = unique_op("GenericTestPassThrough", PassThrough)
    diagnostic = error_of(spec("  - wide: {op: Conv2d, out_channels: 72057594037927936, kernel_size: 1}\n"
                               f"  - out: {{op: {op}}}\n", x=[2, 8, 8]))
    assert diagnostic.message.startswith("layer 'out' (")
    assert "is too large for any tensor" in diagnostic.message and "72057594037927936" in diagnostic.message


def test_probing_uses_two_different_batch_sizes() -> None:
    assert len(set(PROBE_BATCH_SIZES)) == 2
    seen = []

    class Recorder(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append((x.device.type, tuple(x.shape)))
            return x

    probe(Recorder, {}, (TensorType((4,)),))
    assert seen == [("meta", (batch, 4)) for batch in PROBE_BATCH_SIZES]


def test_an_op_without_a_meta_kernel_is_refused_with_the_reason() -> None:
    diagnostic = error_of(spec("  - out: {op: GaussianNLLLoss, reduction: none, input: [x, y, v]}\n", x=[6], y=[6],
                               v=[6]))
    assert "cannot be checked without allocating storage" in diagnostic.message


# --- argument names and values ---------------------------------------------------------------------

NOT_A_NAME = "is not an argument name: argument names are Python identifiers"
HOSTILE_NAMES = {"x); import os; os.system('id'); (y": NOT_A_NAME, "a-b": NOT_A_NAME, "a b": NOT_A_NAME,
                 "1abc": NOT_A_NAME, "ünïcode": NOT_A_NAME, "": NOT_A_NAME, "a\nb": NOT_A_NAME,
                 "a\x1b[31m": NOT_A_NAME, "x=1, y": NOT_A_NAME, "__import__('os')": NOT_A_NAME,
                 "class": "is a Python keyword", "lambda": "is a Python keyword", "None": "is a Python keyword",
                 "_private": "is private to the class", "__class__": "is private to the class"}


@pytest.mark.parametrize("name", sorted(HOSTILE_NAMES))
def test_argument_names_must_be_plain_identifiers(name: str) -> None:
    op = unique_op("GenericTestKeywords", Keywords)
    text = spec(f"  - k: {{op: {op}, {json.dumps(name)}: 1}}\n")  # YAML reads JSON's escapes
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.build(text)
    (diagnostic,) = caught.value.diagnostics
    assert f"{name!r} {HOSTILE_NAMES[name]}" in diagnostic.message
    assert diagnostic.location.line == 6 and diagnostic.location.column > position_of(text, "op:")[1]
    assert "\x1b" not in caught.value.format()  # control characters are escaped, never echoed


def test_a_hostile_name_never_reaches_generated_code_even_for_torch_classes() -> None:
    text = spec("  - act: {op: Softmin, dim: 1, \"x); import os; (y\": 1}\n")
    diagnostic = error_of(text)
    assert (diagnostic.location.line, diagnostic.location.column) == position_of(text, '"x); import')


@pytest.mark.parametrize(("value", "message"), [
    ("{left: 1}", "a mapping is not an argument value"),
    ("[1, {a: 2}]", "a mapping is not an argument value"),
    (".inf", "inf is not a finite number"),
    ("-.inf", "-inf is not a finite number"),
    (".nan", "nan is not a finite number"),
    ("[1.0, .nan]", "nan is not a finite number"),
    ("[[[[[[[[[[1]]]]]]]]]]", "lists nest deeper than 8 levels"),
])
def test_argument_values_must_be_plain_data(value: str, message: str) -> None:
    op = unique_op("GenericTestKeywords", Keywords)
    text = spec(f"  - k: {{op: {op}, extra: {value}}}\n")
    diagnostic = error_of(text)
    assert message in diagnostic.message
    assert (diagnostic.location.line, diagnostic.location.column) == position_of(text, "extra")


PLAIN_VALUES = {"text": "it's \"quoted\"\nand\ttabbed \\ ünï", "nested": [[1, 2], [3, [4.5, None]]],
                "flag": False, "nothing": None, "big": 2**62, "tiny": 1e-300, "negative": -0.0, "empty": []}


def test_plain_values_round_trip_through_the_standalone_export() -> None:
    op = unique_op("GenericTestKeywords", Keywords)
    model = resgraph.build({"resgraph": 1, "name": "Plain", "inputs": {"x": [4]},
                            "layers": [{"k": {"op": op, **PLAIN_VALUES}}]}, seed=0)
    source = resgraph.to_python(model)
    tree = ast.parse(source)
    assert all(isinstance(n, (ast.Expr, ast.Import, ast.ImportFrom, ast.ClassDef)) for n in tree.body)
    namespace: dict[str, Any] = {}
    exec(compile(tree, "<export>", "exec"), namespace)
    exported = namespace["Plain"]()
    expected = {k: _tuples(v) for k, v in PLAIN_VALUES.items()}
    assert exported.k.kwargs == expected == model.k.kwargs
    assert math.copysign(1, exported.k.kwargs["negative"]) == -1


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


# --- construction arguments a spec may not set, and lazy modules ------------------------------------

@pytest.mark.parametrize(("body", "key"), [
    ("{op: LSTM, hidden_size: 6, device: cpu, output: 0}", "device"),
    ("{op: LSTM, hidden_size: 6, device: meta, output: 0}", "device"),
    ("{op: Bilinear, in1_features: 8, in2_features: 8, out_features: 2, dtype: float64, input: [x, x]}", "dtype"),
    ("{op: GenericTestKeywords, device: cuda}", "device"),
    ("{op: GenericTestKeywords, memory_format: channels_last}", "memory_format"),
    ("{op: GenericTestKeywords, pin_memory: true}", "pin_memory"),
    ("{op: SyncBatchNorm, process_group: 0}", "process_group"),
])
def test_storage_arguments_are_refused_with_a_reason(body: str, key: str) -> None:
    unique_op("GenericTestKeywords", Keywords)
    text = spec(f"  - k: {body}\n", x=[5, 8])
    diagnostic = error_of(text)
    assert diagnostic.message.endswith(f"{key} may not be set in a spec: {REFUSED[key]}")
    assert (diagnostic.location.line, diagnostic.location.column) == position_of(text, f"{key}:")


@pytest.mark.parametrize(("body", "key"), [
    ("{op: EmbeddingBag, num_embeddings: 4, embedding_dim: 2, _weight: [1, 2]}", "_weight"),
    ("{op: FractionalMaxPool2d, kernel_size: 2, output_size: 2, _random_samples: [0.5]}", "_random_samples"),
])
def test_private_constructor_arguments_are_refused(body: str, key: str) -> None:
    text = spec(f"  - k: {body}\n", x=[2, 4, 4])
    diagnostic = error_of(text)
    assert f"{key!r} is private to the class" in diagnostic.message


def test_no_weight_is_allocated_before_the_parameter_limit() -> None:
    # 2**20 hidden units: 4 * 2**40 weights, far beyond this machine; only the meta probe may see them.
    text = spec("  - lstm: {op: LSTM, hidden_size: 1048576, output: 0}\n", x=[5, 8])
    with pytest.raises(resgraph.SpecError, match="more than the limit of 1,000"):
        resgraph.build(text, max_params=1000)
    assert resgraph.count_parameters(text) == 4 * 2**20 * (8 + 2**20 + 2)
    op = unique_op("GenericTestCounted", Counted)
    Counted.calls.clear()
    with pytest.raises(resgraph.SpecError, match="more than the limit of 10"):
        resgraph.build(spec(f"  - a: {{op: {op}, width: 7}}\n  - b: {{op: {op}, width: 7, input: x}}\n"), max_params=10)
    assert "cpu" not in Counted.calls  # probed on the meta device only; never constructed for real


def test_many_recurrent_layers_are_refused_before_building() -> None:
    diagnostic = error_of(spec("  - rnn: {op: RNN, hidden_size: 2, num_layers: 100000000, output: 0}\n", x=[5, 8]))
    assert "num_layers=100000000 is more than 1024 layers" in diagnostic.message


LAZY = [n for n in torch_module_names() if n.startswith("Lazy")]


@pytest.mark.parametrize("name", LAZY)
def test_lazy_modules_are_refused_naming_the_curated_alternative(name: str) -> None:
    alternative = getattr(nn, name).cls_to_become.__name__
    assert alternative in OPS
    args = {"Conv": ", out_channels: 4, kernel_size: 1", "Line": ", out_features: 2"}.get(name[4:8], "")
    text = spec(f"  - lazy: {{op: {name}{args}}}\n", x=[3, 4, 4])
    diagnostic = error_of(text)
    assert f"torch.nn.{name} creates its weights at its first call" in diagnostic.message
    assert f"use `op: {alternative}`" in diagnostic.message
    assert (diagnostic.location.line, diagnostic.location.column) == position_of(text, "op:")


@pytest.mark.parametrize(("cls", "message"), [
    (HiddenLazy, "creates its weights at its first call"),
    (GrowsInForward, "creates parameters when it is called"),
])
def test_registered_classes_with_late_parameters_are_refused(cls: type, message: str) -> None:
    op = unique_op(f"GenericTest{cls.__name__}", cls)
    body = f"{{op: {op}, out_features: 2}}" if cls is HiddenLazy else f"{{op: {op}}}"
    diagnostic = error_of(spec(f"  - late: {body}\n"))
    assert message in diagnostic.message


# --- one meta build per distinct configuration --------------------------------------------------------

def test_a_registered_op_used_a_hundred_times_is_probed_once_per_configuration() -> None:
    op = unique_op("GenericTestCounted", Counted)
    Counted.calls.clear()
    layers = "".join(f"  - l{i}: {{op: {op}, width: 5, input: x}}\n" for i in range(100))
    graph = resgraph.check(spec(layers + "  - out: {op: add, input: [l0, l99]}\n"))
    assert Counted.calls == ["meta"]
    assert all(graph.nodes[f"l{i}"].meta["params"] == 20 for i in range(100))
    mixed = "".join(f"  - l{i}: {{op: {op}, width: {3 + i % 2}, input: {'x' if i % 3 else 'y'}}}\n" for i in range(90))
    Counted.calls.clear()
    resgraph.check(spec(mixed, x=[4], y=[6]))
    assert len(Counted.calls) == 4  # two widths x two input types
    Counted.calls.clear()
    assert resgraph.count_parameters(spec(mixed, x=[4], y=[6])) == sum(
        (3 + i % 2) * (4 if i % 3 else 6) for i in range(90))
    assert Counted.calls == []  # known from the cache: no meta build of the whole model either


def test_the_cache_tells_equal_values_of_different_types_apart() -> None:
    class Remembers(nn.Module):
        seen: list[Any] = []

        def __init__(self, flag: Any = None) -> None:
            super().__init__()
            Remembers.seen.append(flag)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    for flag in (1, True, 1.0, (1,), (True,)) * 2:  # equal, and equal hashes, but different arguments
        probe(Remembers, {"flag": flag}, (TensorType((4,)),))
    assert [(type(f), f) for f in Remembers.seen] == [(int, 1), (bool, True), (float, 1.0), (tuple, (1,)),
                                                      (tuple, (True,))]
    assert type(Remembers.seen[-1][0]) is bool


def test_a_probe_matches_the_built_module() -> None:
    text = spec("  - lstm: {op: LSTM, hidden_size: 6, proj_size: 2, num_layers: 2, output: 0}\n", x=[5, 8])
    graph = resgraph.check(text)
    model = resgraph.build(text, seed=0)
    assert graph.nodes["lstm"].meta["params"] == sum(p.numel() for p in model.lstm.parameters())
    assert graph.nodes["lstm"].meta["type"].shape == tuple(model(torch.randn(2, 5, 8)).shape[1:]) == (5, 2)


# --- no traceback, through the CLI as well ---------------------------------------------------------

def test_the_cli_reports_generic_op_errors_without_a_traceback(tmp_path: Any) -> None:
    bad = {
        "hostile.yaml": spec("  - k: {op: Softmin, dim: 1, \"x); import os; (y\": 1}\n"),
        "device.yaml": spec("  - k: {op: LSTM, hidden_size: 6, device: cpu, output: 0}\n", x=[5, 8]),
        "lazy.yaml": spec("  - k: {op: LazyLinear, out_features: 2}\n"),
        "mapping.yaml": spec("  - k: {op: ZeroPad1d, padding: {left: 1}}\n", x=[2, 4]),
        "batch.yaml": spec("  - k: {op: CosineSimilarity, dim: 0, input: [x, x]}\n"),
        "rank.yaml": spec("  - k: {op: GRU, hidden_size: 6, output: 0}\n"),
        "unknown.yaml": spec("  - k: {op: LSTMM, hidden_size: 6}\n"),
    }
    paths = []
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
        paths.append(str(tmp_path / name))
    validate = subprocess.run([sys.executable, "-m", "resgraph", "validate", *paths], capture_output=True, text=True,
                              cwd=ROOT)
    # `build` takes one spec: run the CLI's entry point on each in one process (it starts slowly).
    script = "import sys; from resgraph.cli import main; print([main(['build', p]) for p in sys.argv[1:]])"
    build = subprocess.run([sys.executable, "-c", script, *paths], capture_output=True, text=True, cwd=ROOT)
    assert validate.returncode == 1 and build.returncode == 0, build.stderr
    assert build.stdout.strip() == str([1] * len(paths))
    for result in (validate, build):
        assert "Traceback" not in result.stderr + result.stdout
        reported = [line.split(":")[0] for line in result.stderr.splitlines() if ": error: " in line]
        assert reported == paths, result.stderr
        assert all(f"{path}:6:" in result.stderr for path in paths)


def test_a_failing_import_is_a_located_error(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "resgraph_broken_layers.py").write_text("raise RuntimeError('broken on import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    diagnostic = error_of(spec("  - k: {op: resgraph_broken_layers.Layer}\n"), allow_imports=["resgraph_broken_layers"])
    assert "cannot import 'resgraph_broken_layers.Layer': broken on import" in diagnostic.message


@pytest.mark.parametrize("pick", ["[0]", "{a: 0}", "true", "'0'", "0.0"])
def test_output_must_be_an_index(pick: str) -> None:
    text = spec(f"  - lstm: {{op: LSTM, hidden_size: 6, output: {pick}}}\n", x=[5, 8])
    diagnostic = error_of(text)
    assert "is not an index; write the position of the result to use" in diagnostic.message
    assert (diagnostic.location.line, diagnostic.location.column) == position_of(text, "output")


def test_classes_without_a_constructor_of_their_own_take_no_arguments() -> None:
    diagnostic = error_of(spec("  - k: {op: Softmax2d, dim: 1}\n", x=[3, 4, 4]))
    assert "torch.nn.Softmax2d has no argument 'dim'" in diagnostic.message


def test_fixed_conventions_are_listed_once() -> None:
    assert FIXED == {"batch_first": True}
    layer = GenericLayer.model_validate({"op": "GRU", "hidden_size": 3})
    assert layer.args() == {"hidden_size": 3, "batch_first": True}
    assert GenericLayer.model_validate({"op": "NoSuchLayer"}).args() == {}  # never raises


# --- properties over generated arguments ------------------------------------------------------------

FUZZ_EXAMPLES = int(os.environ.get("RESGRAPH_FUZZ_EXAMPLES", "100"))
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=FUZZ_EXAMPLES <= 100,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63), st.floats(allow_nan=True),
                    st.text(max_size=12))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=4), inner, max_size=3)),
                      max_leaves=12)
NAMES = st.one_of(st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True), st.text(max_size=12),
                  st.sampled_from(["class", "_weight", "device", "dtype", "self", "x); import os; (y", "in_features"]))


@FUZZ
@given(arguments=st.dictionaries(NAMES, VALUES, max_size=4))
def test_any_arguments_are_refused_with_a_location_or_round_trip_through_the_export(arguments: dict[str, Any]) -> None:
    op = unique_op("GenericTestKeywords", Keywords)
    body = {k: v for k, v in arguments.items() if k not in ("op", "input", "when", "scale", "output")}
    text = yaml.safe_dump({"resgraph": 1, "name": "Fuzz", "inputs": {"x": [4]},
                           "layers": [{"k": {"op": op, **body}}]}, sort_keys=False)
    try:
        model = resgraph.build(text, seed=0)
    except resgraph.SpecError as exc:
        assert all(d.location.line >= 1 for d in exc.diagnostics), exc.format()
        return
    source = resgraph.to_python(model)
    tree = ast.parse(source)
    assert all(isinstance(n, (ast.Expr, ast.Import, ast.ImportFrom, ast.ClassDef)) for n in tree.body)
    namespace: dict[str, Any] = {}
    exec(compile(tree, "<export>", "exec"), namespace)
    assert namespace["Fuzz"]().k.kwargs == model.k.kwargs


TORCH_ARGUMENT_VALUES = st.one_of(st.integers(-2, 6), st.sampled_from([0.0, 0.5, 1e-5, 2.0]), st.booleans(),
                                  st.none(), st.sampled_from(["none", "mean", "sum", "relu", "gelu", "max", "zeros"]),
                                  st.lists(st.integers(1, 3), min_size=1, max_size=3))


@FUZZ
@given(data=st.data())
def test_a_torch_class_that_validates_builds_and_runs_at_the_inferred_shape(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(UNCURATED)))
    from resgraph.ops.generic import _constructor_parameters

    parameters = sorted(_constructor_parameters(torch_module_class(name))[0])
    arguments = yaml.safe_load("{" + AUDIT_ARGS.get(name, "") + "}")  # a configuration that builds, then changes
    if "reduction" in parameters:
        arguments["reduction"] = "none"
    chosen = data.draw(st.lists(st.sampled_from(parameters), unique=True, max_size=3)) if parameters else []
    arguments.update({key: data.draw(TORCH_ARGUMENT_VALUES, label=key) for key in chosen})
    arity = _forward_arity(torch_module_class(name))
    shape = data.draw(st.sampled_from([[6], [4, 6], [2, 4, 6], [2, 2, 4, 6]]))
    layer = {"op": name, **arguments, **({"input": [f"x{i}" for i in range(arity)]} if arity > 1 else {})}
    text = yaml.safe_dump({"resgraph": 1, "name": "Fuzz", "inputs": {f"x{i}": shape for i in range(arity)},
                           "layers": [{"k": layer}]}, sort_keys=False)
    try:
        graph = resgraph.check(text)
    except resgraph.SpecError as exc:
        assert all(d.location.line >= 1 for d in exc.diagnostics), exc.format()
        return
    event("validated")
    model = resgraph.build(text, seed=0)  # validation passed: building must not fail
    try:
        with torch.no_grad():
            out = model.eval()(*[torch.rand(3, *shape) for _ in range(arity)])
    except (RuntimeError, ValueError, IndexError):
        return  # values torch rejects at run time (targets out of range...): not a shape question
    event("ran")
    assert tuple(out.shape) == (3, *graph.nodes["k"].meta["type"].shape)


# A value of another kind than the constructor's plain annotation: torch would build `bias="false"`
# with a bias (a non-empty string is true), `inplace: "no"` in place, `out_features: true` as 1.
WRONG_KINDS = {
    "a quoted false for a bool": ("Bilinear", "in1_features: 4, in2_features: 4, out_features: 2, bias: 'false', "
                                  "input: [x, x]", "bias", "takes true or false here, got \"false\" (write false "
                                  "without quotes)"),
    "a word for a bool": ("Threshold", "threshold: 0.1, value: 0.0, inplace: 'no'", "inplace",
                          "takes true or false here, got \"no\""),
    "a number for a bool": ("RReLU", "inplace: 1", "inplace", "takes true or false here, got 1"),
    "a bool for an int": ("ChannelShuffle", "groups: true", "groups", "takes an integer here, got true"),
    "a fraction for an int": ("GLU", "dim: 1.5", "dim", "takes an integer here, got 1.5"),
    "a string for a float": ("Hardshrink", "lambd: '0.5'", "lambd", "takes a number here, got \"0.5\""),
}


@pytest.mark.parametrize("case", WRONG_KINDS)
def test_an_uncurated_argument_of_another_kind_than_its_annotation_is_refused_at_its_key(case: str) -> None:
    op, arguments, key, said = WRONG_KINDS[case]
    text = spec(f"  - layer: {{op: {op}, {arguments}}}\n", x=[4, 4])
    diagnostic = error_of(text)
    assert (diagnostic.location.line, diagnostic.location.column) == position_of(text, key + ":")
    assert diagnostic.message.endswith(f"{key}: torch.nn.{op} {said}")


@pytest.mark.parametrize(("op", "arguments"), [("Bilinear", "in1_features: 4, in2_features: 4, out_features: 2, "
                                                "bias: false, input: [x, x]"),
                                               ("Threshold", "threshold: 1, value: 0"),  # ints where floats are
                                               ("RReLU", "lower: 0.1, upper: 0.3, inplace: false")])
def test_uncurated_arguments_of_their_annotated_kind_build_as_torch_does(op: str, arguments: str) -> None:
    model = resgraph.build(spec(f"  - layer: {{op: {op}, {arguments}}}\n", x=[4, 4]), seed=0)
    assert type(model.layer) is getattr(nn, op)
    if op == "Bilinear":
        assert model.layer.bias is None


@pytest.mark.parametrize(("layer", "reference", "least"), [
    ("{op: PaddedConv, channels: 4}", PaddedConv(4), 4),
    ("{op: ReflectionPad1d, padding: [5, -5]}", nn.ReflectionPad1d((5, -5)), 6),  # (5 mirrored in, 5 cut off)
    ("{op: ReplicationPad1d, padding: [3, -3]}", nn.ReplicationPad1d((3, -3)), 1),  # (torch replicates at 1)
    ("{op: PassThrough}", PassThrough(), 1),
], ids=["registered", "uncurated", "replicated", "no least size"])
def test_an_op_passing_a_size_through_admits_it_from_the_least_size_torch_runs(
        layer: str, reference: nn.Module, least: int) -> None:
    """Such an op keeps the size free (it was "any L"), from the least size it runs at: a reflection pad needs
    each side's padding below the length, so the guard and `resgraph sizes` said L = 1 runs where torch fails."""
    unique_op("PaddedConv", PaddedConv), unique_op("PassThrough", PassThrough)
    spec = f"resgraph: 1\nname: P\ninputs:\n  x: {{shape: [4, 16], layout: channels_first}}\nlayers:\n  - p: {layer}\n"
    model = resgraph.build(spec, seed=0)
    for length in range(1, 24):
        x = torch.randn(2, 4, length)
        assert (length >= least) == _runs(reference, x), length
        if length >= least:
            assert model(x).shape == (2, 4, length + reference(x).shape[-1] - length)
        else:
            with pytest.raises(ValueError, match=f"with L >= {least}"):
                model(x)
    described = "any L" if least == 1 else f"L >= {least}"
    assert [dim.rule.describe(dim.name) for dim in resgraph.valid_sizes(spec).dims if dim.free] == [described]


def _runs(module: nn.Module, x: torch.Tensor) -> bool:
    try:
        module(x)
    except RuntimeError:
        return False
    return True
