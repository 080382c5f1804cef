"""The zoo written with the language-reach constructs: exact parameter counts, and outputs equal to a
hand-written reference module after `resgraph.load_weights` of the reference's own state_dict.

Each reference is written here, with torchvision's (or GPT-2's, Llama's) structure and module
names, so the weights load by the names and module order a real checkpoint would have. Every
reference tensor is randomised before loading (BatchNorm statistics and ConvNeXt's 1e-6 layer
scale included), so a tensor loaded into the wrong place cannot go unnoticed.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from test_attention import assert_causal
from torch import nn

import resgraph
from conftest import EXAMPLES

COUNTS = {"resnext50_32x4d": 25_028_904, "convnext_tiny": 28_589_128, "mobilenet_v3_large": 5_483_032}


def randomise(module: nn.Module, seed: int = 1) -> nn.Module:
    """Every float parameter and buffer of `module` set to random values (variances kept positive)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not tensor.is_floating_point():
                continue
            values = torch.randn(tensor.shape, generator=generator) * 0.1
            tensor.copy_(values.abs() + 0.5 if name.endswith("running_var") else values)
    return module


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_parameter_count_equals_the_reference(name: str) -> None:
    model = resgraph.build(EXAMPLES / f"{name}.yaml", device="meta")
    assert sum(p.numel() for p in model.parameters()) == COUNTS[name]


# --- ResNeXt-50 32x4d ---------------------------------------------------------------------------------------------

class Bottleneck(nn.Module):
    """torchvision's Bottleneck with groups and base width (ResNeXt), written out."""

    def __init__(self, inplanes: int, planes: int, stride: int, groups: int, base_width: int) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes * 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNeXt50(nn.Module):
    """torchvision's resnext50_32x4d, written out."""

    def __init__(self, groups: int = 32, width_per_group: int = 4, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for i, (planes, depth) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
            blocks = []
            for j in range(depth):
                blocks.append(Bottleneck(inplanes, planes, 2 if i and not j else 1, groups, width_per_group))
                inplanes = planes * 4
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def test_resnext50_equals_torchvisions_structure_with_its_weights() -> None:
    model = resgraph.build(EXAMPLES / "resnext50_32x4d.yaml", params={"image_size": 64}).eval()
    reference = randomise(ResNeXt50()).eval()
    mapping = resgraph.load_weights(model, reference.state_dict())
    assert all(how == "name" for _, _, how in mapping.pairs)  # torchvision's names, key for key
    model.load_state_dict(reference.state_dict(), strict=True)
    assert model.layer2[0].conv2.groups == 32 and model.layer2[0].conv2.out_channels == 256
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)


# --- ConvNeXt-T ---------------------------------------------------------------------------------------------------

def stochastic_depth(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """torchvision.ops.stochastic_depth in "row" mode, written out."""
    if not training or p == 0.0:
        return x
    noise = torch.empty([x.shape[0]] + [1] * (x.ndim - 1), dtype=x.dtype, device=x.device).bernoulli_(1.0 - p)
    return x * (noise.div_(1.0 - p) if p < 1.0 else noise)


class LayerNorm2d(nn.LayerNorm):
    """torchvision's LayerNorm2d: LayerNorm over the channels of an (N, C, H, W) map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Permute(nn.Module):
    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


class CNBlock(nn.Module):
    """torchvision's CNBlock, written out."""

    def __init__(self, dim: int, layer_scale: float, drop: float) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(dim, dim, 7, padding=3, groups=dim), Permute([0, 2, 3, 1]),
                                   nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, 4 * dim), nn.GELU(),
                                   nn.Linear(4 * dim, dim), Permute([0, 3, 1, 2]))
        self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1) * layer_scale)
        self.drop = drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return stochastic_depth(self.layer_scale * self.block(x), self.drop, self.training) + x


class ConvNeXtTiny(nn.Module):
    """torchvision's convnext_tiny, written out (stochastic_depth_prob 0.1 by default)."""

    def __init__(self, drop: float = 0.1, num_classes: int = 1000) -> None:
        super().__init__()
        dims, depths = (96, 192, 384, 768), (3, 3, 9, 3)
        layers: list[nn.Module] = [nn.Sequential(nn.Conv2d(3, 96, 4, 4), LayerNorm2d(96, eps=1e-6))]
        block_id, total = 0, sum(depths)
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            stage = []
            for _ in range(depth):
                stage.append(CNBlock(dim, 1e-6, drop * block_id / (total - 1.0)))
                block_id += 1
            layers.append(nn.Sequential(*stage))
            if i < 3:
                layers.append(nn.Sequential(LayerNorm2d(dim, eps=1e-6), nn.Conv2d(dim, dims[i + 1], 2, 2)))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(LayerNorm2d(768, eps=1e-6), nn.Flatten(1), nn.Linear(768, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(self.features(x)))


def test_convnext_layer_scale_starts_at_its_real_init() -> None:
    model = resgraph.build(EXAMPLES / "convnext_tiny.yaml", params={"image_size": 64}, seed=0)
    scale = model.stage3[4].layer_scale
    assert scale.shape == (384, 1, 1) and scale.requires_grad
    assert torch.equal(scale, torch.full((384, 1, 1), 1e-6))


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_convnext_tiny_equals_torchvisions_structure_with_its_weights(mode: str) -> None:
    """In training too: stochastic depth draws exactly what torchvision's does from the same seed."""
    model = resgraph.build(EXAMPLES / "convnext_tiny.yaml", params={"image_size": 64, "stochastic_depth": 0.5})
    reference = randomise(ConvNeXtTiny(drop=0.5))
    mapping = resgraph.load_weights(model, reference.state_dict())
    assert dict((ours, theirs) for ours, theirs, _ in mapping.pairs)["stage3.4.layer_scale"] == (
        "features.5.4.layer_scale")
    model.train(mode == "train")
    reference.train(mode == "train")
    x = torch.randn(8, 3, 64, 64)
    with torch.no_grad():
        torch.manual_seed(3)
        ours = model(x)
        torch.manual_seed(3)
        torch.testing.assert_close(ours, reference(x), rtol=1e-5, atol=1e-5)
        if mode == "train":  # some branches were dropped: training differs from inference
            assert not torch.allclose(ours, model.eval()(x), rtol=1e-3, atol=1e-3)


def test_stochastic_depth_drops_whole_samples_only_in_training() -> None:
    spec = """resgraph: 1
name: Dropped
inputs: {x: [4, 3, 3]}
layers:
  - branch: {op: stochastic_depth, p: 0.5}
  - batch:  {op: stochastic_depth, p: 0.5, mode: batch, input: x}
  - never:  {op: stochastic_depth, p: 0.0, input: x}
outputs: [branch, batch, never]
"""
    model = resgraph.build(spec)
    x = torch.rand(64, 4, 3, 3) + 1
    row, batch, never = model(x)
    kept = (row != 0).flatten(1)
    assert (kept.all(1) | (~kept).all(1)).all() and 10 < int(kept.all(1).sum()) < 54  # per sample, about half
    torch.testing.assert_close(row[kept.all(1)], 2 * x[kept.all(1)])  # kept samples scaled by 1 / (1 - p)
    assert torch.equal(batch, torch.zeros_like(x)) or torch.equal(batch, 2 * x)  # one draw for the batch
    assert never is x or torch.equal(never, x)
    model.eval()
    assert all(torch.equal(out, x) for out in model(x))
    with pytest.raises(resgraph.SpecError, match="p: must be at most 1, got number 1.5"):
        resgraph.check(spec.replace("p: 0.5}", "p: 1.5}"))


def test_mobilenet_v3_large_chooses_its_activation_and_gate_per_row() -> None:
    model = resgraph.build(EXAMPLES / "mobilenet_v3_large.yaml", params={"image_size": 64}, seed=0).eval()
    first, squeezed, hard = model.blocks[0], model.blocks[3], model.blocks[11]
    assert not hasattr(first, "expand") and hasattr(first, "depthwise_relu")  # expanded == input: no 1x1 expand
    assert squeezed.se_fc1.out_channels == 24 and hasattr(squeezed, "depthwise_relu")  # make_divisible(72 // 4, 8)
    assert hasattr(hard, "depthwise_hs") and hard.se_fc1.out_channels == 168 and "excite_hs" in type(hard).code
    assert model.stem_bn.eps == 0.001 and model.stem_bn.momentum == 0.01
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 1000)


# --- GPT-2 --------------------------------------------------------------------------------------------------------

# A small GPT-2, by the same spec (what `--set` gives); dropout 0.1 as HF's defaults, off in eval mode.
GPT2_SMALL = {"n_layer": 2, "n_embd": 64, "n_head": 4, "vocab_size": 128, "n_positions": 32, "seq_len": 16}


def gelu_new(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's activation (HF's NewGELUActivation), written out."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + causal mask) v on (B, H, T, d), written out (no sdpa)."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    future = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(-1) @ v


class GPT2Attention(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.c_attn = nn.Linear(d, 3 * d)  # HF's Conv1D holds the transpose of this weight
        self.c_proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (part.view(b, t, self.heads, d // self.heads).transpose(1, 2)
                   for part in self.c_attn(x).split(d, dim=2))
        return self.c_proj(causal_attention(q, k, v).transpose(1, 2).reshape(b, t, d))


class GPT2MLP(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(d, 4 * d)
        self.c_proj = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(gelu_new(self.c_fc(x)))


class GPT2Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d, eps=1e-5)
        self.attn = GPT2Attention(d, heads)
        self.ln_2 = nn.LayerNorm(d, eps=1e-5)
        self.mlp = GPT2MLP(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT2Model(nn.Module):
    """HF's GPT2Model (eval mode), with the LM head's logits (tied to wte) as a second output."""

    def __init__(self, vocab_size: int, n_positions: int, n_embd: int, n_layer: int, n_head: int, **_: int) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(n_positions, n_embd)
        self.h = nn.ModuleList(GPT2Block(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, eps=1e-5)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.wte(tokens) + self.wpe(torch.arange(tokens.shape[1]))
        for block in self.h:
            x = block(x)
        hidden = self.ln_f(x)
        return hidden, hidden @ self.wte.weight.T


def test_gpt2_small_has_gpt2models_count_and_ties_its_lm_head() -> None:
    model = resgraph.build(EXAMPLES / "gpt2.yaml", device="meta")
    assert sum(p.numel() for p in model.parameters()) == 124_439_808  # GPT2Model's: the tied head adds none
    assert model.lm_head.weight is model.wte.weight
    assert [name for name, _ in model.named_modules()].count("h.11.attn.c_attn") == 1


def test_gpt2_equals_a_hand_written_gpt2_with_the_same_weights() -> None:
    model = resgraph.build(EXAMPLES / "gpt2.yaml", params=GPT2_SMALL, seed=0).eval()
    reference = randomise(GPT2Model(**GPT2_SMALL)).eval()
    mapping = resgraph.load_weights(model, reference.state_dict())
    assert all(how == "name" for _, _, how in mapping.pairs)  # GPT2Model's names
    assert model.lm_head.weight is model.wte.weight and torch.equal(model.wte.weight, reference.wte.weight)
    tokens = torch.randint(0, 128, (3, 16))
    with torch.no_grad():
        hidden, logits = model(tokens)
        expected_hidden, expected_logits = reference(tokens)
        torch.testing.assert_close(hidden, expected_hidden, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-5)
        shorter = model(tokens[:, :9])  # any length up to n_positions: the positions follow the input
        torch.testing.assert_close(shorter[0], reference(tokens[:, :9])[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("output", [0, 1])
def test_gpt2_is_causal(output: int) -> None:
    """Token t's hidden state and logits do not depend on the tokens after t."""
    model = resgraph.build(EXAMPLES / "gpt2.yaml", params=GPT2_SMALL, seed=0).eval()
    assert_causal(lambda tokens: model(tokens)[output], torch.randint(0, 128, (2, 16)), 16)


# --- Llama --------------------------------------------------------------------------------------------------------

# The 7B spec at 2 layers and width 64 (what `--set` gives): 4 query heads, 2 key/value heads (grouped).
LLAMA_SMALL = {"n_layers": 2, "dim": 64, "n_heads": 4, "n_kv_heads": 2, "multiple_of": 32, "vocab_size": 128,
               "seq_len": 16}


class LlamaRMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class LlamaAttention(nn.Module):
    def __init__(self, d: int, heads: int, kv_heads: int, theta: float = 10000.0) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim, self.theta = heads, kv_heads, d // heads, theta
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, self.head_dim, 2).float() / self.head_dim))
        angles = torch.cat([torch.outer(torch.arange(t).float(), inv_freq)] * 2, dim=-1)  # (T, head_dim)
        q, k = (z * angles.cos() + rotate_half(z) * angles.sin() for z in (q, k))
        repeats = self.heads // self.kv_heads  # HF's repeat_kv
        k, v = k.repeat_interleave(repeats, dim=1), v.repeat_interleave(repeats, dim=1)
        return self.o_proj(causal_attention(q, k, v).transpose(1, 2).reshape(b, t, d))


class LlamaMLP(nn.Module):
    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d, hidden, bias=False)
        self.up_proj = nn.Linear(d, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    """HF's order of registration: self_attn, mlp, then the two norms."""

    def __init__(self, d: int, heads: int, kv_heads: int, hidden: int) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(d, heads, kv_heads)
        self.mlp = LlamaMLP(d, hidden)
        self.input_layernorm = LlamaRMSNorm(d)
        self.post_attention_layernorm = LlamaRMSNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, vocab_size: int, dim: int, n_layers: int, n_heads: int, n_kv_heads: int,
                 hidden: int) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab_size, dim)
        self.layers = nn.ModuleList(LlamaDecoderLayer(dim, n_heads, n_kv_heads, hidden) for _ in range(n_layers))
        self.norm = LlamaRMSNorm(dim)


class LlamaForCausalLM(nn.Module):
    """HF's LlamaForCausalLM, written out: `model.` holds the body, `lm_head` is untied."""

    def __init__(self, vocab_size: int, dim: int, n_layers: int, n_heads: int, n_kv_heads: int, hidden: int) -> None:
        super().__init__()
        self.model = LlamaModel(vocab_size, dim, n_layers, n_heads, n_kv_heads, hidden)
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.model.embed_tokens(tokens)
        for layer in self.model.layers:
            x = layer(x)
        return self.lm_head(self.model.norm(x))


def test_llama_7b_counts_exactly_on_the_meta_device() -> None:
    model = resgraph.build(EXAMPLES / "llama_7b.yaml", device="meta")
    assert sum(p.numel() for p in model.parameters()) == 6_738_415_616  # Llama 2 7B, untied embeddings
    layer = model.layers[31]
    assert layer.mlp.gate_proj.out_features == 11008 and layer.self_attn.k_proj.out_features == 4096
    assert layer.input_layernorm.weight.shape == (4096,) and all(p.is_meta for p in model.parameters())


@pytest.mark.parametrize("kv_heads", [4, 2], ids=["multi-head", "grouped-query"])
def test_llama_small_equals_a_hand_written_llama_with_the_same_weights(kv_heads: int) -> None:
    params = {**LLAMA_SMALL, "n_kv_heads": kv_heads}
    model = resgraph.build(EXAMPLES / "llama_7b.yaml", params=params, seed=0).eval()
    reference = randomise(LlamaForCausalLM(128, 64, 2, 4, kv_heads, hidden=192)).eval()  # 32 * ceil(170 / 32)
    mapping = resgraph.load_weights(model, reference.state_dict(), rename={"model": ""})
    assert all(how == "name" for _, _, how in mapping.pairs)  # HF's names under `model.`
    assert model.layers[1].self_attn.k_proj.out_features == 16 * kv_heads
    tokens = torch.randint(0, 128, (3, 16))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), reference(tokens), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model(tokens[:, :7]), reference(tokens[:, :7]), rtol=1e-5, atol=1e-5)


def test_llama_small_is_causal() -> None:
    model = resgraph.build(EXAMPLES / "llama_7b.yaml", params=LLAMA_SMALL, seed=0).eval()
    assert_causal(model, torch.randint(0, 128, (2, 16)), 16)


def peak_rss_kib(*command: str) -> int:
    """The peak resident memory (KiB, Linux) of `command` run in a fresh wrapper process, so that no
    other child of this test process counts."""
    wrapper = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    result = subprocess.run([sys.executable, "-c", wrapper, *command], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return int(result.stdout)


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux (bytes on macOS)")
def test_llama_7b_summary_on_meta_stays_within_300_mb_of_importing_torch() -> None:
    torch_only = peak_rss_kib(sys.executable, "-c", "import torch")
    summary = peak_rss_kib(sys.executable, "-m", "resgraph", "build", str(EXAMPLES / "llama_7b.yaml"), "--device",
                           "meta", "--depth", "1")
    assert summary - torch_only < 300 * 1024, (summary, torch_only)  # measured: about 115 MB more
