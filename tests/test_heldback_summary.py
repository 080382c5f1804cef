"""Held-back cases of the summary and the diagram: counts of built models, table text, bad flags."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
import unicodedata

import pytest
import torch

import resgraph
from conftest import ROOT, needs_dot
from resgraph.diagram import instance_differences
from resgraph.summarize import format_bytes, format_count

RECURRENT = """\
resgraph: 1
name: Recurrent
inputs: {x: [6, 16]}
layers:
  - enc: {op: TransformerEncoderLayer, nhead: 2, dim_feedforward: 32, batch_first: true}
  - rnn: {op: LSTM, input_size: 16, hidden_size: 8, batch_first: true, output: 0}
"""


def test_an_uncurated_layers_macs_do_not_depend_on_where_or_how_the_model_runs() -> None:
    # On CPU torch runs an LSTM as one fused kernel and an eval-mode encoder layer on its fast path,
    # both invisible to FlopCounterMode: a built model's summary said 0 MACs where its spec's said more.
    lstm = 6 * 4 * 8 * (16 + 8)  # per step: four gates, each a product with the input and the hidden state
    expected = {row.name: row.macs for row in resgraph.summary(RECURRENT).rows}
    assert expected["rnn"] == lstm and expected["enc"] > 0
    model = resgraph.build(RECURRENT, seed=0)
    # (each converted in turn: a tuple of the three calls made them all before the first summary, so the
    # train-mode model was never summarised)
    for convert in (torch.nn.Module.train, torch.nn.Module.eval, torch.nn.Module.double):
        assert {row.name: row.macs for row in resgraph.summary(convert(model)).rows} == expected, convert.__name__
    assert next(model.parameters()).device == torch.device("cpu")  # measured on meta stand-ins: left where it was


class _Score(torch.nn.Module):
    """A layer whose product is a matrix-vector one (`aten.mv`), which FlopCounterMode does not count."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.mv(x, self.weight).unsqueeze(1)


@pytest.mark.parametrize("layer", ["{op: Bilinear, in1_features: 16, in2_features: 8, out_features: 4, input: [x, y]}",
                                   "{op: HeldbackScore, in_features: 16, input: x}"])
def test_an_uncurated_layer_whose_products_the_counter_cannot_see_has_unknown_macs(layer: str) -> None:
    # nn.Bilinear runs `_trilinear` (16 x 8 x 4 MACs a sample) and the layer above `mv`: FlopCounterMode
    # counts neither, so both showed 0 MACs, not flagged, and the totals read as whole.
    from resgraph.ops.generic import CUSTOM_OPS

    if "HeldbackScore" not in CUSTOM_OPS:
        resgraph.register_op("HeldbackScore", _Score)
    spec = (f"resgraph: 1\nname: M\ninputs: {{x: [16], y: [8]}}\nlayers:\n  - odd: {layer}\n"
            "  - fc: {op: Linear, out_features: 2}\n")
    for model in (resgraph.build(spec, seed=0), resgraph.build(spec, device="meta")):
        summary = resgraph.summary(model, columns="op,macs")
        rows = {row.name: row for row in summary.rows}
        assert rows["odd"].macs is None and rows["odd"].matmul_macs is None
        assert rows["fc"].macs == 2 * rows["odd"].shape[0]  # the layers around it are still counted
        assert summary.unmeasured == ["odd"] and summary.total_macs == rows["fc"].macs
        table = summary.table()
        assert re.search(r"^odd +\S.* +\?$", table, re.M)
        assert "; partial: unknown for odd" in table


def test_uncurated_layers_whose_products_the_counter_sees_stay_measured() -> None:
    # Pointwise ops, reductions, norms and data movement hold no product: a recurrent layer, an encoder
    # layer (its softmax is `_safe_softmax`) and a norm are measured, not unknown.
    summary = resgraph.summary(RECURRENT.replace("output: 0}", "output: 0}\n  - norm: {op: RMSNorm}"))
    assert summary.unmeasured == [] and {row.name: row.macs for row in summary.rows}["norm"] == 0


LISTS = """\
resgraph: 1
name: Lists
inputs: {x: [3, 8, 8]}
layers:
  - m: {op: mean, dim: [2, 3], input: x}
  - p: {op: permute, dims: [0, 3, 2, 1], input: x}
  - r: {op: reshape, shape: [3, 64]}
  - u: {op: Upsample, size: [4, 5], input: x}
  - parts: {op: chunk, chunks: 3, outputs: [p0, p1, p2]}
"""


def test_a_list_that_is_not_a_size_is_shown_as_a_list() -> None:
    # `dim: [2, 3]` was shown `dim=2x3` and `outputs: [p0, p1, p2]` `outputs=p0xp1xp2`: sizes that the spec never wrote.
    ops = {row.name: row.op for row in resgraph.summary(LISTS).rows}
    assert ops["m"] == "mean(x, dim=[2, 3])"
    assert ops["p"] == "permute(x, dims=[0, 3, 2, 1])"
    assert ops["p0"].startswith("chunk(u, outputs=[p0, p1, p2], chunks=3")
    assert (ops["r"], ops["u"]) == ("reshape(p, shape=3x64)", "Upsample(size=4x5)")  # sizes stay sizes


def test_the_table_lines_up_in_a_terminal_when_a_value_has_wide_or_combining_characters() -> None:
    # Widths were counted in characters: a CJK character takes two columns, a combining accent none,
    # so every column after a block parameter such as `tag: 残差` started one column off per character.
    spec = {"resgraph": 1, "name": "Net", "inputs": {"x": [3, 8, 8]},
            "blocks": {"unit": {"params": {"tag": "required"},
                                "layers": [{"c": {"op": "Conv2d", "out_channels": 3, "kernel_size": 1}}]}},
            "layers": [{"b": {"block": "unit", "repeat": 3,
                              "with": {"tag": "${['plain', '残差块', 'cafe\u0301'][index]}"}}}]}
    lines = resgraph.summary(spec).table().splitlines()

    def columns(text: str) -> int:  # terminal columns (what `wcwidth` counts, for these characters)
        return sum(0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) == "W" else 1
                   for ch in text)

    rows = [line for line in lines if "(N, " in line]
    assert any("残差块" in line for line in rows) and any("cafe\u0301" in line for line in rows)
    assert len({columns(line[:line.index("(N, ")]) for line in rows}) == 1  # the shapes start in one column
    assert len({columns(line) for line in rows}) == 1 and columns(rows[0]) == len(lines[1])  # as wide as the rules


@pytest.mark.parametrize(("flags", "message"), [
    (["--input", "x=3,32,32", "--input", "x=3,16,16"],
     "--input x=3,16,16: x's shape is already given by an earlier --input; give it once"),
    (["--set", "num_classes=5", "--set", "num_classes=7"],
     "--set num_classes=7: num_classes is already set by an earlier --set; give it once"),
])
def test_a_flag_given_twice_for_one_name_is_refused(flags: list[str], message: str) -> None:
    # The later value silently won: the summary showed 7 classes (or 16x16) with no word about the 5.
    result = subprocess.run([sys.executable, "-m", "resgraph", "build", "examples/resnet18.yaml", *flags],
                            capture_output=True, text=True, cwd=ROOT)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"resgraph: error: {message}\n"


def test_a_compiled_model_a_graph_and_a_foreign_module_given_to_summary_and_render() -> None:
    # summary(torch.compile(model)) said "a spec is a path, YAML text or a dict, not OptimizedModule"
    # (the model it wraps has a summary), render(check(spec)) "... not Graph" (summary takes one), and a
    # module resgraph did not build was answered as if it were a misspelt spec.
    spec = "examples/tutorial.yaml"
    model = resgraph.build(ROOT / spec, seed=0)
    assert resgraph.summary(torch.compile(model)).to_dict() == resgraph.summary(model).to_dict()
    assert resgraph.render(torch.compile(model)).source == resgraph.render(model).source
    assert resgraph.render(resgraph.check(ROOT / spec)).source == resgraph.render(ROOT / spec).source
    for call in (resgraph.summary, resgraph.render):
        with pytest.raises(resgraph.UsageError, match=r"takes a spec \(a path, YAML text or a dict\), a graph from "
                           r"resgraph.check or a model from resgraph.build, not Sequential"):
            call(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_a_module_that_adds_layers_around_a_built_model_is_not_summarised_as_that_model() -> None:
    # Any module with a `.module` that resgraph built was taken for DistributedDataParallel's wrapper:
    # a classifier holding a backbone as `module` and a head of its own was summarised as the backbone
    # alone, its totals short of the head's 11,000 parameters, silently.
    model = resgraph.build(ROOT / "examples/residual_mlp.yaml", seed=0)

    class Classifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = model
            self.head = torch.nn.Linear(10, 1000)

    for call in (resgraph.summary, resgraph.render):
        with pytest.raises(resgraph.UsageError, match=r"not Classifier, which holds one \(\.module\) and parameters "
                           r"or buffers of its own that no spec describes; pass the model itself \(\.module\)"):
            call(Classifier())

    class Wrapper(torch.nn.Module):  # DistributedDataParallel's shape: the model, nothing of its own
        def __init__(self) -> None:
            super().__init__()
            self.module = model

    assert resgraph.summary(Wrapper()).total_params == resgraph.summary(model).total_params


PROJECTIONS = """\
resgraph: 1
name: Proj
inputs: {x: [4, 15, 15]}
layers:
  - c1: {op: Conv2d, out_channels: 8, kernel_size: 3, stride: 2, padding: 1}
  - c2: {op: Conv2d, out_channels: 16, kernel_size: 3, stride: 2, padding: 1}
  - c3: {op: Conv2d, out_channels: 16, kernel_size: 3, padding: 1}
skips:
  - p1: {from: x, to: c2, projection: avgpool}
  - p4: {from: c1, to: c3, projection: pad}
"""


def test_a_projections_activation_memory_is_each_steps_own_output() -> None:
    # Every step was counted at the projected shape: an avgpool (ResNet-D) or a subsample keeps the
    # source's channels, so p1's AvgPool2d output (4, 4, 4) was counted as (16, 4, 4).
    rows = {row.name: row for row in resgraph.summary(PROJECTIONS).rows}
    out = 4 * 16 * 4 * 4  # the merged value, float32
    assert rows["p1"].activation_bytes == out + 4 * (4 * 4 * 4) + out + out  # AvgPool2d /4, Conv2d 1x1, BatchNorm2d
    assert rows["p4"].activation_bytes == out + 4 * (8 * 4 * 4) + out  # subsample /2, zero-pad channels
    model = resgraph.build(PROJECTIONS, seed=0)
    produced: list[int] = []  # the bytes each of p1's steps returns in a real forward of one sample
    for step in model.p1:
        step.register_forward_hook(lambda module, args, output: produced.append(output.numel() * 4))
    model(torch.randn(1, 4, 15, 15))
    assert rows["p1"].activation_bytes == out + sum(produced)


@needs_dot
def test_an_entity_in_a_spec_string_is_drawn_as_written() -> None:
    # Graphviz reads `&lt;` and `&amp;` in a label as the characters they name: a block parameter
    # `a &lt; b` was drawn `a < b`, and `&amp;` as `&`.
    spec = {"resgraph": 1, "name": "Net", "inputs": {"x": [3, 8, 8]},
            "blocks": {"unit": {"params": {"tag": "required"},
                                "layers": [{"c": {"op": "Conv2d", "out_channels": 3, "kernel_size": 1}}]}},
            "layers": [{"b": {"block": "unit", "repeat": 2, "with": {"tag": "${['a &lt; b &amp; c', 'R&D'][index]}"}}}]}
    svg = resgraph.render(spec).pipe(format="svg").decode()
    assert "b.0: unit(tag=a &amp;lt; b &amp;amp; c)" in svg  # the SVG text of what the spec wrote
    assert "b.1: unit(tag=R&amp;D)" in svg


@needs_dot
def test_a_refused_png_offers_only_flags_that_are_not_given_already(tmp_path: pathlib.Path) -> None:
    # The advice was fixed text: `--depth 2, or --depth 1`, `--rankdir LR` and `--dpi 48` to a user who had
    # given `--depth 1 --rankdir LR` (or `--dpi 48` itself), "even with repeated blocks folded" for a
    # spec with no repeats.
    out = tmp_path / "net.png"
    result = subprocess.run([sys.executable, "-m", "resgraph", "render", "examples/tutorial.yaml", "-o", str(out),
                             "--dpi", "100000", "--rankdir", "LR", "--depth", "1"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1 and not out.exists()
    message = result.stderr
    assert message.startswith(f"resgraph: error: cannot draw {out}: the diagram would be ")
    assert "more than cairo's limit of 32,767 pixels a side. Lower the resolution (--dpi " in message
    assert message.endswith(" or less), or write SVG or HTML, which have no size limit (-o net.svg)\n")
    for given in ("--depth", "--rankdir", "folded"):
        assert given not in message


@needs_dot
def test_a_refused_build_diagram_offers_flags_that_build_takes(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    # `build --diagram net.png` was offered render's flags as its own: --depth (build's sets the summary's
    # levels), --rankdir and --dpi (build has neither) and `-o net.svg` (build's -o is the model file).
    import resgraph.diagram
    from resgraph.cli import main

    monkeypatch.setattr(resgraph.diagram, "PNG_LIMIT_PIXELS", 300)
    monkeypatch.chdir(tmp_path)
    spec = str(ROOT / "examples/residual_mlp.yaml")
    assert main(["build", spec, "--depth", "1", "--diagram", "net.png", "--input", "x=784"]) == 1
    message = capsys.readouterr().err
    assert message.startswith("resgraph: error: cannot draw net.png: the diagram would be ")
    assert f". Draw it with resgraph render {spec} --input x=784, which can show fewer levels (--depth 2, or " \
           "--depth 1), lay it out sideways (--rankdir LR), or lower the resolution (--dpi " in message
    assert message.endswith(" or less), or write SVG or HTML, which have no size limit (--diagram net.svg)\n")
    assert not (tmp_path / "net.png").exists()


TWO_OUTPUTS = """\
resgraph: 1
name: Heads
inputs: {x: [4, 8, 8]}
blocks:
  detect:
    layers:
      - box: {op: Conv2d, out_channels: 6, kernel_size: 1, input: x}
      - cls: {op: Conv2d, out_channels: 3, kernel_size: 3, padding: 1, input: x}
    outputs: [box, cls]
layers:
  - head: {block: detect}
  - both: {op: concat, input: [head.box, head.cls]}
"""


def test_a_call_with_several_outputs_shows_every_outputs_shape() -> None:
    # The call's row (all a `--depth 1` summary shows of it) and its collapsed diagram node gave only
    # the first output's shape, (6, 8, 8): the (3, 8, 8) the call also returns was nowhere.
    model = resgraph.build(TWO_OUTPUTS, seed=0)
    returned: list[list[int]] = []
    model.head.register_forward_hook(lambda m, args, out: returned.extend(list(t.shape[1:]) for t in out))
    model(torch.randn(1, 4, 8, 8))
    assert returned == [[6, 8, 8], [3, 8, 8]]
    summary = resgraph.summary(model, depth=1)
    head = next(row for row in summary.rows if row.name == "head")
    assert head.output_shapes == returned and head.shape == returned[0]
    line = next(line for line in summary.table().splitlines() if line.startswith("head "))
    assert " (N, 6, 8, 8); (N, 3, 8, 8)  " in line and line.endswith(" 141")
    assert summary.to_dict()["rows"][1]["output_shapes"] == returned
    assert "(6, 8, 8); (3, 8, 8)" in resgraph.render(model, depth=1).source  # the collapsed node's label


def test_a_count_just_under_a_unit_is_shown_in_the_larger_unit() -> None:
    # 999,999 MACs were shown `1000.00K` and 1,048,575 bytes `1024.0 KiB`: the unit was chosen before rounding.
    spec = "resgraph: 1\nname: M\ninputs: {x: [1001]}\nlayers:\n  - fc: {op: Linear, out_features: 999, bias: false}\n"
    summary = resgraph.summary(spec, columns="macs,activation_memory")
    assert summary.total_macs == 999 * 1001 == 999_999
    assert "MACs per sample: 1.00M (" in summary.table() and "1000.00K" not in summary.table()
    assert (format_count(999_994), format_count(999_999_999), format_count(-999_999)) == ("999.99K", "1.00G", "-1.00M")
    assert (format_bytes(2**20 - 1), format_bytes(2**20 - 52), format_bytes(2**30 - 1)) == (
        "1.0 MiB", "1023.9 KiB", "1.0 GiB")


def test_a_null_where_a_number_belongs_is_named_once() -> None:
    # The value was shown by its kind and its repr: "got null None".
    spec = ("resgraph: 1\nname: S\ninputs: {x: [3, null, 4]}\n"
            "layers:\n  - c: {op: Conv2d, out_channels: 4, kernel_size: 3}\n")
    with pytest.raises(resgraph.SpecError) as exc:
        resgraph.check(spec)
    assert [d.message for d in exc.value.diagnostics] == [
        "input 'x': dim 1 of the shape: expected an integer >= 1, got null"]


def test_a_layer_that_cannot_run_on_meta_stand_ins_is_measured_where_it_lives(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A tensor kept as a plain attribute is not replaced by functional_call: on a built model it stays on
    # the CPU beside meta stand-ins (torch.cat refuses the mix), so the layer is counted where it lives
    # rather than left unknown.
    (tmp_path / "resgraph_plain_layers.py").write_text(
        "import torch\n\n"
        "class Mix(torch.nn.Module):\n"
        "    def __init__(self, features):\n"
        "        super().__init__()\n"
        "        self.weight = torch.nn.Parameter(torch.ones(features, features))\n"
        "        self.plain = torch.ones(features, features)\n\n"
        "    def forward(self, x):\n"
        "        return torch.cat([x @ self.weight, self.plain.expand(x.shape[0], -1, -1)], dim=1)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = ("resgraph: 1\nname: M\ninputs: {x: [3, 4]}\n"
            "layers:\n  - mix: {op: resgraph_plain_layers.Mix, features: 4}\n")
    model = resgraph.build(spec, allow_imports=["resgraph_plain_layers"], seed=0)
    row = next(row for row in resgraph.summary(model).rows if row.name == "mix")
    assert row.macs == 3 * 4 * 4 and resgraph.summary(model).unmeasured == []


TCN = """\
resgraph: 1
name: TCN
inputs: {x: [8, 64]}
blocks:
  tblock:
    layers:
      - conv: {op: Conv1d, out_channels: 8, kernel_size: 3, dilation: "${2 ** index}", padding: "${2 ** index}"}
      - fc:   {op: Linear, out_features: 64, tie: {weight: "${None if index == 0 else 'body.0.fc.weight'}"}}
      - act:  {op: ReLU}
    skips:
      - res: {from: x, to: act}
layers:
  - body: {block: tblock, repeat: 4}
"""


def test_a_folded_repeat_lists_arguments_and_ties_its_body_computes_from_index() -> None:
    # Only block parameters were compared: a TCN whose block computes `dilation: ${2 ** index}` folded to
    # "body: tblock ×4 (first shown)", hiding the dilations 2, 4, 8 and the three instances sharing fc's weight.
    model = resgraph.build(TCN, seed=0)
    assert [model.body[i].conv.dilation for i in range(4)] == [(1,), (2,), (4,), (8,)]
    assert all(model.body[i].fc.weight is model.body[0].fc.weight for i in range(4))
    heading = next(line for line in resgraph.render(TCN, fold_repeats=True).body if "label=\"body: tblock" in line)
    assert ("body: tblock ×4 (first shown)\nconv padding 1/2/4/8\nconv dilation 1/2/4/8\n"
            "fc tie -/weight=body.0.fc.weight/weight=body.0.fc.weight/weight=body.0.fc.weight\"") in heading
    # an argument that only follows a parameter already listed (ResNet's conv1 stride) is not repeated
    stage = resgraph.check(ROOT / "examples/resnet18.yaml").nodes["layer2"].instances
    assert not any(line.startswith("conv1 stride") for line in instance_differences(stage))


def test_a_folded_repeats_differing_argument_reads_as_the_summary_writes_it() -> None:
    # The folded box wrote a list that is not a size as one (`m dim 1x2/1x3`) where the summary's row says
    # `dim=[1, 2]`: both now show each argument by one rule (summarize.argument_text).
    spec = """\
resgraph: 1
name: D
inputs: {x: [4, 8, 8]}
blocks:
  unit:
    layers:
      - m: {op: mean, dim: [1, "${index + 2}"], keepdim: true}
layers:
  - body: {block: unit, repeat: 2}
"""
    rows = {row.name: row.op for row in resgraph.summary(spec).rows}
    assert (rows["body.0.m"], rows["body.1.m"]) == ("mean(x, dim=[1, 2], keepdim=True)",
                                                    "mean(x, dim=[1, 3], keepdim=True)")
    assert instance_differences(resgraph.check(spec).nodes["body"].instances)[-1] == "m dim [1, 2] | [1, 3]"


def test_a_name_with_a_letter_outside_ascii_is_refused_by_a_rule_it_breaks() -> None:
    # "names start with a letter and hold only letters, digits and '_'" refused `Modèle`, whose è is a letter.
    spec = "resgraph: 1\nname: Modèle\ninputs: {x: [3]}\nlayers:\n  - i: {op: Identity}\n"
    with pytest.raises(resgraph.SpecError) as exc:
        resgraph.check(spec)
    assert [d.message for d in exc.value.diagnostics] == [
        "name: invalid name 'Modèle': names start with an ASCII letter and hold only ASCII letters, digits and '_'"]


def test_an_uncurated_pools_kernel_is_spelled_out_over_its_dims_as_a_curated_ones() -> None:
    # The Kernel column gave MaxPool2d's kernel 2 as `2x2` but LPPool2d's as `2`, a 1-d kernel to the reader.
    spec = ("resgraph: 1\nname: K\ninputs: {x: [4, 16, 16]}\nlayers:\n"
            "  - mp: {op: MaxPool2d, kernel_size: 2}\n"
            "  - lp: {op: LPPool2d, norm_type: 2, kernel_size: 2}\n"
            "  - fm: {op: FractionalMaxPool2d, kernel_size: [2, 3], output_size: [2, 2]}\n")
    kernels = {row.name: row.kernel for row in resgraph.summary(spec).rows}
    assert (kernels["mp"], kernels["lp"], kernels["fm"]) == ("2x2", "2x2", "2x3")


def test_a_folded_repeat_lists_a_call_inside_that_differs_between_instances() -> None:
    # `inner: {block: unit, repeat: "${index + 1}"}` calls one, two, then three units: folded, only the
    # first outer instance was drawn, with nothing saying that the others hold more.
    spec = """\
resgraph: 1
name: Nest
inputs: {x: [8, 64]}
blocks:
  unit:
    layers:
      - conv: {op: Conv1d, out_channels: 8, kernel_size: 3, padding: 1}
  outer:
    layers:
      - inner: {block: unit, repeat: "${index + 1}"}
      - act: {op: ReLU}
layers:
  - body: {block: outer, repeat: 3}
"""
    assert [len(instance.nodes["inner"].instances) for instance in resgraph.check(spec).nodes["body"].instances] == [
        1, 2, 3]
    heading = next(line for line in resgraph.render(spec, fold_repeats=True).body if 'label="body: outer' in line)
    assert 'label="body: outer ×3 (first shown)\ninner: unit() ×1 | unit() ×2 | unit() ×3"' in heading
