"""`resgraph.load_weights`: checkpoints of other implementations of the same architecture load, matched
by name where the names agree and by module order and shapes where they do not; ambiguous and
partial matches are refused with a report. The reference modules are written here by hand, with
torchvision's naming conventions."""

from __future__ import annotations

import logging
import pathlib
from collections import OrderedDict
from typing import Any

import pytest
import torch
from torch import nn

import resgraph
from conftest import EXAMPLES
from resgraph.weights import pair_units, units

SMALL_NET = """resgraph: 1
name: SmallNet
blocks:
  res:
    params: {planes: required, stride: 1}
    layers:
      - conv1: {op: Conv2d, out_channels: "${planes}", kernel_size: 3, stride: "${stride}", padding: 1, bias: false}
      - bn1:   {op: BatchNorm2d}
      - relu1: {op: ReLU}
      - conv2: {op: Conv2d, out_channels: "${planes}", kernel_size: 3, padding: 1, bias: false}
      - bn2:   {op: BatchNorm2d}
    skips:
      - downsample: {from: x, to: bn2}
inputs:
  x: [3, 16, 16]
layers:
  - stem:      {op: Conv2d, out_channels: 8, kernel_size: 3, padding: 1, bias: false}
  - stem_bn:   {op: BatchNorm2d}
  - stem_relu: {op: ReLU}
  - stage:     {block: res, repeat: 2, with: {planes: 16, stride: "${2 if index == 0 else 1}"}}
  - pool:      {op: AdaptiveAvgPool2d, output_size: 1}
  - flat:      {op: Flatten}
  - fc:        {op: Linear, out_features: 5}
"""


class ReferenceBlock(nn.Module):
    """The same block as another codebase writes it: other names, and the projection registered
    before the main path (as torchvision's RegNet does), not after it."""

    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.shortcut = (nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
                         if stride != 1 or inplanes != planes else None)
        self.conv_a = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.norm_a = nn.BatchNorm2d(planes)
        self.conv_b = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.norm_b = nn.BatchNorm2d(planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.norm_b(self.conv_b(torch.relu(self.norm_a(self.conv_a(x)))))
        return out + (x if self.shortcut is None else self.shortcut(x))


class Reference(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.blocks = nn.Sequential(ReferenceBlock(8, 16, 2), ReferenceBlock(16, 16, 1))
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.features(x)).mean(dim=(2, 3)))


def trained(module: nn.Module) -> nn.Module:
    """Random weights and running statistics everywhere, so that any mispairing shows in the outputs."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                variance = name.endswith("running_var")
                tensor.copy_(torch.rand_like(tensor) + 0.5 if variance else torch.randn_like(tensor))
    return module.eval()


def test_a_checkpoint_with_other_names_and_another_registration_order_loads() -> None:
    reference = trained(Reference())
    model = resgraph.build(SMALL_NET, seed=1).eval()
    mapping = resgraph.load_weights(model, reference.state_dict())
    assert mapping.complete and mapping.loaded
    pairs = mapping.as_dict()
    assert pairs["fc.weight"] == "fc.weight" and pairs["stem.weight"] == "features.0.weight"
    assert pairs["stage.0.bn1.weight"] == "blocks.0.norm_a.weight"  # not the projection's norm, registered first
    assert pairs["stage.0.downsample.1.running_var"] == "blocks.0.shortcut.1.running_var"
    assert pairs["stage.0.bn1.num_batches_tracked"] == "blocks.0.norm_a.num_batches_tracked"
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))


def test_a_conv_keeps_its_norm_where_pairing_norms_alone_would_swap_them() -> None:
    """Units: the first 16-channel norm of the model is its 3x3 conv's, in the checkpoint the projection's."""
    conv3, conv1, norm, stem = (((16, 8, 3, 3),), (True,)), (((16, 8, 1, 1),), (True,)), (((16,),), (True,)), \
        (((8, 3, 3, 3),), (True,))
    ours = [("stem", stem), ("a", conv3), ("a_norm", norm), ("p", conv1), ("p_norm", norm)]
    theirs = [("stem", stem), ("p", conv1), ("p_norm", norm), ("a", conv3), ("a_norm", norm)]
    assert units(ours) == [[0], [1, 2], [3, 4]]
    assert pair_units(ours, theirs) == ([(0, 0), (1, 3), (2, 4), (3, 1), (4, 2)], [])


def test_the_mapping_is_logged_and_returned(caplog: pytest.LogCaptureFixture) -> None:
    model = resgraph.build(SMALL_NET)
    with caplog.at_level(logging.INFO, logger="resgraph.weights"):
        mapping = resgraph.load_weights(model, trained(Reference()).state_dict())
    assert "stage.0.conv1.weight <- blocks.0.conv_a.weight" in caplog.text
    assert str(mapping).startswith(f"{len(mapping.pairs)} tensors matched: 2 by name,")


def test_ambiguous_and_partial_matches_are_refused_with_a_report() -> None:
    model = resgraph.build(SMALL_NET)
    extra = trained(Reference()).state_dict()
    extra.update({f"extra_norm.{k}": v.clone() for k, v in nn.BatchNorm2d(16).state_dict().items()})
    with pytest.raises(resgraph.WeightsError) as caught:
        resgraph.load_weights(model, extra)
    message = str(caught.value)
    # the extra norm joins the last conv's unit: that kind now differs in number, so none of it is guessed
    assert "1 ambiguous:\n  3 model unit(s) hold tensors (16, 16, 3, 3); (16,), (16,), (16,), (16,) but 2 " \
           "checkpoint unit(s) do: stage.0.conv2, stage.0.bn2 | stage.1.conv1, stage.1.bn1 |" in message
    assert "19 unexpected in the checkpoint:" in message and "  extra_norm.running_var" in message
    assert "<-" not in message  # the error lists problems; the full mapping is logged and returned
    before = model.fc.weight.clone()
    partial = {k: v for k, v in trained(Reference()).state_dict().items() if not k.startswith("fc.")}
    with pytest.raises(resgraph.WeightsError,
                       match=r"2 missing from the checkpoint:\n  fc.weight \(5, 16\)\n  fc.bias \(5,\)"):
        resgraph.load_weights(model, partial)
    assert torch.equal(model.fc.weight, before)  # a refused match loads nothing
    mapping = resgraph.load_weights(model, partial, strict=False)
    assert mapping.missing == ["fc.weight", "fc.bias"] and not mapping.complete
    assert torch.equal(model.fc.weight, before) and torch.equal(model.stem.weight, partial["features.0.weight"])


def test_rename_files_and_wrapped_checkpoints(tmp_path: pathlib.Path) -> None:
    reference = trained(Reference())
    prefixed = {f"backbone.{k}": v for k, v in reference.state_dict().items()}
    prefixed["backbone.unused"] = torch.zeros(3)
    path = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": prefixed, "epoch": 7}, path)
    model = resgraph.build(SMALL_NET).eval()
    mapping = resgraph.load_weights(model, path, rename={"backbone": "", "backbone.unused": None})
    assert mapping.complete and mapping.as_dict()["fc.bias"] == "fc.bias"
    renamed = resgraph.load_weights(model, prefixed, rename=lambda k: None if k.endswith("unused")
                                    else k.removeprefix("backbone."))
    assert renamed.pairs == mapping.pairs
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))
    with pytest.raises(resgraph.UsageError, match="no such file"):
        resgraph.load_weights(model, tmp_path / "missing.pt")
    with pytest.raises(resgraph.UsageError, match="not tensors: epoch"):
        resgraph.load_weights(model, {"fc.weight": torch.zeros(5, 16), "epoch": 7})


@pytest.mark.parametrize("checkpoint, rename, message", [
    ({0: torch.zeros(5, 16)}, None, r"its keys include 0 \(int\), not a name"),
    ("file", None, r"its keys include 0 \(int\), not a name"),  # the same, saved by torch.save
    ({"fc.weight": torch.zeros(5, 16)}, {"fc": 3}, "rename maps key prefixes to prefixes .*, not 'fc' to 3"),
    ({"fc.weight": torch.zeros(5, 16)}, {1: "fc"}, "not 1 to 'fc'"),
    ({"fc.weight": torch.zeros(5, 16)}, ["fc"], "rename is a mapping of key prefixes .* not a list"),
    ({"fc.weight": torch.zeros(5, 16)}, lambda key: 5, r"rename gave 5 \(int\) for checkpoint key 'fc.weight'"),
])
def test_a_checkpoint_or_rename_of_other_than_names_is_a_usage_error(checkpoint: Any, rename: Any, message: str,
                                                                      tmp_path: pathlib.Path) -> None:
    # (an AttributeError from inside: 'int' object has no attribute 'rpartition', or 'rstrip')
    if checkpoint == "file":
        checkpoint = tmp_path / "ints.pt"
        torch.save({0: torch.zeros(5, 16), 1: torch.zeros(5)}, checkpoint)
    with pytest.raises(resgraph.UsageError, match=message):
        resgraph.load_weights(resgraph.build(SMALL_NET), checkpoint, rename=rename)


def test_a_tied_checkpoint_loads_into_a_tied_model_once() -> None:
    spec = ("resgraph: 1\nname: Tied\ninputs:\n  tokens: {shape: [4], dtype: int64}\nlayers:\n"
            "  - embed: {op: Embedding, num_embeddings: 10, embedding_dim: 6}\n"
            "  - head: {op: Linear, out_features: 10, bias: false, tie: {weight: embed.weight}}\n")

    class TiedReference(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wte = nn.Embedding(10, 6)
            self.lm_head = nn.Linear(6, 10, bias=False)
            self.lm_head.weight = self.wte.weight

    reference = TiedReference()
    model = resgraph.build(spec)
    mapping = resgraph.load_weights(model, reference.state_dict())
    assert mapping.complete and mapping.pairs == [("embed.weight", "wte.weight", "order")]
    assert torch.equal(model.head.weight, reference.wte.weight) and model.head.weight is model.embed.weight


# --- torchvision's ViT, written out with its key names -------------------------------------------

class TorchvisionEncoderBlock(nn.Module):
    def __init__(self, hidden: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.dropout = nn.Dropout(0.0)
        self.ln_2 = nn.LayerNorm(hidden, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(hidden, mlp), nn.GELU(), nn.Dropout(0.0), nn.Linear(mlp, hidden),
                                 nn.Dropout(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        y = self.self_attention(y, y, y, need_weights=False)[0]
        x = x + self.dropout(y)
        return x + self.mlp(self.ln_2(x))


class TorchvisionViT(nn.Module):
    """torchvision.models.VisionTransformer's structure and state_dict keys, small."""

    def __init__(self, image: int, patch: int, hidden: int, heads: int, mlp: int, depth: int, classes: int) -> None:
        super().__init__()
        self.patch = patch
        self.conv_proj = nn.Conv2d(3, hidden, patch, patch)
        self.class_token = nn.Parameter(torch.zeros(1, 1, hidden))
        self.encoder = nn.Module()
        self.encoder.pos_embedding = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, hidden))
        self.encoder.layers = nn.Sequential(OrderedDict(
            (f"encoder_layer_{i}", TorchvisionEncoderBlock(hidden, heads, mlp)) for i in range(depth)))
        self.encoder.ln = nn.LayerNorm(hidden, eps=1e-6)
        self.heads = nn.Sequential(OrderedDict(head=nn.Linear(hidden, classes)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1) + self.encoder.pos_embedding
        x = self.encoder.ln(self.encoder.layers(x))
        return self.heads(x[:, 0])


def test_a_torchvision_vit_checkpoint_loads_into_the_vit_spec() -> None:
    size = {"image_size": 32, "patch": 16, "hidden": 32, "heads": 4, "mlp": 64, "depth": 2, "num_classes": 7}
    reference = trained(TorchvisionViT(32, 16, 32, 4, 64, 2, 7))
    model = resgraph.build(EXAMPLES / "vit_b_16.yaml", params=size).eval()
    mapping = resgraph.load_weights(model, reference.state_dict())
    assert mapping.complete
    pairs = mapping.as_dict()
    assert pairs["class_token"] == "class_token"  # same name and, with `batch: true`, the same (1, 1, D) shape
    assert pairs["pos_embedding"] == "encoder.pos_embedding"
    assert pairs["encoder.1.self_attention.in_proj_weight"] == "encoder.layers.encoder_layer_1.self_attention" \
                                                               ".in_proj_weight"
    assert pairs["head.weight"] == "heads.head.weight"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype, kind", [(torch.int64, "integer"), (torch.int32, "integer"), (torch.bool, "boolean"),
                                         (torch.complex64, "complex")])
@pytest.mark.parametrize("strict", [True, False])
def test_a_checkpoint_tensor_of_another_kind_of_number_is_refused_and_nothing_loaded(
        dtype: torch.dtype, kind: str, strict: bool, tmp_path: pathlib.Path) -> None:
    """An int64 (or bool, or complex) tensor was copied into a float32 weight, converted without a word."""
    model = resgraph.build(EXAMPLES / "residual_mlp.yaml", seed=0)
    before = {key: tensor.clone() for key, tensor in model.state_dict().items()}
    checkpoint = {key: torch.randn_like(tensor) for key, tensor in before.items()}
    checkpoint["fc2.bias"] = torch.ones(before["fc2.bias"].shape, dtype=dtype)
    path = tmp_path / "ckpt.pt"
    torch.save(checkpoint, path)
    for given, named in ((checkpoint, "the state_dict"), (path, str(path))):
        with pytest.raises(resgraph.WeightsError) as refused:
            resgraph.load_weights(model, given, strict=strict)
        assert str(refused.value) == (
            f"{named}: fc2.bias is {str(dtype).removeprefix('torch.')} ({kind}), and the model's fc2.bias is float32 "
            "(floating-point): copying would convert its values silently, so nothing was loaded. Give a floating-point "
            "tensor (another precision of one kind converts: float16, bfloat16 or float64 weights load into float32)")
        assert all(torch.equal(tensor, before[key]) for key, tensor in model.state_dict().items())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_a_checkpoint_of_another_floating_point_precision_loads_converted(dtype: torch.dtype) -> None:
    """The same weights at another precision (a float64 reference, a half-precision release) are the weights."""
    model = resgraph.build(EXAMPLES / "residual_mlp.yaml", seed=0)
    checkpoint = {key: torch.randn_like(tensor).to(dtype) for key, tensor in model.state_dict().items()}
    assert resgraph.load_weights(model, checkpoint).complete
    assert all(tensor.dtype == torch.float32 and torch.equal(tensor, checkpoint[key].float())
               for key, tensor in model.state_dict().items())


@pytest.mark.parametrize("dtype, kind", [(torch.float32, "floating-point"), (torch.bool, "boolean")])
def test_a_buffer_of_integers_refuses_another_kind_saying_what_it_takes(dtype: torch.dtype, kind: str) -> None:
    """BatchNorm's counter is int64: the fix offered was "a integer tensor", with float examples."""
    model = resgraph.build("resgraph: 1\nname: N\ninputs: {x: [4]}\nlayers:\n  - bn: {op: BatchNorm1d}\n")
    checkpoint = dict(model.state_dict(), **{"bn.num_batches_tracked": torch.tensor(3, dtype=dtype)})
    with pytest.raises(resgraph.WeightsError) as refused:
        resgraph.load_weights(model, checkpoint)
    assert str(refused.value) == (
        f"the state_dict: bn.num_batches_tracked is {str(dtype).removeprefix('torch.')} ({kind}), and the model's "
        "bn.num_batches_tracked is int64 (integer): copying would convert its values silently, so nothing was loaded. "
        "Give an integer tensor (another precision of one kind converts: int32 or uint8 values load into int64)")
    checkpoint["bn.num_batches_tracked"] = torch.tensor(3, dtype=torch.int32)
    assert resgraph.load_weights(model, checkpoint).complete and model.bn.num_batches_tracked.item() == 3
