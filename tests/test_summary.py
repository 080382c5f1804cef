"""The summary: `resgraph.summary(...)`, rows and totals, MACs against torch's FlopCounterMode, `build`'s table."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from typing import Any

import pytest
import torch
from test_ops import CASES, input_types
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import resgraph
from conftest import BUILDING_EXAMPLES, EXAMPLES, ROOT, small_params
from resgraph.macs import layer_macs
from resgraph.model import meta_module
from resgraph.ops import OPS, TensorType


def counted_flops(module: torch.nn.Module, *inputs: torch.Tensor) -> int:
    """FLOPs FlopCounterMode sees in one forward. Grad stays enabled and attention uses the math
    kernel: under no_grad, or with the fused CPU kernel, PyTorch's attention is invisible to it."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        module(*inputs)
    return counter.get_total_flops()


def sample_inputs(graph: Any) -> list[torch.Tensor]:
    tensors = []
    for name in graph.inputs:
        kind = graph.nodes[name].meta["type"]
        dtype = getattr(torch, kind.dtype)
        tensors.append(torch.randn(1, *kind.shape) if dtype.is_floating_point
                       else torch.zeros((1, *kind.shape), dtype=dtype))
    return tensors


# --- MACs -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("example", BUILDING_EXAMPLES)
def test_matmul_macs_equal_half_the_flops_torch_counts_on_a_real_forward(example: str) -> None:
    """2 x MACs = FLOPs, exactly, for convolutions, linear layers and attention in every example."""
    graph = resgraph.check(EXAMPLES / example, params=small_params(example))
    summary = resgraph.summary(graph)
    # A real forward on CPU tensors; the weights stay uninitialised because only shapes matter to the count.
    module = meta_module(graph).to_empty(device="cpu").eval()
    flops = counted_flops(module, *sample_inputs(graph))
    assert flops > 0 and 2 * summary.matmul_macs == flops
    assert summary.total_macs >= summary.matmul_macs


def test_a_built_model_counts_the_same_as_its_spec() -> None:
    model = resgraph.build(EXAMPLES / "tutorial.yaml", seed=0)
    assert 2 * resgraph.summary(model).matmul_macs == counted_flops(model, torch.randn(1, 3, 32, 32))


# Module ops, and the code ops FlopCounterMode sees (matrix products).
COUNTED_OPS = sorted(op for op in CASES if op in OPS and (not OPS[op].code_only
                                                         or op in ("matmul", "scaled_dot_product_attention")))


@pytest.mark.parametrize("op", COUNTED_OPS)
def test_every_module_op_formula_matches_flop_counter(op: str) -> None:
    """Per op: the formula's matmul part is what FlopCounterMode counts (0 for ops it ignores)."""
    for case in CASES[op]:
        args, shape, dtype = (*case, "float32")[:3]
        layer = OPS[op].model_validate({"op": op, **args})
        inputs = input_types(layer, shape, dtype)
        full = layer.module_args(inputs)
        macs = layer_macs(layer, full, inputs, layer.output_type(inputs))
        assert macs is not None
        tensors = [torch.randn(1, *t.shape) if dtype == "float32" else torch.zeros((1, *t.shape), dtype=torch.int64)
                   for t in inputs]
        names = [f"v{i}" for i in range(len(tensors))]
        owner = None if layer.code_only else layer.build(full).eval()
        expression = layer.code_with(names, "owner", full) if layer.code_only else layer.call("owner", names)

        def call(*values: torch.Tensor, expression: str = expression, owner: Any = owner,
                 names: list[str] = names) -> Any:
            # test-only: the code resgraph generates for this op
            return eval(expression, {"torch": torch, "owner": owner, **dict(zip(names, values))})

        assert 2 * macs.matmul == counted_flops(call, *tensors), (op, args)


@pytest.mark.parametrize(("op", "args", "shape", "expected"), [
    ("BatchNorm2d", {}, (3, 4, 4), 2 * 48),  # fvcore, inference: scale and shift per element
    ("BatchNorm2d", {"affine": False}, (3, 4, 4), 48),
    ("LayerNorm", {}, (4, 6), 5 * 24),  # fvcore norm_flop_counter: statistics + scale
    ("GroupNorm", {"num_groups": 2, "affine": False}, (4, 3, 3), 4 * 36),
    ("MaxPool2d", {"kernel_size": 2}, (3, 8, 8), 3 * 4 * 4 * 4),  # one per window element
    ("AdaptiveAvgPool2d", {"output_size": 1}, (3, 5, 5), 75),  # one per input element
    ("Upsample", {"scale_factor": 2}, (3, 4, 5), 3 * 8 * 10),  # nearest: one per output element
    ("Upsample", {"scale_factor": 2, "mode": "bilinear"}, (3, 4, 5), 4 * 3 * 8 * 10),
    ("ReLU", {}, (3, 4), 12),
    ("Dropout", {}, (3, 4), 0),
    ("Flatten", {}, (3, 4, 5), 0),
])
def test_cost_model_of_ops_flop_counter_ignores(op: str, args: dict[str, Any], shape: tuple[int, ...],
                                               expected: int) -> None:
    layer = OPS[op].model_validate({"op": op, **args})
    inputs = [TensorType(shape)]
    macs = layer_macs(layer, layer.module_args(inputs), inputs, layer.output_type(inputs))
    assert macs is not None and (macs.matmul, macs.other) == (0, expected)


def test_skip_merges_and_projections_are_counted() -> None:
    rows = {row.name: row for row in resgraph.summary(EXAMPLES / "tutorial.yaml").rows}
    # shortcut1: 1x1 conv 3->64 on 32x32 (matmul), BatchNorm (2 per element), the add (1 per element)
    elements = 64 * 32 * 32
    assert rows["shortcut1"].matmul_macs == elements * 3
    assert rows["shortcut1"].macs == elements * 3 + 2 * elements + elements


def test_uncurated_ops_are_measured() -> None:
    spec = ("resgraph: 1\nname: M\ninputs: {x: [6, 16]}\nlayers:\n"
            "  - enc: {op: TransformerEncoderLayer, nhead: 2, dim_feedforward: 32, batch_first: true}\n")
    row = next(r for r in resgraph.summary(spec).rows if r.name == "enc")
    module = torch.nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True)
    assert row.macs is not None and 2 * row.macs == counted_flops(module, torch.randn(1, 6, 16))


# --- rows, totals, depth ----------------------------------------------------------------------------

def test_rows_carry_shapes_kernel_parameters_macs_memory_and_connections() -> None:
    rows = {row.name: row for row in resgraph.summary(EXAMPLES / "tutorial.yaml").rows}
    conv = rows["res1_conv1"]
    assert conv.input_shapes == [[3, 32, 32]] and conv.shape == [64, 32, 32] and conv.kernel == "3x3"
    assert conv.params == conv.trainable_params == 64 * 3 * 9 + 64
    assert conv.macs == conv.matmul_macs == 64 * 32 * 32 * 3 * 9  # the bias add is not a MAC
    assert conv.param_bytes == 4 * conv.params and conv.activation_bytes == 4 * 64 * 32 * 32
    assert conv.connected_to == ["x"]
    assert rows["shortcut1"].connected_to == ["res1_conv2", "x"]  # the target, then the source
    assert rows["relu"].connected_to == ["shortcut1"]  # later layers read the merged value
    assert rows["shortcut1"].input_shapes == [[64, 32, 32], [3, 32, 32]] and rows["shortcut1"].kernel == "1x1"


@pytest.mark.parametrize(("dims", "kernel"), [(1, "1"), (3, "1x1x1")])
def test_a_projection_conv_kernel_is_spelled_over_its_own_spatial_dims(dims: int, kernel: str) -> None:
    spatial = [8] * dims
    spec = (f"resgraph: 1\nname: P\ninputs:\n  x: {[3, *spatial]}\nlayers:\n"
            f"  - c: {{op: Conv{dims}d, out_channels: 6, kernel_size: 3, padding: 1}}\n"
            "skips:\n  - s: {from: x, to: c}\n")
    rows = {row.name: row for row in resgraph.summary(spec).rows}
    assert rows["c"].kernel == "x".join(["3"] * dims) and rows["s"].kernel == kernel
    assert rows["s"].projection is not None and rows["s"].projection.steps.startswith(f"Conv{dims}d {kernel} ")


def test_block_instances_connect_to_what_feeds_them() -> None:
    rows = {row.name: row for row in resgraph.summary(EXAMPLES / "resnet18.yaml").rows}
    assert rows["layer1"].connected_to == ["maxpool"]
    assert rows["layer1.0"].connected_to == ["maxpool"] and rows["layer1.1"].connected_to == ["layer1.0"]
    assert rows["layer1.0.conv1"].connected_to == ["maxpool"]  # the instance's input is the caller's value
    assert rows["layer2.0.downsample"].connected_to == ["layer2.0.bn2", "layer1"]
    assert rows["avgpool"].connected_to == ["layer4"]
    # a block's and an instance's MACs and activations are their contents'
    inner = [r for name, r in rows.items() if name.startswith("layer1.0.")]
    assert rows["layer1.0"].macs == sum(r.macs for r in inner)
    assert rows["layer1"].macs == rows["layer1.0"].macs + rows["layer1.1"].macs
    assert rows["layer1"].activation_bytes == sum(r.activation_bytes for r in inner) * 2


def test_totals_and_projections_never_depend_on_the_depth_shown() -> None:
    summaries = [resgraph.summary(EXAMPLES / "resnet18.yaml", depth=depth) for depth in (1, 2, 3)]
    assert [len(s.rows) for s in summaries] == [12, 20, 76]  # stages, then instances, then their layers
    for s in summaries:
        assert s.projections == ["layer2.0.downsample", "layer3.0.downsample", "layer4.0.downsample"]
        assert (s.total_params, s.total_macs, s.activation_bytes) == (
            summaries[-1].total_params, summaries[-1].total_macs, summaries[-1].activation_bytes)
    assert summaries[-1].total_params == 11_689_512
    with pytest.raises(resgraph.UsageError, match="depth counts module levels from 1"):
        resgraph.summary(EXAMPLES / "resnet18.yaml", depth=0)
    assert summaries[0].total_macs == sum(r.macs for r in summaries[0].rows if r.kind != "input")


def test_memory_totals() -> None:
    s = resgraph.summary(EXAMPLES / "resnet18.yaml")
    assert s.param_bytes == 4 * 11_689_512
    model = resgraph.build(EXAMPLES / "resnet18.yaml")
    assert s.buffer_bytes == sum(b.numel() * b.element_size() for b in model.buffers())
    assert s.input_bytes == 4 * 3 * 224 * 224
    assert s.activation_bytes == sum(r.activation_bytes for r in s.rows if r.kind in ("layer", "skip"))


def test_spec_graph_and_model_give_the_same_summary() -> None:
    path = EXAMPLES / "dag.yaml"
    from_spec = resgraph.summary(path).to_dict()
    from_graph = resgraph.summary(resgraph.check(path)).to_dict()
    from_model = resgraph.summary(resgraph.build(path)).to_dict()
    assert from_spec == from_graph == from_model


def test_a_spec_is_summarised_without_allocating_weights() -> None:
    huge = "resgraph: 1\nname: Huge\ninputs: {x: [200000]}\nlayers:\n  - fc: {op: Linear, out_features: 200000}\n"
    s = resgraph.summary(huge)  # 40 billion parameters: 160 GB if they were allocated
    assert s.total_params == 200_000 * 200_001 and s.param_bytes == 4 * s.total_params


def test_frozen_parameters_are_not_trainable() -> None:
    model = resgraph.build(EXAMPLES / "tutorial.yaml")
    model.res1_conv1.requires_grad_(False)
    s = resgraph.summary(model)
    assert s.total_params - s.trainable_params == 1_792
    row = next(r for r in s.rows if r.name == "res1_conv1")
    assert (row.params, row.trainable_params) == (1_792, 0)


def test_outputs_are_the_specs_names() -> None:
    assert resgraph.summary(EXAMPLES / "tutorial.yaml").outputs == ["res2_conv2"]  # not the skip 'shortcut2'


def test_columns_are_chosen_and_unknown_ones_refused() -> None:
    s = resgraph.summary(EXAMPLES / "tutorial.yaml", columns="default,macs,kernel")
    header = s.table().splitlines()[2]
    assert re.split(r"\s{2,}", header) == ["Layer", "Op", "Output shape", "Params", "MACs", "Kernel"]
    assert "1.77M" in s.table()
    with pytest.raises(resgraph.UsageError, match="did you mean 'macs'"):
        resgraph.summary(EXAMPLES / "tutorial.yaml", columns=["mac"])


# --- the command line -------------------------------------------------------------------------------

def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "resgraph", *args], capture_output=True, text=True, cwd=ROOT)


def test_the_readme_summaries_are_what_build_prints() -> None:
    readme = (ROOT / "README.md").read_text()
    shown = re.findall(r"```console\n\$ resgraph (build examples/[a-z0-9_]+\.yaml.*?)\n(.*?)```", readme, re.DOTALL)
    summaries = [(command, output) for command, output in shown if "Total params" in output]
    assert len(summaries) == 2  # the tutorial's, and ResNet-18's with --columns
    for command, output in summaries:
        result = cli(*command.split())
        assert result.returncode == 0 and result.stdout == output, command


def test_build_json_at_depth_one_keeps_whole_model_totals() -> None:
    result = cli("build", "examples/resnet18.yaml", "--depth", "1", "--json")
    data = json.loads(result.stdout)
    assert data["projections"] == ["layer2.0.downsample", "layer3.0.downsample", "layer4.0.downsample"]
    assert "Projections inserted" not in result.stdout and data["total_params"] == 11_689_512
    assert [row["name"] for row in data["rows"]][-3:] == ["avgpool", "flatten", "fc"] and len(data["rows"]) == 12
    assert data["outputs"] == ["fc"] and math.isclose(data["total_macs"], 1.8239e9, rel_tol=1e-3)
    fc = data["rows"][-1]
    assert fc["connected_to"] == ["flatten"] and fc["macs"] == 512 * 1000 and fc["input_shapes"] == [[512]]


def test_build_columns_flag() -> None:
    result = cli("build", "examples/tutorial.yaml", "--depth", "1", "--columns", "macs,connected_to")
    assert result.returncode == 0
    assert re.split(r"\s{2,}", result.stdout.splitlines()[2]) == ["Layer", "MACs", "Connected to"]
    bad = cli("build", "examples/tutorial.yaml", "--columns", "ops")
    assert bad.returncode == 2 and "did you mean 'op'" in bad.stderr


def test_spec_strings_cannot_start_a_line_of_the_table() -> None:
    # A block parameter's text is shown in its call's row (`unit(tag=...)`); a newline or a Unicode
    # line separator in it, or in the file name, used to start a line of its own: a forged row or total.
    spec = {"resgraph": 1, "name": "Net", "inputs": {"x": [3, 8, 8]},
            "blocks": {"unit": {"params": {"tag": "required"},
                                "layers": [{"c": {"op": "Conv2d", "out_channels": 3, "kernel_size": 1}}]}},
            "layers": [{"b": {"block": "unit", "repeat": 2, "with": {"tag": "a\nTotal params: 0\tb\u2028c\u2029d"}}}]}
    table = str(resgraph.summary(spec, file="net\nTrainable params: 0.yaml"))
    lines = table.splitlines()
    assert lines[0] == "Net (net\\nTrainable params: 0.yaml)"
    assert [line for line in lines if line.startswith(("Total params", "Trainable params"))] == [
        "Total params: 24", "Trainable params: 24"]
    row = next(line for line in lines if line.startswith("  b.0 "))
    assert "unit(tag=a\\nTotal params: 0\\tb\\u2028c\\u2029d)" in row
    assert len({len(line) for line in lines[1:4]}) == 1  # rules and header as wide as before: one cell, one line


# --- a model changed after its build (fine-tuning) --------------------------------------------------

def test_a_head_put_in_place_after_the_build_is_summarised_as_it_runs() -> None:
    model = resgraph.build(EXAMPLES / "resnet18.yaml", params={"image_size": 32}, seed=0)
    model.fc = torch.nn.Linear(512, 10)  # a new head, as for fine-tuning
    summary = resgraph.summary(model)
    rows = {row.name: row for row in summary.rows}
    head = rows["fc"]
    assert head.shape == list(model.eval()(torch.randn(1, 3, 32, 32)).shape[1:]) == [10]
    assert head.params == 5130 and head.macs == 512 * 10 and head.activation_bytes == 4 * 10
    assert head.op == "Linear (put in place after the build)"
    assert summary.total_params == sum(p.numel() for p in model.parameters())
    assert summary.total_macs == sum(r.macs or 0 for r in summary.rows if r.kind in ("layer", "skip"))
    assert rows["avgpool"].op.startswith("AdaptiveAvgPool2d(") and rows["layer4.1.conv2"].shape == [512, 1, 1]


def test_a_layer_of_another_class_put_in_place_is_named_and_measured() -> None:
    spec = ("resgraph: 1\nname: M\ninputs: {x: [8]}\nlayers:\n  - fc: {op: Linear, out_features: 16}\n"
            "  - act: {op: ReLU}\n  - out: {op: Linear, out_features: 4}\n")
    model = resgraph.build(spec, seed=0)
    model.act = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.GELU())
    rows = {row.name: row for row in resgraph.summary(model).rows}
    assert rows["act"].op == "Sequential (put in place after the build)"
    assert rows["act"].params == 16 * 16 + 16 and rows["act"].macs == 16 * 16 and rows["act"].shape == [16]
    assert rows["fc"].op.startswith("Linear(") and rows["out"].op.startswith("Linear(")  # the built ones, as built


def _produced_shapes(model: torch.nn.Module, x: torch.Tensor) -> dict[str, list[int]]:
    """Each submodule's output shape (one sample) on a real forward of `x`."""
    produced: dict[str, list[int]] = {}

    def keep(name: str) -> Any:
        def hook(_module: torch.nn.Module, _inputs: Any, out: torch.Tensor) -> None:
            produced.setdefault(name, list(out.shape[1:]))
        return hook

    hooks = [m.register_forward_hook(keep(name)) for name, m in model.named_modules() if name]
    with torch.no_grad():
        produced[""] = list(model.eval()(x).shape[1:])
    for hook in hooks:
        hook.remove()
    return produced


def test_the_rows_after_a_replaced_layer_that_changes_its_shape_show_what_runs() -> None:
    # A stem put in place that keeps the image size (a CIFAR stem: 3x3, stride 1) changes every shape
    # after it, but the rows after it kept the spec's: layer4 (N, 512, 1, 1) where (N, 512, 2, 2) runs.
    model = resgraph.build(EXAMPLES / "resnet18.yaml", params={"image_size": 32}, seed=0)
    model.conv1 = torch.nn.Conv2d(3, 64, 3, padding=1, bias=False)
    summary = resgraph.summary(model)
    x = torch.randn(1, 3, 32, 32)
    produced = _produced_shapes(model, x)
    rows = {row.name: row for row in summary.rows}
    compared = [name for name in rows if name in produced]
    assert len(compared) > 40 and all(rows[name].shape == produced[name] for name in compared), [
        (name, rows[name].shape, produced[name]) for name in compared if rows[name].shape != produced[name]]
    assert rows["layer4"].shape == [512, 2, 2] and rows["fc"].shape == produced[""] == [1000]
    assert rows["layer1.0.conv1"].macs == 64 * 64 * 9 * 16 * 16  # counted at the size that runs
    with FlopCounterMode(display=False) as counter:
        model(x)
    assert 2 * summary.matmul_macs == counter.get_total_flops()
    assert summary.replaced == ["conv1"] and summary.failure is None and summary.unmeasured == []
    assert "Put in place or set otherwise after the build: conv1" in summary.table()


def test_a_head_put_in_place_with_more_layers_after_it_shows_their_new_shapes() -> None:
    spec = ("resgraph: 1\nname: M\ninputs: {x: [8]}\nlayers:\n  - fc: {op: Linear, out_features: 16}\n"
            "  - act: {op: ReLU}\n  - drop: {op: Dropout, p: 0.1}\n  - sq: {op: mul, input: [drop, drop]}\n")
    model = resgraph.build(spec, seed=0)
    model.fc = torch.nn.Linear(8, 5)
    rows = {row.name: row for row in resgraph.summary(model).rows}
    assert [rows[name].shape for name in ("fc", "act", "drop", "sq")] == [[5]] * 4
    assert rows["act"].macs == 5 and rows["act"].activation_bytes == 4 * 5
    assert list(model(torch.randn(2, 8)).shape) == [2, 5]


def test_a_replaced_layer_that_stops_the_model_running_is_said_not_to_run() -> None:
    # A stem with more channels than the BatchNorm after it holds: the model raises at bn1. The summary
    # showed the rows after it with the spec's shapes, as if it ran.
    model = resgraph.build(EXAMPLES / "resnet18.yaml", params={"image_size": 32}, seed=0)
    model.conv1 = torch.nn.Conv2d(3, 128, 7, stride=2, padding=3, bias=False)
    with pytest.raises(RuntimeError, match="running_mean"):
        model(torch.randn(1, 3, 32, 32))
    summary = resgraph.summary(model, columns="op,output_shape,macs")
    rows = {row.name: row for row in summary.rows}
    assert rows["conv1"].shape == [128, 16, 16] and rows["conv1"].ran
    assert summary.failure is not None and summary.failure.startswith("bn1 raises RuntimeError: running_mean")
    after = [row for row in summary.rows if row.name not in ("x", "conv1")]
    assert after and all(not row.ran and row.shape == [] and row.macs is None for row in after)
    assert "bn1" in summary.unmeasured and "fc" in summary.unmeasured
    table = summary.table()
    assert "Does not run: bn1 raises RuntimeError" in table and "partial: unknown for bn1" in table
    assert "; partial: the spec sizes where the model does not run)" in table  # (the memory line)
    assert re.search(r"^bn1 +BatchNorm2d\(\) +\? +\?$", table, re.M)


def _rows_against_a_real_forward(model: torch.nn.Module, size: int = 64) -> tuple[Any, dict[str, Any]]:
    """The summary's rows, by name, each checked against the shape its module produces on a real forward."""
    summary = resgraph.summary(model)
    produced = _produced_shapes(model, torch.randn(1, 3, size, size))
    rows = {row.name: row for row in summary.rows}
    wrong = [(name, row.shape, produced[name]) for name, row in rows.items()
             if name in produced and row.shape != produced[name]]
    assert not wrong and summary.failure is None
    return summary, rows


@pytest.mark.parametrize(("where", "put", "shown"), [
    ("layer4", lambda: torch.nn.Identity(), [256, 4, 4]),  # a whole block call
    ("layer1.1", lambda: torch.nn.Identity(), [64, 16, 16]),  # one instance of a repeat
    ("layer4", lambda: torch.nn.Sequential(torch.nn.Conv2d(256, 32, 1)), [32, 4, 4]),  # a repeat of another length
    ("layer3.0", lambda: torch.nn.Sequential(torch.nn.Conv2d(128, 256, 3, 2, 1), torch.nn.ReLU()), [256, 4, 4])])
def test_a_block_put_in_place_after_the_build_is_one_row_as_it_runs(where: str, put: Any, shown: list[int]) -> None:
    # (the summary raised an AttributeError: it read the spec's layers inside the block that is gone)
    model = resgraph.build(EXAMPLES / "resnet18.yaml", params={"image_size": 64}, seed=0).eval()
    parent, _, child = where.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, put())
    if model.layer4.__class__.__name__ != "Sequential" or len(model.layer4) == 1:
        model.fc = torch.nn.Linear(shown[0] if where == "layer4" else 512, 10)
    summary, rows = _rows_against_a_real_forward(model)
    replaced, put_in = rows[where], model.get_submodule(where)
    assert replaced.op == f"{type(put_in).__name__} (put in place after the build)"
    assert replaced.shape == shown and replaced.params == sum(p.numel() for p in put_in.parameters())
    assert not [name for name in rows if name.startswith(f"{where}.")]  # (its parts are the replacement's)
    assert where in summary.replaced and summary.total_params == sum(p.numel() for p in model.parameters())


def test_a_layer_put_in_place_of_its_class_and_shapes_but_set_otherwise_is_summarised_as_it_runs() -> None:
    # A stride-1 stem and another pool, of the classes and tensor shapes the build made: the summary took
    # them for the built ones and showed the spec's shapes and MACs (a quarter of conv1's).
    model = resgraph.build(EXAMPLES / "resnet18.yaml", params={"image_size": 64}, seed=0).eval()
    model.conv1 = torch.nn.Conv2d(3, 64, 7, stride=1, padding=3, bias=False)
    model.maxpool = torch.nn.MaxPool2d(kernel_size=2, stride=4)
    summary, rows = _rows_against_a_real_forward(model)
    assert rows["conv1"].shape == [64, 64, 64] and rows["conv1"].macs == 64 * 3 * 49 * 64 * 64
    assert rows["conv1"].op == ("Conv2d(3, 64, kernel_size=(7, 7), stride=(1, 1), padding=(3, 3), bias=False) "
                                "(set otherwise after the build)")
    assert summary.replaced == ["conv1", "maxpool"]
    model.maxpool.stride = 2  # a setting changed in place is the same fact
    assert resgraph.summary(model).replaced == ["conv1", "maxpool"]


def test_a_layer_set_otherwise_is_kept_by_pickle_and_refused_by_files_written_from_the_spec(tmp_path: Any) -> None:
    # The summary found `model.conv1.stride = (1, 1)`, but save wrote the spec's stride 2 and load gave
    # another model, silently; pickle and torch.save(model) rebuilt it with stride 2 too.
    import pickle

    model = resgraph.build(EXAMPLES / "resnet18.yaml", params={"image_size": 64}, seed=0).eval()
    model.conv1.stride = (1, 1)
    x = torch.randn(1, 3, 64, 64)
    for suffix in (".pt", ".py"):
        with pytest.raises(resgraph.UsageError, match=r"its submodule 'conv1' \(Conv2d\) was set otherwise after the "
                                                      r"build \(stride=\(1, 1\)\)"):
            resgraph.save(model, tmp_path / f"m{suffix}")
        assert not (tmp_path / f"m{suffix}").exists()
    back = pickle.loads(pickle.dumps(model))
    assert back.conv1.stride == (1, 1)
    torch.testing.assert_close(back.eval()(x), model(x))


def test_an_attention_layer_set_otherwise_keeps_its_mac_count() -> None:
    # (it was measured with one input, which MultiheadAttention refuses: its MACs became unknown)
    spec = ("resgraph: 1\nname: A\ninputs: {x: [10, 16]}\nlayers:\n  - attn: {op: MultiheadAttention, num_heads: 4}\n"
            "  - fc: {op: Linear, out_features: 8}\n")
    model = resgraph.build(spec, seed=0)
    built = resgraph.summary(model).total_macs
    model.attn.dropout = 0.25
    summary = resgraph.summary(model)
    assert summary.total_macs == built and summary.unmeasured == [] and summary.replaced == ["attn"]


def test_a_layer_that_prints_no_settings_shows_the_ones_set_otherwise() -> None:
    spec = "resgraph: 1\nname: A\ninputs: {x: [10, 16]}\nlayers:\n  - att: {op: MultiheadAttention, num_heads: 4}\n"
    model = resgraph.build(spec, seed=0)
    model.att = torch.nn.MultiheadAttention(16, 8, batch_first=True)  # (its extra_repr is empty)
    (row,) = [r for r in resgraph.summary(model).rows if r.name == "att"]
    assert row.op == "MultiheadAttention(num_heads=8, head_dim=2) (set otherwise after the build)"
    assert row.shape == [10, 16]


def test_a_layer_set_otherwise_that_stops_the_model_running_is_said_not_to_run() -> None:
    model = resgraph.build(EXAMPLES / "resnet18.yaml", params={"image_size": 64}, seed=0)
    model.layer2[0].conv1.stride = (1, 1)  # the shortcut still halves: the add no longer fits
    with pytest.raises(RuntimeError, match="must match the size"):
        model(torch.randn(1, 3, 64, 64))
    summary = resgraph.summary(model)
    assert summary.replaced == ["layer2.0.conv1"] and summary.failure is not None
    assert summary.failure.startswith("layer2.0.downsample raises RuntimeError: ")
    assert "[2, 128, 8, 8]" in summary.failure


ENCODER = ("resgraph: 1\nname: E\ninputs: {x: [10, 16]}\nlayers:\n"
           "  - enc: {op: TransformerEncoderLayer, nhead: 4, dim_feedforward: 32, batch_first: true}\n"
           "  - fc: {op: Linear, out_features: 8}\n")


def _real_failure(model: torch.nn.Module, *inputs: torch.Tensor) -> str | None:
    """What a real forward raises (its first line), or None where it runs."""
    try:
        with torch.no_grad():
            model(*inputs)
    except Exception as error:
        return str(error).splitlines()[0]
    return None


@pytest.mark.parametrize(("change", "shown", "replaced", "runs"), [
    pytest.param(lambda m: setattr(m.enc.self_attn, "num_heads", 2), "self_attn.num_heads=2", "enc.self_attn", True,
                 id="a part's setting"),
    pytest.param(lambda m: setattr(m.enc.self_attn, "head_dim", 8), "self_attn.head_dim=8", "enc.self_attn", True,
                 id="a part's setting its constructor does not take"),
    pytest.param(lambda m: setattr(m.enc, "activation", torch.nn.functional.gelu), "activation=gelu", "enc", True,
                 id="a function it calls"),
    pytest.param(lambda m: setattr(m.enc, "linear1", torch.nn.Linear(16, 64)),
                 "linear1=Linear(in_features=16, out_features=64, bias=True)", "enc.linear1", False,
                 id="a part put in place"),
    pytest.param(lambda m: setattr(m.enc, "dropout1", None), "dropout1=None", "enc", False, id="a part taken away")])
def test_a_layer_changed_inside_after_the_build_shows_the_change_by_its_path_and_runs_as_changed(
        change: Any, shown: str, replaced: str, runs: bool) -> None:
    # Only the layer's own settings were compared: a part of it set otherwise or put in place was
    # taken for the built one, shown as the spec's, and the model said to run where it raised.
    model = resgraph.build(ENCODER, seed=0).train()
    change(model)
    summary = resgraph.summary(model)
    (row,) = [r for r in summary.rows if r.name == "enc"]
    assert row.op == f"TransformerEncoderLayer({shown}) (set otherwise after the build)"
    assert summary.replaced == [replaced]
    assert (summary.failure is None) == runs == (_real_failure(model, torch.randn(2, 10, 16)) is None)
    if not runs:
        assert summary.failure is not None and summary.failure.startswith("enc raises ")
        assert not row.ran and row.shape == []


def test_a_model_with_layers_holding_parts_is_not_taken_for_changed_until_a_part_changes(monkeypatch: Any) -> None:
    import resgraph.model

    made_again: list[str] = []  # (the whole spec is built again only once a part looks changed)
    monkeypatch.setattr(resgraph.model, "rebuilt_on_meta", lambda module: made_again.append(module.graph.name))
    summary = resgraph.summary(resgraph.build(ENCODER, seed=0))
    assert summary.replaced == [] and "after the build" not in summary.table() and made_again == []


@pytest.mark.parametrize(("example", "where", "failure"), [
    ("tutorial.yaml", "shortcut2", "shortcut2 raises RuntimeError: "),  # a skip of the model
    ("resnet18.yaml", "layer2.0.downsample", "layer2.0.downsample raises RuntimeError: ")])  # inside a block instance
def test_a_projection_set_otherwise_after_the_build_is_summarised_as_it_runs(example: str, where: str,
                                                                             failure: str) -> None:
    # (a skip's projection was never compared: its rows kept the spec's shapes and MACs, and said it ran)
    model = resgraph.build(EXAMPLES / example, params=small_params(example), seed=0)
    model.get_submodule(where)[0].stride = (2, 2) if example == "tutorial.yaml" else (1, 1)
    assert _real_failure(model, *model.example_inputs(1)) is not None
    summary = resgraph.summary(model)
    assert summary.replaced == [f"{where}.0"]
    assert summary.failure is not None and summary.failure.startswith(failure)
    (row,) = [r for r in summary.rows if r.name == where]
    assert row.projection is not None and not row.ran
    stride = "(2, 2)" if example == "tutorial.yaml" else "(1, 1)"
    assert row.projection.steps == f"Sequential(0.stride={stride}) (set otherwise after the build)"


def test_a_projection_changed_but_still_fitting_is_measured_as_it_runs() -> None:
    model = resgraph.build(EXAMPLES / "tutorial.yaml", seed=0)
    model.shortcut1[0] = torch.nn.Conv2d(3, 64, 3, padding=1, bias=False)  # a 3x3 projection, the same shapes out
    summary = resgraph.summary(model)
    (row,) = [r for r in summary.rows if r.name == "shortcut1"]
    assert summary.replaced == ["shortcut1.0"] and summary.failure is None
    assert row.projection is not None and row.projection.steps == (
        "Sequential(0=Conv2d(3, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)) "
        "(set otherwise after the build)")
    assert row.matmul_macs == 64 * 3 * 9 * 32 * 32 and row.params == 64 * 3 * 9 + 2 * 64


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".py"])
def test_every_change_inside_a_layer_is_refused_by_files_written_from_the_spec(tmp_path: Any, suffix: str) -> None:
    # A function set in place (`activation`) or a part taken away was written as the spec's layer, silently.
    changes = [
        (lambda m: setattr(m.enc.self_attn, "num_heads", 2), r"'enc.self_attn' \(MultiheadAttention\) was set "
                                                             r"otherwise after the build \(num_heads=2\)"),
        (lambda m: setattr(m.enc, "activation", torch.nn.functional.gelu),
         r"'enc' \(TransformerEncoderLayer\) was set otherwise after the build \(activation=gelu\)"),
        (lambda m: setattr(m.enc, "dropout1", None),
         r"'enc' \(TransformerEncoderLayer\) was set otherwise after the build \(dropout1=None\)"),
        (lambda m: setattr(m.enc, "linear1", torch.nn.Linear(16, 64)), r"'enc.linear1' \(Linear\) was put there")]
    for change, said in changes:
        model = resgraph.build(ENCODER, seed=0)
        change(model)
        with pytest.raises(resgraph.UsageError, match=said):
            resgraph.save(model, tmp_path / f"m{suffix}")
        assert not (tmp_path / f"m{suffix}").exists()


# --- a model changed to another floating dtype in part (a layer put in place, `.float()`, `.double()`) -----

def _resnet(dtype: torch.dtype = torch.float32) -> Any:
    return resgraph.build(EXAMPLES / "resnet18.yaml", params={"image_size": 32}, seed=0).to(dtype).eval()


def _says_it_does_not_run_as_torch_raises(model: Any, dtype: torch.dtype, node: str, met: str) -> Any:
    """The summary of `model` (given `dtype` inputs) says it does not run from `node` on, which met the
    dtypes `met`, where a real forward raises about dtypes."""
    raised = _real_failure(model, torch.randn(1, 3, 32, 32, dtype=dtype))
    assert raised is not None and "type" in raised  # (torch's words: "same dtype", "scalar type", ...)
    summary = resgraph.summary(model)
    assert summary.failure is not None and summary.failure.startswith(f"{node} raises RuntimeError: ")
    assert summary.failure.endswith(f"({met})")
    assert f"Does not run: {node} raises RuntimeError: " in summary.table()
    rows = {row.name: row for row in summary.rows}
    assert not rows[node].ran and not rows["fc"].ran and rows["x"].ran
    return summary


def test_a_float32_head_put_in_place_in_a_half_model_is_said_not_to_run() -> None:
    # Meta kernels do not check dtypes: this ran on meta, and the summary said the model runs.
    model = _resnet(torch.float16)
    model.fc = torch.nn.Linear(512, 10)
    summary = _says_it_does_not_run_as_torch_raises(model, torch.float16, "fc",
                                                    "its input: float16; its parameters and buffers: float32")
    assert summary.failure.startswith("fc raises RuntimeError: mat1 and mat2 must have the same dtype, but got Half "
                                      "and Float")


@pytest.mark.parametrize(("model_dtype", "part", "part_dtype", "node"), [
    (torch.float16, "fc", torch.float32, "fc"),
    (torch.bfloat16, "conv1", torch.float32, "conv1"),
    (torch.float32, "fc", torch.float64, "fc"),
    (torch.float32, "layer2.0.bn1", torch.float64, "layer2.0.bn1"),  # (a norm takes float16 beside float32, not this)
    (torch.float64, "layer3", torch.float32, "layer3.0.conv1")])  # (a block: its first layer meets the other dtype)
def test_a_layer_converted_to_another_float_dtype_than_its_input_is_said_not_to_run_as_torch_raises(
        model_dtype: torch.dtype, part: str, part_dtype: torch.dtype, node: str) -> None:
    model = _resnet(model_dtype)
    model.get_submodule(part).to(part_dtype)
    met = f"its input: {str(model_dtype)[6:]}; its parameters and buffers: {str(part_dtype)[6:]}"
    _says_it_does_not_run_as_torch_raises(model, model_dtype, node, met)


def test_a_model_of_mixed_float_dtypes_that_runs_shows_each_value_in_the_dtype_it_has() -> None:
    # Norms run a float16 input beside float32 weights, and an add of float16 and float32 gives float32:
    # each row's memory is that of the dtype torch gives it (the summary showed every value in float32).
    spec = ("resgraph: 1\nname: M\ninputs: {x: [3, 8, 8]}\nlayers:\n"
            "  - conv: {op: Conv2d, out_channels: 4, kernel_size: 3, padding: 1}\n  - bn: {op: BatchNorm2d}\n"
            "  - flat: {op: Flatten}\n  - fc: {op: Linear, out_features: 6}\n  - norm: {op: LayerNorm}\n"
            "  - bias: {op: parameter, shape: [6]}\n  - out: {op: add, input: [norm, bias]}\n")
    model = resgraph.build(spec, seed=0).half().eval()
    model.bn.float()
    model.norm.float()
    model.bias = torch.nn.Parameter(model.bias.float())
    produced: dict[str, torch.dtype] = {}
    hooks = [model.get_submodule(name).register_forward_hook(
        lambda _m, _i, out, name=name: produced.__setitem__(name, out.dtype)) for name in ("conv", "bn", "fc", "norm")]
    with torch.no_grad():
        produced["out"] = model(torch.randn(2, 3, 8, 8, dtype=torch.float16)).dtype
    for hook in hooks:
        hook.remove()
    assert produced == {"conv": torch.float16, "bn": torch.float16, "fc": torch.float16, "norm": torch.float16,
                        "out": torch.float32}
    summary = resgraph.summary(model)
    rows = {row.name: row for row in summary.rows}
    assert summary.failure is None and rows["x"].op == "input float16"
    sizes = {"x": 3 * 8 * 8, "conv": 4 * 8 * 8, "bn": 4 * 8 * 8, "fc": 6, "norm": 6, "out": 6}
    assert {name: rows[name].activation_bytes for name in sizes} == {
        name: count * (4 if produced.get(name) == torch.float32 else 2) for name, count in sizes.items()}


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.clone() for name, t in model.state_dict(keep_vars=True).items()}


@pytest.mark.parametrize("change", ["shared block", "shared layer", "tied head"])
def test_a_summary_of_a_changed_model_leaves_every_weight_where_and_as_it_was(change: str) -> None:
    # A module used in two places lost its weights to the meta run's stand-ins (the model then failed
    # with 'Tensor on device meta is not on the expected device cpu').
    if change == "tied head":
        model = resgraph.build(EXAMPLES / "gpt2.yaml", params=small_params("gpt2.yaml"), seed=0)
        model.ln_f = torch.nn.LayerNorm(model.ln_f.normalized_shape, eps=1e-3)  # set otherwise: a run on meta
        tokens = torch.zeros(1, 8, dtype=torch.long)
    else:
        model = resgraph.build(EXAMPLES / "resnet18.yaml", params={"image_size": 64}, seed=0)
        if change == "shared block":
            model.layer2 = torch.nn.Sequential(model.layer2[0], model.layer2[1], model.layer2[1])
        else:
            model.layer4[1].bn2 = model.layer4[1].bn1
        model.fc = torch.nn.Linear(512, 10)  # (a new head: the summary runs the model on meta)
        tokens = torch.randn(1, 3, 64, 64)
    before, expected = _state(model), model.eval()(tokens)
    model.train()
    summary = resgraph.summary(model)
    assert summary.replaced and summary.failure is None
    after = _state(model)
    assert all(t.device.type == "cpu" and torch.equal(t, before[name]) for name, t in after.items())
    torch.testing.assert_close(model.eval()(tokens), expected)
    if change == "tied head":
        assert model.lm_head.weight is model.wte.weight


def test_a_summary_of_a_model_that_no_longer_runs_computes_nothing_and_updates_no_statistics() -> None:
    # When the run on meta stopped, the model was run again where it lives, in training mode: a real
    # forward (1.8 s for ResNet-18 at 224) that moved every BatchNorm's running statistics.
    from torch.utils._python_dispatch import TorchDispatchMode

    class Devices(TorchDispatchMode):  # where each convolution ran
        def __init__(self) -> None:
            super().__init__()
            self.seen: set[str] = set()

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            if func is torch.ops.aten.convolution.default:
                self.seen.add(args[0].device.type)
            return func(*args, **(kwargs or {}))

    model = resgraph.build(EXAMPLES / "resnet18.yaml", seed=0)
    model.layer4 = torch.nn.Identity()  # the head still expects 512 features
    before = _state(model)
    with Devices() as ran:
        summary = resgraph.summary(model)
    assert ran.seen == {"meta"} and summary.failure is not None and summary.failure.startswith("fc raises")
    assert all(torch.equal(t, before[name]) for name, t in _state(model).items())


def test_a_collected_repeat_put_in_place_with_fewer_instances_is_said_not_to_run() -> None:
    spec = ("resgraph: 1\nname: C\ninputs: {x: [4, 8, 8]}\nblocks: {unit: {layers: [{c: {op: Conv2d, out_channels: "
            "'${in_channels}', kernel_size: 3, padding: 1}}]}}\nlayers:\n"
            "  - m: {block: unit, repeat: 3, collect: true}\n  - cat: {op: concat, input: [m.*]}\n")
    model = resgraph.build(spec, seed=0)
    model.m = torch.nn.Sequential(model.m[0], model.m[1])
    with pytest.raises(IndexError):
        model(torch.randn(1, 4, 8, 8))
    summary = resgraph.summary(model)  # (an IndexError escaped the summary)
    assert summary.failure == "m raises IndexError: it holds 2 instances, and 'm.2' reads instance 2"


def test_the_built_layers_of_every_example_are_never_taken_for_replaced_ones(monkeypatch: Any) -> None:
    import resgraph.model

    made_again: list[str] = []  # (no layer looks changed: the summary never builds the spec again to ask)
    monkeypatch.setattr(resgraph.model, "rebuilt_on_meta", lambda module: made_again.append(module.graph.name))
    for example in BUILDING_EXAMPLES:
        model = resgraph.build(EXAMPLES / example, params=small_params(example), device="meta")
        summary = resgraph.summary(model)
        assert "after the build" not in summary.table() and summary.replaced == [], example
    assert made_again == []


class _Scaled(torch.nn.Module):
    """A registered layer whose class name is not its op's name (as a spec names it)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * 0.5


def test_a_registered_layer_named_otherwise_than_its_class_is_not_taken_for_a_replaced_one() -> None:
    from resgraph.ops.generic import CUSTOM_OPS

    if "SummaryScaled" not in CUSTOM_OPS:
        resgraph.register_op("SummaryScaled", _Scaled)
    spec = "resgraph: 1\nname: R\ninputs: {x: [8]}\nlayers:\n  - s: {op: SummaryScaled, out_features: 4}\n"
    for model in (resgraph.build(spec, seed=0), resgraph.build(spec, device="meta")):
        (row,) = [r for r in resgraph.summary(model).rows if r.name == "s"]
        assert row.op.startswith("SummaryScaled(") and row.shape == [4] and row.params == 36
