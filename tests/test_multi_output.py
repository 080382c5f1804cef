"""Blocks with several named outputs (`call.out`) and repeats that keep every instance's output
(`collect: true`, `call.0`, `call.*`): shapes, generated code, the forward against hand-written
modules with the same weights, summaries, diagrams, exports, and the errors of bad references."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest
import torch
from torch import nn

import resgraph
from resgraph.graph import BlockNode

HEAD = "resgraph: 1\nname: T\n"

DETECT = HEAD + """blocks:
  detect:
    layers:
      - box1: {op: Conv2d, out_channels: 8, kernel_size: 3, padding: 1, input: x}
      - box: {op: Conv2d, out_channels: 4, kernel_size: 1}
      - cls1: {op: Conv2d, out_channels: 8, kernel_size: 3, padding: 1, input: x}
      - cls: {op: Conv2d, out_channels: 3, kernel_size: 1}
    outputs: [box, cls]
inputs: {x: [6, 8, 8]}
layers:
  - stem: {op: Conv2d, out_channels: 6, kernel_size: 1}
  - head: {block: detect}
  - both: {op: concat, input: [head.box, head.cls]}
  - boxes: {op: Flatten, input: head.box}
outputs: [both, boxes, head.cls]
"""


class Detect(nn.Module):
    """Ultralytics' Detect per level, as one would write it: a box and a class branch."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.box1, self.box = nn.Conv2d(c, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.cls1, self.cls = nn.Conv2d(c, 8, 3, padding=1), nn.Conv2d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.box(self.box1(x)), self.cls(self.cls1(x))


class DetectNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(6, 6, 1)
        self.head = Detect(6)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        box, cls = self.head(self.stem(x))
        return torch.cat([box, cls], 1), box.flatten(1), cls


def test_a_block_with_several_outputs_equals_a_hand_written_module() -> None:
    model = resgraph.build(DETECT)
    reference = DetectNet()
    reference.load_state_dict(model.state_dict())  # the same names: head.box.weight, ...
    x = torch.randn(2, 6, 8, 8)
    for ours, theirs in zip(model(x), reference(x), strict=True):
        torch.testing.assert_close(ours, theirs)
    assert [tuple(t.shape) for t in model(x)] == [(2, 7, 8, 8), (2, 256), (2, 3, 8, 8)]


def test_the_block_returns_a_tuple_that_the_caller_unpacks() -> None:
    model = resgraph.build(DETECT)
    assert "head_box, head_cls = self.head(stem)  # (N, 4, 8, 8), (N, 3, 8, 8)" in model.code
    assert "both = torch.cat([head_box, head_cls], dim=1)" in model.code
    assert "return both, boxes, head_cls" in model.code
    assert "return box, cls" in type(model.head).code
    x = torch.randn(1, 6, 8, 8)
    assert isinstance(model.head(x), tuple) and len(model.head(x)) == 2


def test_values_are_nodes_typed_from_the_instance_outputs() -> None:
    graph = resgraph.build(DETECT).graph
    head = graph.nodes["head"]
    assert isinstance(head, BlockNode) and head.values == ["head.box", "head.cls"]
    assert [graph.nodes[v].meta["type"].shape for v in head.values] == [(4, 8, 8), (3, 8, 8)]
    assert graph.nodes["both"].inputs == ["head.box", "head.cls"]
    assert graph.outputs == ["both", "boxes", "head.cls"]


def test_a_variable_never_takes_a_name_the_spec_uses() -> None:
    spec = DETECT.replace("  - boxes: {op: Flatten, input: head.box}", "  - head_box: {op: Flatten, input: head.box}")
    model = resgraph.build(spec.replace("outputs: [both, boxes, head.cls]", "outputs: [both, head_box]"))
    assert "head_box_, head_cls = self.head(stem)" in model.code
    assert "head_box = torch.flatten(head_box_" in model.code or "head_box = self.head_box(head_box_)" in model.code


def test_all_outputs_and_the_default_output() -> None:
    spliced = resgraph.build(DETECT.replace("outputs: [both, boxes, head.cls]", "outputs: [head.*]"))
    default = resgraph.build(DETECT.replace("  - both: {op: concat, input: [head.box, head.cls]}\n", "")
                             .replace("  - boxes: {op: Flatten, input: head.box}\n", "")
                             .replace("outputs: [both, boxes, head.cls]\n", ""))
    x = torch.randn(1, 6, 8, 8)
    for model in (spliced, default):  # a spec whose last layer has several outputs returns them all
        assert [tuple(t.shape) for t in model(x)] == [(1, 4, 8, 8), (1, 3, 8, 8)]
        assert model.code.rstrip().endswith("return head_box, head_cls")


def test_a_skip_reads_one_output_and_an_inner_calls_output_is_named_by_its_path() -> None:
    spec = HEAD + """blocks:
  two:
    layers:
      - a: {op: Linear, out_features: 4}
      - b: {op: Linear, out_features: 4, input: x}
    outputs: [a, b]
  outer:
    layers:
      - inner: {block: two}
      - mix: {op: mul, input: [inner.a, inner.b]}
    outputs: [mix, inner.b]
inputs: {x: [4]}
layers:
  - o: {block: outer}
  - fc: {op: Linear, out_features: 4, input: o.mix}
skips:
  - res: {from: o.inner.b, to: fc}
"""
    model = resgraph.build(spec)
    x = torch.randn(3, 4)
    inner = model.o.inner
    a, b = inner.a(x), inner.b(x)
    torch.testing.assert_close(model(x), model.fc(a * b) + b)
    assert "o_mix, o_inner_b = self.o(x)" in model.code


# --- collect: every instance's output of a repeat ------------------------------------------------

C2F = """resgraph: 1
name: C2fNet
blocks:
  conv:
    params: {c2: required, k: 1}
    layers:
      - conv: {op: Conv2d, out_channels: "${c2}", kernel_size: "${k}", padding: "${k // 2}", bias: false}
      - bn: {op: BatchNorm2d}
      - act: {op: SiLU}
  bottleneck:
    params: {shortcut: true}
    layers:
      - cv1: {block: conv, with: {c2: "${in_channels}", k: 3}}
      - cv2: {block: conv, with: {c2: "${in_channels}", k: 3}}
    skips:
      - add: {from: x, to: cv2, when: "${shortcut}"}
  c2f:
    params: {c2: required, n: 1, shortcut: false}
    layers:
      - cv1: {block: conv, with: {c2: "${c2}"}}
      - halves: {op: chunk, chunks: 2, outputs: [y0, y1]}
      - m: {block: bottleneck, repeat: "${n}", collect: true, input: y1, with: {shortcut: "${shortcut}"}}
      - cat: {op: concat, input: [y0, y1, m.*]}
      - cv2: {block: conv, with: {c2: "${c2}"}}
inputs: {x: [16, 8, 8]}
layers:
  - c2f: {block: c2f, with: {c2: 32, n: 3, shortcut: true}}
"""


class Conv(nn.Module):
    def __init__(self, c1: int, c2: int, k: int = 1) -> None:
        super().__init__()
        self.conv, self.bn, self.act = nn.Conv2d(c1, c2, k, padding=k // 2, bias=False), nn.BatchNorm2d(c2), nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool) -> None:
        super().__init__()
        self.cv1, self.cv2, self.add = Conv(c, c, 3), Conv(c, c, 3), shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """Ultralytics' C2f, as written there."""

    def __init__(self, c1: int, c2: int, n: int, shortcut: bool) -> None:
        super().__init__()
        self.c = c2 // 2
        self.cv1 = Conv(c1, 2 * self.c, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


def _randomise_norms(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)


def test_c2f_with_collect_equals_ultralytics_c2f() -> None:
    model = resgraph.build(C2F).eval()
    reference = C2f(16, 32, 3, True).eval()
    _randomise_norms(model)
    reference.load_state_dict({k.removeprefix("c2f."): v for k, v in model.state_dict().items()})
    x = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(model(x), reference(x))
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters())


def test_collect_writes_one_line_per_instance_and_no_copies() -> None:
    code = type(resgraph.build(C2F).c2f).code
    assert "m_0 = self.m[0](y1)" in code and "m_1 = self.m[1](m_0)" in code and "m_2 = self.m[2](m_1)" in code
    assert "cat = torch.cat([y0, y1, m_0, m_1, m_2], dim=1)" in code


def test_collect_follows_scale_depth_and_the_bare_name_is_the_last_instance() -> None:
    spec = C2F.replace("resgraph: 1\n", "resgraph: 1\nscale: {depth: 0.34, depth_rounding: nearest}\n")
    cv2 = "      - cv2: {block: conv, with: {c2: \"${c2}\"}}\n"
    spec = spec.replace(cv2, cv2 + "      - tail: {op: add, input: [cv2, cv2]}\n"
                                   "      - last: {op: Identity, input: m}\n    outputs: [tail, last]\n")
    call = "  - c2f: {block: c2f, with: {c2: 32, n: 3, shortcut: true}}"
    spec = spec.replace(call, call + "\n  - out: {op: Identity, input: c2f.last}")
    model = resgraph.build(spec)
    assert len(model.c2f.m) == 1  # round(3 * 0.34) = 1
    assert "cat = torch.cat([y0, y1, m_0], dim=1)" in type(model.c2f).code
    assert "last = self.last(m_0)" in type(model.c2f).code


def test_summary_and_diagram_show_each_value_at_its_instance() -> None:
    summary = resgraph.summary(C2F)
    names = [row.name for row in summary.rows]
    assert len(names) == len(set(names))  # a value is no row of its own
    cat = next(row for row in summary.rows if row.name == "c2f.cat")
    assert cat.connected_to == ["c2f.halves.y0", "c2f.halves.y1", "c2f.m.0", "c2f.m.1", "c2f.m.2"] or \
        cat.connected_to == ["c2f.y0", "c2f.y1", "c2f.m.0", "c2f.m.1", "c2f.m.2"]
    assert cat.input_shapes == [[16, 8, 8]] * 5
    source = resgraph.render(DETECT).source
    assert '"head.box" -> both' in source and '"head.cls" -> both' in source
    assert '"head.cls" -> "output/head.cls"' in source
    collapsed = resgraph.render(DETECT, depth=1).source
    assert collapsed.count("head -> both") == 2


def test_python_export_and_torch_export_agree(tmp_path: pathlib.Path) -> None:
    model = resgraph.build(DETECT, seed=0)
    path = tmp_path / "detect_export.py"
    path.write_text(resgraph.to_python(model))
    spec = importlib.util.spec_from_file_location("detect_export", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["detect_export"] = module
    try:
        spec.loader.exec_module(module)
        exported = module.T()
    finally:
        del sys.modules["detect_export"]
    exported.load_state_dict(model.state_dict())
    x = torch.randn(2, 6, 8, 8)
    program = torch.export.export(model, (x,))
    for ours, theirs, traced in zip(model(x), exported(x), program.module()(x), strict=True):
        torch.testing.assert_close(ours, theirs)
        torch.testing.assert_close(ours, traced)


# --- mistakes ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("layers", "message", "where"), [
    ("  - act: {op: ReLU, input: head}\n",
     "layer 'act': 'head' has 2 outputs (head.box, head.cls); say which it reads", (12, 28)),
    ("  - act: {op: ReLU, input: head.bxo}\n", "layer 'act': 'head' has no output 'bxo'; did you mean 'box'?",
     (12, 28)),
    ("  - act: {op: ReLU, input: x.a}\n", "layer 'act': 'x.a': 'x' has one value, read as 'x'", (12, 28)),
    ("  - act: {op: sub, input: [head.box, head.*]}\n", "layer 'act' (sub): takes 2 input(s), got 3 (2 written)",
     (12, 20)),
])
def test_bad_references_are_located_at_the_input(layers: str, message: str, where: tuple[int, int]) -> None:
    spec = HEAD + """blocks:
  detect:
    layers:
      - box: {op: Conv2d, out_channels: 4, kernel_size: 1, input: x}
      - cls: {op: Conv2d, out_channels: 4, kernel_size: 1, input: x}
    outputs: [box, cls]
inputs: {x: [6, 8, 8]}
layers:
  - head: {block: detect}
""" + layers
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(spec)
    (diagnostic,) = caught.value.diagnostics
    assert diagnostic.message == message
    assert (diagnostic.location.line, diagnostic.location.column) == where


def test_repeat_still_needs_one_output() -> None:
    spec = DETECT.replace("  - head: {block: detect}", "  - head: {block: detect, repeat: 2, collect: true}")
    with pytest.raises(resgraph.SpecError, match="repeat chains instances, so block 'detect' needs one input and "
                                                 "one output"):
        resgraph.check(spec)


def test_a_graph_built_by_hand_with_a_two_output_block_generates_the_unpacking() -> None:
    from resgraph.codegen import generate_forward
    from resgraph.graph import GraphBuilder
    from resgraph.shapes import infer_shapes
    from resgraph.spec import BlockCall

    inner = GraphBuilder("Two")
    inner.input("x")
    inner.layer("a", "ReLU")
    inner.layer("b", "Tanh", inputs="x")
    instance = inner.build(["a", "b"])
    instance.qualname = "pair."
    outer = GraphBuilder("Net")
    outer.input("x", [4])
    outer.block("pair", BlockCall(block="two"), [instance], values=["a", "b"])
    outer.layer("both", "mul", inputs=["pair.a", "pair.b"])
    graph = infer_shapes(outer.build())
    assert generate_forward(graph).splitlines()[1:] == [
        "    pair_a, pair_b = self.pair(x)  # (N, 4), (N, 4)",
        "    both = pair_a * pair_b  # (N, 4)",
        "    return both",
    ]


def test_onnx_export_of_several_outputs_and_a_collected_repeat(tmp_path: pathlib.Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    spec = C2F.replace("  - c2f: {block: c2f, with: {c2: 32, n: 3, shortcut: true}}\n",
                       "  - c2f: {block: c2f, with: {c2: 32, n: 3, shortcut: true}}\n"
                       "  - pair: {block: two}\n").replace("blocks:\n", """blocks:
  two:
    layers:
      - a: {op: ReLU}
      - b: {op: Tanh, input: x}
    outputs: [a, b]
""", 1)
    model = resgraph.build(spec, seed=0).eval()
    path = tmp_path / "c2f.onnx"
    resgraph.to_onnx(model, str(path))
    session = ort.InferenceSession(str(path))
    assert [o.name for o in session.get_outputs()] == ["pair_a", "pair_b"]
    x = torch.randn(2, 16, 8, 8)
    actual = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        for ours, theirs in zip(model(x), actual, strict=True):
            torch.testing.assert_close(torch.from_numpy(theirs), ours, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layer", ["{op: chunk, chunks: 2, outputs: [p, q]}",
                                   "{op: split, split_size: [2, 4], outputs: [p, q]}"])
def test_a_spec_whose_last_layer_is_a_chunk_or_split_returns_every_piece(layer: str) -> None:
    """As a spec whose last layer is a call with several outputs does; it returned the last piece alone."""
    spec = (f"resgraph: 1\nname: S\ninputs: {{x: [4]}}\nlayers:\n  - a: {{op: Linear, out_features: 6}}\n"
            f"  - parts: {layer}\n")
    model = resgraph.build(spec, seed=0)
    x = torch.randn(3, 4)
    pieces = model.a(x).chunk(2, dim=1) if "chunk" in layer else model.a(x).split([2, 4], dim=1)
    out = model(x)
    assert isinstance(out, tuple) and len(out) == 2
    for got, expected in zip(out, pieces, strict=True):
        torch.testing.assert_close(got, expected)


def test_a_block_whose_last_layer_is_a_chunk_names_its_outputs_and_the_hint_fixes_it() -> None:
    spec = ("resgraph: 1\nname: G\nblocks:\n  glu:\n    layers:\n      - a: {op: Linear, out_features: 6}\n"
            "      - parts: {op: chunk, chunks: 2, outputs: [value, gate]}\n"
            "inputs: {x: [4]}\nlayers:\n  - g: {block: glu}\n  - out: {op: mul, input: [g.value, g.gate]}\n")
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(spec)
    problem = caught.value.diagnostics[0]  # (the caller's reads of g.value and g.gate then fail too)
    assert "block 'glu': its last layer 'parts' has 2 outputs" in problem.message
    assert problem.hint == "list the block's outputs: outputs: [value, gate]"
    fixed = spec.replace("  glu:\n", "  glu:\n    outputs: [value, gate]\n")
    model = resgraph.build(fixed, seed=0)
    x = torch.randn(3, 4)
    value, gate = model.g.a(x).chunk(2, dim=1)
    torch.testing.assert_close(model(x), value * gate)
