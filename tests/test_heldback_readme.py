"""The README's claims, run: the code it shows is the code resgraph writes, its snippets run as
written, and its numbers are the ones resgraph's registries and builds give."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import resgraph
from conftest import run_cli
from resgraph.ops import OPS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
EXAMPLES = ROOT / "examples"


def section(start: str, end: str) -> str:
    """The README's text from the first `start` to the next `end` after it."""
    a = README.index(start)
    return README[a:README.index(end, a + len(start))]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.DOTALL)


def run_cli_lines(script: str, cwd: Path) -> None:
    for line in script.splitlines():
        command = line.split("#")[0].split()
        assert command[0] == "resgraph", line
        result = subprocess.run([sys.executable, "-m", "resgraph", *command[1:]], cwd=cwd, capture_output=True,
                                text=True)
        assert result.returncode == 0, result.stderr


def test_the_forward_shown_is_the_tutorials_model_code() -> None:
    shown = blocks(section("forward is straight-line generated code", "See [Using a compiled model]"), "python")
    assert len(shown) == 1
    assert shown[0] == resgraph.build(EXAMPLES / "tutorial.yaml", seed=0).code.rstrip("\n") + "\n"


def test_rebuild_from_the_record_gives_the_same_weights_with_the_builds_seed() -> None:
    assert "resgraph.rebuild(model.build_record, seed=0)" in README
    model = resgraph.build(EXAMPLES / "tutorial.yaml", seed=0)
    same = resgraph.rebuild(model.build_record, seed=0)
    assert same.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), model.state_dict().values()))
    assert "seed" in resgraph.rebuild.__doc__ and "seed" in resgraph.BuildRecord.__doc__


def test_import_without_resgraph_runs_as_written(tmp_path: Path) -> None:
    text = section("**Import it without resgraph**", "The file has one class")
    (bash,), (python,) = blocks(text, "bash"), blocks(text, "python")
    (tmp_path / "examples").symlink_to(EXAMPLES)
    run_cli_lines(bash, tmp_path)
    # the snippet as written, then its commented alternative, against the compiled model's outputs
    check = f"""
{python}
import resgraph
model = resgraph.load("tutorial.pt").eval()
x = torch.randn(2, 3, 32, 32)
assert torch.equal(net.eval()(x), model(x))
torch.save(model.state_dict(), "weights.pt")
other = TutorialResNet()
other.load_state_dict(torch.load("weights.pt"), strict=True)
assert torch.equal(other.eval()(x), model(x))
"""
    result = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_mask_shared_by_the_batch_is_passed_expanded() -> None:
    (snippet,) = blocks(section("A mask is an input", "`scaled_dot_product_attention` is"), "python")
    scope: dict[str, object] = {"torch": torch, "resgraph": resgraph}
    exec(snippet, scope)  # noqa: S102 - the README's own snippet
    model, x, window = scope["model"], scope["x"], scope["window"]
    got = model(x, window.expand(4, -1, -1))
    want = model.attn(x, x, x, attn_mask=window, need_weights=False)[0]
    assert torch.allclose(got, want, atol=1e-6)
    for refused in (window, window[None]):  # what the README says the guard refuses
        with pytest.raises(ValueError, match="input 'window' must"):
            model(x, refused)


def test_the_curated_op_counts_are_the_registrys() -> None:
    torch_classes = sorted(name for name in OPS if name[0].isupper())
    own = sorted(name for name in OPS if name[0].islower())
    assert all(isinstance(getattr(torch.nn, name, None), type) for name in torch_classes)
    stated = re.search(r"- (\d+) `torch.nn` classes are curated", README)
    assert stated and int(stated.group(1)) == len(torch_classes)
    assert f"So are resgraph's {len(own)} own ops" in README
    assert "MultiheadAttention" in torch_classes
    activations = [name for name in torch_classes if name in {
        "CELU", "ELU", "GELU", "Hardsigmoid", "Hardswish", "Hardtanh", "LeakyReLU", "LogSigmoid", "Mish", "PReLU",
        "ReLU", "ReLU6", "SELU", "SiLU", "Sigmoid", "Softplus", "Softsign", "Tanh", "Tanhshrink"}]
    assert f"{len(activations)} activations" in README


FLATTEN_LINEAR = """
resgraph: 1
name: FlattenLinear
inputs:
  x: [3, 32, 32]
layers:
  - conv: {op: Conv2d, out_channels: 8, kernel_size: 3, padding: 1}
  - flat: {op: Flatten}
  - fc:   {op: Linear, out_features: 10}
"""


def test_another_input_size_is_the_same_model_only_where_sizes_admits_it() -> None:
    claim = section("- **Other sizes without editing the spec.**", "- **Size-generic code.**")
    assert "the model is the same" in claim and "4 times the `in_features`" in claim
    def admitted_heights(spec: object) -> list[int]:
        return resgraph.valid_sizes(spec, low=1, high=64).to_dict()["inputs"]["x"]["dims"][1]["valid"]

    assert 64 in admitted_heights(EXAMPLES / "tutorial.yaml")  # admitted: the same model
    declared = resgraph.build(EXAMPLES / "tutorial.yaml", seed=0)
    larger = resgraph.build(EXAMPLES / "tutorial.yaml", seed=0, input_shapes={"x": (3, 64, 64)})
    assert declared.state_dict().keys() == larger.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(declared.state_dict().values(), larger.state_dict().values()))
    assert admitted_heights(FLATTEN_LINEAR) == [32]  # not admitted: the model for that size
    assert resgraph.build(FLATTEN_LINEAR).fc.in_features == 8 * 32 * 32
    assert resgraph.build(FLATTEN_LINEAR, input_shapes={"x": (3, 64, 64)}).fc.in_features == 4 * 8 * 32 * 32


def test_uncurated_layers_are_batch_first_and_accept_written_input_sizes() -> None:
    assert "`batch_first` is always `True`" in README and "accepted when written" in README
    model = resgraph.build("""
resgraph: 1
name: Recurrent
inputs:
  x: [10, 16]
layers:
  - lstm: {op: LSTM, input_size: 16, hidden_size: 8, output: 0}
  - gru:  {op: GRU, hidden_size: 8, output: 0}
""")
    assert model.lstm.batch_first and model.gru.batch_first and model.gru.input_size == 8
    assert model(torch.randn(3, 10, 16)).shape == (3, 10, 8)
    with pytest.raises(resgraph.SpecError, match="'in_features' is inferred from the input; remove it"):
        resgraph.check("""
resgraph: 1
name: Curated
inputs:
  x: [16]
layers:
  - fc: {op: Linear, in_features: 16, out_features: 3}
""")


def test_the_intro_says_which_tutorial_spec_works_and_the_refusal_shown_is_what_build_prints() -> None:
    intro = section("A widely read tutorial", "## Set-up")
    assert "`padding: 1`" in intro and "`examples/tutorial.yaml`" in intro
    assert "`examples/tutorial_literal.yaml`" in intro and "resgraph refuses" in intro
    assert "`examples/tutorial_literal_crop.yaml`" in intro
    for spec in ("tutorial.yaml", "tutorial_literal_crop.yaml"):
        assert resgraph.build(EXAMPLES / spec, seed=0) is not None
    (shown,) = re.findall(r"```console\n\$ resgraph build examples/tutorial_literal\.yaml\n(.*?)```", README, re.DOTALL)
    result = subprocess.run([sys.executable, "-m", "resgraph", "build", "examples/tutorial_literal.yaml"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 1 and result.stdout + result.stderr == shown


SKIP_INTO_GLOBAL_POOL = """
resgraph: 1
name: SkipIntoPool
inputs:
  x: [8, 16, 16]
layers:
  - conv: {op: Conv2d, out_channels: 16, kernel_size: 3, padding: 1}
  - pool: {op: AdaptiveAvgPool2d, output_size: 1}
skips:
  - s: {from: x, to: pool}
"""


def test_an_admitted_size_keeps_the_weights_and_outputs_but_may_narrow_what_the_build_admits() -> None:
    assert "the new build admits\n  only the sizes that step fits" in README
    declared = resgraph.build(SKIP_INTO_GLOBAL_POOL, seed=0).eval()
    at_five = resgraph.build(SKIP_INTO_GLOBAL_POOL, seed=0, input_shapes={"x": (8, 5, 5)}).eval()
    assert all(torch.equal(a, b) for a, b in zip(declared.state_dict().values(), at_five.state_dict().values()))
    x = torch.randn(2, 8, 5, 5)
    assert torch.equal(declared(x), at_five(x))
    declared(torch.randn(2, 8, 16, 16))
    with pytest.raises(ValueError, match=r"1 <= H <= 5"):
        at_five(torch.randn(2, 8, 16, 16))


def test_the_weight_mapping_shown_is_what_load_weights_returns() -> None:
    # torchvision's ViT keys and structure, small (tests/test_weights.py), stand in for its checkpoint
    from test_weights import TorchvisionViT

    (snippet,) = blocks(section("### Loading weights written by another implementation", "Tensors are matched"),
                        "python")
    shown = re.findall(r"^(mapping\.\S+)\s+# (\([^)]*\)|'[^']*')", snippet, re.MULTILINE)
    assert len(shown) == 3
    size = {"image_size": 32, "patch": 16, "hidden": 32, "heads": 4, "mlp": 64, "depth": 2, "num_classes": 7}
    model = resgraph.build(EXAMPLES / "vit_b_16.yaml", params=size)
    mapping = resgraph.load_weights(model, TorchvisionViT(32, 16, 32, 4, 64, 2, 7).state_dict())
    for expression, value in shown:
        assert eval(expression, {"mapping": mapping}) == ast.literal_eval(value), expression  # noqa: S307


def test_the_python_exports_classes_are_the_ones_described() -> None:
    claim = section("The file has one class per distinct block computation", "It is deterministic")
    assert ("`Bottleneck` for the first\ninstance of each stage, which has a projection, `Bottleneck2` for the "
            "others") in claim
    source = resgraph.to_python(resgraph.build(EXAMPLES / "resnet50.yaml", device="meta"))
    classes = {node.name: ast.get_source_segment(source, node) for node in ast.parse(source).body
               if isinstance(node, ast.ClassDef)}
    assert list(classes) == ["Bottleneck", "Bottleneck2", "ResNet50"]
    assert "self.downsample(x)" in classes["Bottleneck"] and "downsample" not in classes["Bottleneck2"].split(
        "def forward")[0]
    # each stage's first instance is a Bottleneck, the others Bottleneck2s
    calls = re.findall(r"\b(Bottleneck2?)\(", classes["ResNet50"])
    assert calls == [name for depth in (3, 4, 6, 3) for name in ["Bottleneck"] + ["Bottleneck2"] * (depth - 1)]


def test_the_exported_output_names_quoted_are_torchs() -> None:
    claim = section("torch names an exported graph's outputs", "**ONNX**")
    model = resgraph.build(EXAMPLES / "tutorial.yaml", seed=0)

    def output_names(program: torch.export.ExportedProgram) -> list[str]:
        return list(program.graph_signature.user_outputs)

    def exported(module: torch.nn.Module) -> list[str]:
        return output_names(torch.export.export(module, model.example_inputs(),
                                                dynamic_shapes=model.dynamic_shapes()))

    training = exported(model.train())
    evaluating = exported(model.eval())
    assert f"is `{evaluating[0]}` in eval mode, and `{training[0]}` in training mode" in claim
    assert output_names(resgraph.export_program(model)) == ["res2_conv2"]


def test_constant_buffers_are_marked_in_summaries_as_said() -> None:
    claim = section("- Constants are buffers", "- `arange` with `input`")
    assert "`[buffer, not saved]` (`[buffer]` when `persistent: true`)" in claim
    rows = {row.name: row for row in resgraph.summary("""
resgraph: 1
name: Buffers
inputs: {x: [4]}
layers:
  - kept:    {op: full, shape: [4], value: 0.5, persistent: true}
  - derived: {op: full, shape: [4], value: 0.5}
  - total:   {op: add, input: [x, kept]}
""").rows}
    assert rows["kept"].op.endswith("[buffer]") and rows["derived"].op.endswith("[buffer, not saved]")
    assert rows["kept"].params == rows["derived"].params == 0


def test_every_option_in_the_commands_help_is_in_the_readmes_command_table() -> None:
    table = section("## Command line", "A SPEC may be")
    shared = section("`validate`, `build`, `render` and `sizes` also take", "\n\n")
    assert "A SPEC may be `resgraph:NAME`" in README
    for command in ("validate", "build", "render", "sizes", "schema"):
        result = run_cli(command, "--help")
        assert result.returncode == 0, result.stderr
        if command != "schema":
            assert "resgraph:NAME" in result.stdout  # SPEC's help says what the README does
        (row,) = re.findall(rf"^\| `resgraph {command}\b.*$", table, re.MULTILINE)
        said = [row] + ([shared] if command != "schema" else [])
        for listed in re.findall(r"^  (-\S.*?)(?:\s{2,}|$)", result.stdout, re.MULTILINE):  # `-o FILE, --output FILE`
            names = re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", listed)
            mentioned = [name for name in names for text in said
                         if re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text)]
            assert mentioned or "--help" in names, (command, listed)


def test_validate_refuses_spec_flags_given_with_block_libraries_alone(tmp_path: Path) -> None:
    assert "with libraries alone they are refused (exit 2)" in README
    refused = run_cli("validate", "examples/blocks/resnet.yaml", "--set", "planes=3")
    assert refused.returncode == 2 and "block library" in refused.stderr
    beside = run_cli("validate", "examples/blocks/resnet.yaml", "examples/resnet18.yaml", "--set", "num_classes=3")
    assert beside.returncode == 0, beside.stderr
    claim = section("checks a\n  library on its own", "### Tensor ops")
    assert ("each block's ops and names (an unknown op, a\n  duplicate layer, an unknown node it reads), every "
            "mistake at once") in claim
    library = tmp_path / "lib.yaml"
    library.write_text("""resgraph: 1
blocks:
  unit:
    layers:
      - conv: {op: Conv2dd, out_channels: 4, kernel_size: 1}
      - conv: {op: ReLU}
      - act:  {op: ReLU, input: nowhere}
""")
    checked = run_cli("validate", str(library))
    errors = [line for line in checked.stdout.splitlines() + checked.stderr.splitlines() if ": error: " in line]
    assert checked.returncode == 1 and len(errors) == 3, checked.stdout + checked.stderr
    assert "'Conv2dd'" in errors[0] and "already used" in errors[1] and "'nowhere'" in errors[2]


def normalised_lines(yaml_text: str) -> list[str]:
    """Each line without its comment, its whitespace collapsed; blank lines and `...` elisions dropped."""
    lines = (" ".join(re.split(r"\s#\s", " " + line)[0].split()) for line in yaml_text.splitlines())
    return [line for line in lines if line and line not in ("...", "- ...")]


@pytest.mark.parametrize(("start", "example"), [
    ("ResNet-50 in resgraph is its paper's table", "resnet50.yaml"),
    ("with the block defined once", "blocks/resnet.yaml"),
    ("so YOLOv8's C2f is\n  written without a copy", "yolov8.yaml"),
    ("give the linear schedule", "convnext_tiny.yaml"),
])
def test_a_yaml_excerpt_the_readme_shows_from_an_example_is_in_it(start: str, example: str) -> None:
    begin = README.index("```yaml\n", README.index(start)) + len("```yaml\n")
    excerpt = README[begin:README.index("```", begin)]  # the first YAML block after `start`
    file_lines = set(normalised_lines((EXAMPLES / example).read_text()))
    missing = [line for line in normalised_lines(excerpt) if line not in file_lines]
    assert not missing, f"lines the README shows that {example} does not have: {missing}"


def test_the_readmes_links_name_files_and_headings_that_exist() -> None:
    def headings(text: str) -> set[str]:
        text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
        return {re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
                for title in re.findall(r"^#{1,6} (.+)$", text, re.MULTILINE)}

    prose = re.sub(r"`[^`\n]*`", "", re.sub(r"```.*?```", "", README, flags=re.DOTALL))
    links = re.findall(r"\]\(([^)\s]+)\)", prose)
    assert len(links) > 10
    for link in links:
        path, _, anchor = link.partition("#")
        if path.startswith(("http://", "https://")):
            continue
        target = ROOT / path if path else ROOT / "README.md"
        assert target.exists(), link
        if anchor:
            assert anchor in headings(target.read_text()), link


def test_how_it_works_names_every_module_of_the_package() -> None:
    text = section("## How it works", "**Where things go:**")
    modules = sorted(path.name for path in (ROOT / "resgraph").glob("*.py") if not path.name.startswith("__"))
    assert [name for name in modules if f"`{name}`" not in text] == []


def test_block_instances_with_the_same_forward_share_a_generated_class() -> None:
    assert "instances whose generated `forward` is the same (shape comments included) share one\n  class" in README
    model = resgraph.build(EXAMPLES / "resnet18.yaml", device="meta")
    first, second = model.layer1
    assert type(first) is type(second) and type(first).__name__ == "Basic"  # the block is named `basic`
    assert type(model.layer2[0]) is not type(model.layer2[1])  # only the first has a projection
    headings = [line for line in run_cli("build", "examples/resnet18.yaml", "--code").stdout.splitlines()
                if line.startswith("# ")]
    assert headings[0] == "# Basic: layer1.0, layer1.1" and headings[-1] == "# ResNet18: the model"


def test_every_repository_path_the_readme_names_exists() -> None:
    named = set(re.findall(r"(?<![\w/.-])((?:tests|examples|resgraph|docs|schemas|bench|\.ci)/[\w./*-]*[\w*])", README))
    assert len(named) > 40
    missing = [path for path in sorted(named) if not (list(ROOT.glob(path)) if "*" in path else (ROOT / path).exists())]
    assert missing == []


def test_the_resnets_said_to_be_checked_key_for_key_are_the_fixtures() -> None:
    assert "(ResNet-18's and\nResNet-50's key order and shapes are checked against the fixture" in README
    models = json.loads((ROOT / "tests" / "fixtures" / "torchvision.json").read_text())["models"]
    assert sorted(name for name, entry in models.items() if "state_dict" in entry) == ["resnet18", "resnet50"]
