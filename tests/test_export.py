"""Using compiled models elsewhere: standalone Python files, torch.export, torch.compile."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest
import torch
import yaml

import resgraph
from conftest import BUILDING_EXAMPLES, EXAMPLES, ROOT, small_params


def import_file(path: pathlib.Path, name: str) -> object:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def example_inputs(model: torch.nn.Module, batch: int = 2) -> list[torch.Tensor]:
    graph = model.graph
    inputs = []
    for name in graph.inputs:
        kind = graph.nodes[name].meta["type"]
        if kind.dtype in ("int64", "int32"):
            inputs.append(torch.randint(0, 10, (batch, *kind.shape)))
        else:
            inputs.append(torch.randn(batch, *kind.shape))
    return inputs


@pytest.mark.parametrize("example", BUILDING_EXAMPLES)
def test_python_export_round_trips_with_strict_load(example: str, tmp_path: pathlib.Path) -> None:
    model = resgraph.build(EXAMPLES / example, params=small_params(example), seed=0).eval()
    source = resgraph.to_python(model)
    assert source == resgraph.to_python(model)  # deterministic
    assert not [line for line in source.splitlines() if line.startswith(("import resgraph", "from resgraph"))]
    path = tmp_path / f"exported_{example.removesuffix('.yaml')}.py"
    path.write_text(source)
    lint = subprocess.run([sys.executable, "-m", "ruff", "check", "--isolated", "--no-cache", str(path)],
                          capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout
    exported = getattr(import_file(path, path.stem), type(model).__name__)().eval()
    exported.load_state_dict(model.state_dict(), strict=True)
    assert list(exported.state_dict()) == list(model.state_dict())
    inputs = example_inputs(model)
    with torch.no_grad():
        expected, actual = model(*inputs), exported(*inputs)
    for a, b in zip(actual if isinstance(actual, tuple) else (actual,), expected if isinstance(expected, tuple)
                    else (expected,)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_blocks_export_as_reusable_classes() -> None:
    source = resgraph.to_python(resgraph.build(EXAMPLES / "resnet50.yaml"))
    assert source.count("class Bottleneck(nn.Module):") == 1 and source.count("\nclass ") == 3
    assert source.count("    def forward(") == 3  # one forward per class, not per instance


def _block_forward(source: str, cls: str) -> str:
    """The exported block class `cls`'s lines from its forward's first comment or def to its end."""
    body = source.split(f"\nclass {cls}(nn.Module):\n", 1)[1].split("\n\n\nclass ", 1)[0]
    lines = body.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(("    # ", "    def forward")))
    return "\n".join(line.removeprefix("    ") for line in lines[start:]).rstrip("\n") + "\n"


def test_an_exported_block_class_carries_the_shape_comments_build_code_shows() -> None:
    # The block classes of the .py export had no comments where `build --code` shows each line's shape.
    spec = ("resgraph: 1\nname: M\ninputs: {x: [8, 16, 16]}\nblocks:\n  unit:\n    layers:\n"
            "      - conv: {op: Conv2d, out_channels: 8, kernel_size: 3, padding: 1}\n      - act: {op: ReLU}\n"
            "    skips:\n      - res: {from: x, to: act}\n"
            "layers:\n  - body: {block: unit, repeat: 2}\n")
    model = resgraph.build(spec, seed=0)
    forward = _block_forward(resgraph.to_python(model), "Unit")
    assert forward == type(model.body[0]).code == type(model.body[1]).code
    assert "conv = self.conv(x)  # (N, 8, 16, 16)" in forward and "skip res: add x (identity)" in forward


def test_an_exported_block_class_used_at_several_shapes_lists_each_instances_shapes() -> None:
    model = resgraph.build(EXAMPLES / "resnet18.yaml", params={"image_size": 64}, device="meta")
    forward = _block_forward(resgraph.to_python(model), "Basic2")
    header = [line for line in forward.splitlines() if line.startswith("#")]
    assert header == ["# Its instances differ in shapes, so its lines carry none:",
                      "#   layer2.0: (N, 64, 16, 16) -> (N, 128, 8, 8)",
                      "#   layer3.0: (N, 128, 8, 8) -> (N, 256, 4, 4)",
                      "#   layer4.0: (N, 256, 4, 4) -> (N, 512, 2, 2)"]
    assert "(N, " not in forward.split("def forward", 1)[1]  # no line claims one instance's shape



@pytest.mark.parametrize("persistent", ["${index == 0}", "${index != 0}", "${index == 1}"])
def test_instances_whose_buffers_persist_otherwise_export_classes_of_their_own(persistent: str,
                                                                                tmp_path: pathlib.Path) -> None:
    # One class served both instances, registering every instance's buffer as the first one did: the
    # file's state_dict had a key the model lacks (or lacked one), and strict loading failed.
    spec = ("resgraph: 1\nname: PersistRepeat\ninputs: {x: [4]}\nblocks:\n  scale:\n    layers:\n"
            f"      - k: {{op: full, shape: [4], value: 2.0, persistent: \"{persistent}\"}}\n"
            "      - m: {op: mul, input: [x, k]}\nlayers:\n  - body: {block: scale, repeat: 3}\n")
    model = resgraph.build(spec, seed=0)
    path = tmp_path / "persist_repeat.py"
    resgraph.save(model, path)
    exported = import_file(path, path.stem).PersistRepeat()  # type: ignore[attr-defined]
    assert list(exported.state_dict()) == list(model.state_dict())
    exported.load_state_dict(model.state_dict(), strict=True)
    assert path.read_text().count("\nclass Scale") == 2  # the two kinds of instance, not one per instance


def test_cli_writes_an_importable_file(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "model.py"
    result = subprocess.run([sys.executable, "-m", "resgraph", "build", "examples/tutorial.yaml", "-o", str(out)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    check = subprocess.run([sys.executable, "-c", "import sys; sys.modules['resgraph'] = None\n"
                            "from model import TutorialResNet\nimport torch\n"
                            "print(TutorialResNet()(torch.randn(1, 3, 32, 32)).shape)"],
                           capture_output=True, text=True, cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip() == "torch.Size([1, 128, 32, 32])"


TAGGED = """resgraph: 1
name: Tagged
params: {tag: plain, act: ReLU}
inputs: {x: [4]}
layers:
  - fc: {op: Linear, out_features: 4}
  - act: {op: "${act if tag == 'a b' else 'GELU'}"}
"""


@pytest.mark.parametrize("spec_name", ["net.yaml", "it's spec.yaml", "back\\slash.yaml", 'say "hi".yaml'])
def test_the_command_in_the_header_of_a_python_file_regenerates_it(spec_name: str, tmp_path: pathlib.Path) -> None:
    # Copied from the file into a shell, it gave `tag` the text \"a b\" (the docstring's escapes were shown)
    # and a quoted file name was a shell syntax error
    (tmp_path / spec_name).write_text(TAGGED)
    written = tmp_path / "first.py"
    command = [sys.executable, "-m", "resgraph", "build", spec_name, "--set", "tag=a b", "--input", "x=4",
               "-o", str(written)]
    assert subprocess.run(command, cwd=tmp_path, capture_output=True, timeout=300).returncode == 0
    source = written.read_text()
    assert "self.act = nn.ReLU()" in source
    shown = next(line.strip() for line in source.splitlines() if line.strip().startswith("resgraph build "))
    again = shown.replace("resgraph build ", f"{sys.executable} -m resgraph build ", 1).replace(
        "<this file>", "second.py")
    done = subprocess.run(["bash", "-c", again], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "second.py").read_text() == source


def test_a_python_file_from_a_dict_spec_says_how_to_regenerate_it_in_python() -> None:
    model = resgraph.build(yaml.safe_load(TAGGED), params={"tag": "a b"}, input_shapes={"x": [4]})
    shown = resgraph.to_python(model).split("Regenerate it instead of editing it:\n", 1)[1].splitlines()[0].strip()
    assert shown == ("resgraph.to_python(resgraph.build(spec, params={'tag': 'a b'}, input_shapes={'x': (4,)}))  "
                     "# spec: the dict it was built from")


@pytest.mark.parametrize("example", BUILDING_EXAMPLES)
def test_no_graph_breaks_and_torch_export_with_a_dynamic_batch(example: str) -> None:
    model = resgraph.build(EXAMPLES / example, params=small_params(example), seed=0).eval()
    inputs = example_inputs(model)
    explanation = torch._dynamo.explain(model)(*inputs)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, tuple(inputs), dynamic_shapes=tuple({0: batch} for _ in inputs))
    bigger = example_inputs(model, batch=3)
    with torch.no_grad():
        expected, actual = model(*bigger), program.module()(*bigger)
    torch.testing.assert_close(actual, expected)


TRIO = {"tutorial.yaml": {}, "resnet18.yaml": {"image_size": 64}, "vit_b_16.yaml": {"image_size": 32}}


@pytest.mark.parametrize("example", sorted(TRIO))
def test_torch_compile_fullgraph_matches_eager(example: str) -> None:
    model = resgraph.build(EXAMPLES / example, params=TRIO[example], seed=0).eval()
    inputs = example_inputs(model)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(*inputs), model(*inputs))


@pytest.mark.parametrize("example", sorted(TRIO))
def test_onnx_export_passes_the_checker_and_matches_onnxruntime(example: str, tmp_path: pathlib.Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = resgraph.build(EXAMPLES / example, params=TRIO[example], seed=0).eval()
    path = tmp_path / "model.onnx"
    resgraph.to_onnx(model, str(path))  # runs onnx.checker
    session = ort.InferenceSession(str(path))
    assert [i.name for i in session.get_inputs()] == model.graph.inputs
    inputs = example_inputs(model, batch=3)  # not the export batch: the batch dim is dynamic
    (actual,) = session.run(None, {name: t.numpy() for name, t in zip(model.graph.inputs, inputs)})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(actual), model(*inputs), rtol=1e-4, atol=1e-4)


# Outputs named as torch's exporter names values inside (after the aten op: relu, linear, cat), with
# an earlier value of that name: each output keeps the spec's name, and the file is still valid SSA.
CLASHING_OUTPUTS = {
    "a ReLU named relu after another ReLU": (
        "inputs: {x: [3, 8, 8]}\nlayers:\n  - c1: {op: Conv2d, out_channels: 4, kernel_size: 3, padding: 1}\n"
        "  - r1: {op: ReLU}\n  - c2: {op: Conv2d, out_channels: 4, kernel_size: 3, padding: 1}\n"
        "  - relu: {op: ReLU}\n", ["relu"]),
    "a Linear named linear after another Linear": (
        "inputs: {x: [6]}\nlayers:\n  - fc: {op: Linear, out_features: 5}\n  - linear: {op: Linear, out_features: 4}\n",
        ["linear"]),
    "two outputs, the second concat named cat and a ReLU": (
        "inputs: {x: [6]}\nlayers:\n  - a: {op: ReLU}\n  - b: {op: ReLU}\n"
        "  - first: {op: concat, input: [a, b]}\n  - cat: {op: concat, input: [first, a]}\n"
        "outputs: [cat, b]\n", ["cat", "b"]),
}


@pytest.mark.parametrize("case", CLASHING_OUTPUTS)
def test_onnx_outputs_keep_the_spec_names_that_torch_gives_values_inside(case: str, tmp_path: pathlib.Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    body, names = CLASHING_OUTPUTS[case]
    model = resgraph.build("resgraph: 1\nname: Clash\n" + body, seed=0).eval()
    path = tmp_path / "model.onnx"
    resgraph.to_onnx(model, str(path))  # runs onnx.checker
    session = ort.InferenceSession(str(path))
    assert [o.name for o in session.get_outputs()] == names
    inputs = example_inputs(model, batch=3)
    actual = session.run(None, {name: t.numpy() for name, t in zip(model.graph.inputs, inputs)})
    with torch.no_grad():
        expected = model(*inputs)
    expected = list(expected) if isinstance(expected, tuple) else [expected]
    for got, want in zip(actual, expected, strict=True):
        torch.testing.assert_close(torch.from_numpy(got), want)


@pytest.mark.parametrize("case", CLASHING_OUTPUTS)
def test_an_exported_program_keeps_the_spec_names_that_torch_gives_nodes_inside(case: str) -> None:
    body, names = CLASHING_OUTPUTS[case]
    model = resgraph.build("resgraph: 1\nname: Clash\n" + body, seed=0).eval()
    program = resgraph.export_program(model)
    assert list(program.graph_signature.user_outputs) == names
    inputs = example_inputs(model, batch=3)
    with torch.no_grad():
        actual, expected = program.module()(*inputs), model(*inputs)
    torch.testing.assert_close(actual, expected)


def test_an_exported_program_in_training_mode_keeps_a_norms_name_and_its_statistics() -> None:
    spec = ("resgraph: 1\nname: Norms\ninputs: {x: [6]}\nlayers:\n  - bn: {op: BatchNorm1d}\n"
            "  - fc: {op: Linear, out_features: 6}\n  - batch_norm: {op: BatchNorm1d}\n")
    model, twin = resgraph.build(spec, seed=0).train(), resgraph.build(spec, seed=0).train()
    program = resgraph.export_program(model)
    assert list(program.graph_signature.user_outputs) == ["batch_norm"]
    x = torch.randn(5, 6)
    exported = program.module()
    torch.testing.assert_close(exported(x), twin(x))
    for (name, mine), (_, theirs) in zip(exported.named_buffers(), twin.named_buffers(), strict=True):
        torch.testing.assert_close(mine, theirs, msg=name)


def test_distributed_data_parallel_gradients_equal_single_process(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "ddp.txt"
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "ddp_worker.py"), str(out)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    worst, count = out.read_text().split()
    assert int(count) == 14 and float(worst) < 1e-6  # every parameter of the residual MLP


def test_a_layer_module_named_as_a_name_the_file_relies_on_is_imported_under_an_alias(tmp_path: pathlib.Path) -> None:
    """A package `nn` (or a module `super`, `str`) imported by its own name replaced torch's `nn` (or broke
    `super().__init__()` and the input check) in the exported file, which then failed to import or to run."""
    (tmp_path / "nn").mkdir()
    (tmp_path / "nn" / "__init__.py").write_text("")
    layer = ("import torch\n\nclass Scale(torch.nn.Module):\n    def __init__(self, k=2.0):\n"
             "        super().__init__()\n        self.k = k\n\n    def forward(self, x):\n        return x * self.k\n")
    (tmp_path / "nn" / "layers.py").write_text(layer)
    (tmp_path / "super.py").write_text(layer)
    (tmp_path / "spec.yaml").write_text("resgraph: 1\nname: Net\ninputs:\n  x: [4]\nlayers:\n"
                                        "  - fc: {op: Linear, out_features: 4}\n  - s: {op: nn.layers.Scale, k: 3.0}\n"
                                        "  - t: {op: super.Scale, k: 0.5}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    built = subprocess.run([sys.executable, "-m", "resgraph", "build", "spec.yaml", "--allow-import", "nn",
                            "--allow-import", "super", "-o", "net.py"], capture_output=True, text=True, cwd=tmp_path,
                           env=env)
    assert built.returncode == 0, built.stderr
    source = (tmp_path / "net.py").read_text()
    assert "import nn.layers as _nn_layers\n" in source and "import super as _super\n" in source
    check = ("import torch, net, resgraph\n"
             "model = resgraph.build('spec.yaml', seed=0, allow_imports=['nn', 'super'])\n"
             "exported = net.Net()\nexported.load_state_dict(model.state_dict())\nx = torch.randn(2, 4)\n"
             "torch.testing.assert_close(exported(x), model(x))\nprint('same')\n")
    ran = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert ran.stdout.strip() == "same", ran.stderr
