"""What the package ships: the JSON Schema and the block library, found wherever resgraph is installed.

The package's files are the sources (`resgraph/schemas/`, `resgraph/blocks/`); the repository's
`schemas/resgraph.schema.json` and `examples/blocks/` are copies that must stay identical. A spec
imports the shipped blocks as `resgraph:blocks/resnet.yaml`. The last test builds the wheel,
installs it into a fresh virtual environment outside the repository, and uses it there.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import torch

import resgraph
from conftest import EXAMPLES, ROOT
from resgraph.errors import SpecError, UsageError
from resgraph.resources import PACKAGE_DIR, read_import, schema_path, shipped_libraries

SHIPPED_SPEC = """\
resgraph: 1
name: Tiny
imports: [resgraph:blocks/resnet.yaml]
inputs: {x: [3, 32, 32]}
layers:
  - conv1: {op: Conv2d, out_channels: 16, kernel_size: 3, padding: 1, bias: false}
  - layer1: {block: basic, repeat: 2, with: {planes: 32, stride: "${2 if index == 0 else 1}"}}
  - pool: {op: AdaptiveAvgPool2d, output_size: 1}
  - flatten: {op: Flatten}
  - fc: {op: Linear, out_features: 10}
"""


def test_repository_copies_equal_the_shipped_sources() -> None:
    shipped = sorted(p.name for p in (PACKAGE_DIR / "blocks").glob("*.yaml"))
    copies = sorted(p.name for p in (EXAMPLES / "blocks").glob("*.yaml"))
    assert shipped == copies == ["resnet.yaml"]
    for name in shipped:
        assert (EXAMPLES / "blocks" / name).read_bytes() == (PACKAGE_DIR / "blocks" / name).read_bytes(), (
            f"examples/blocks/{name} differs from its source: cp resgraph/blocks/{name} examples/blocks/")
    assert (ROOT / "schemas" / "resgraph.schema.json").read_bytes() == schema_path().read_bytes(), (
        "schemas/resgraph.schema.json differs from resgraph/schemas/: run `python -m resgraph.schema`")


def test_schema_path_names_the_file_schema_prints() -> None:
    result = subprocess.run([sys.executable, "-m", "resgraph", "schema", "--path"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    path = pathlib.Path(result.stdout.strip())
    assert path == PACKAGE_DIR / "schemas" / "resgraph.schema.json"
    printed = subprocess.run([sys.executable, "-m", "resgraph", "schema"], capture_output=True, text=True).stdout
    assert path.read_text() == printed


def test_a_spec_imports_the_shipped_blocks_by_name() -> None:
    # The same network as examples/resnet18.yaml, which imports its copy by a relative path.
    text = (EXAMPLES / "resnet18.yaml").read_text()
    assert "imports: [blocks/resnet.yaml]" in text
    shipped = resgraph.build(text.replace("blocks/resnet.yaml", "resgraph:blocks/resnet.yaml"), seed=0)
    relative = resgraph.build(EXAMPLES / "resnet18.yaml", seed=0)
    assert list(shipped.state_dict()) == list(relative.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(shipped.eval()(x), relative.eval()(x))


def test_the_build_record_keeps_the_shipped_name_so_it_rebuilds_anywhere() -> None:
    model = resgraph.build(SHIPPED_SPEC, seed=0)
    (name, text), = model.build_record.imports
    assert name == "resgraph:blocks/resnet.yaml" and text == (PACKAGE_DIR / "blocks" / "resnet.yaml").read_text()
    copy = resgraph.rebuild(model.build_record, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(copy.state_dict().values(), model.state_dict().values()))


def test_errors_inside_a_shipped_library_name_it() -> None:
    with pytest.raises(SpecError) as caught:
        resgraph.check(SHIPPED_SPEC.replace("planes: 32", "planes: -3"))
    locations = {str(d.location).rsplit(":", 2)[0] for d in caught.value.diagnostics}
    assert locations == {"resgraph:blocks/resnet.yaml"}


@pytest.mark.parametrize(("name", "message"), [
    ("resgraph:blocks/resnet.yml", "resgraph ships no such file (it ships resgraph:blocks/resnet.yaml); "
                                   "did you mean 'resgraph:blocks/resnet.yaml'?"),
    ("resgraph:../api.py", "resgraph ships no such file"),  # a shipped name never reaches outside the package
    ("resgraph:schemas/resgraph.schema.json", "resgraph ships no such file"),  # only block libraries are imported
])
def test_an_unknown_shipped_name_is_an_import_error(name: str, message: str) -> None:
    with pytest.raises(UsageError, match="resgraph ships no such file"):
        read_import(name)
    with pytest.raises(SpecError) as caught:
        resgraph.check(SHIPPED_SPEC.replace("resgraph:blocks/resnet.yaml", name), file="spec.yaml")
    (diagnostic,) = caught.value.diagnostics
    assert str(diagnostic.location) == "spec.yaml:3:11"
    assert message in diagnostic.message and diagnostic.message.startswith(f"cannot import {name!r}")


def test_block_libraries_validate_on_their_own(capsys: pytest.CaptureFixture[str]) -> None:
    from resgraph.cli import main

    assert main(["validate", "examples/blocks/resnet.yaml", "resgraph:blocks/resnet.yaml"]) == 0
    assert capsys.readouterr().out == ("examples/blocks/resnet.yaml: ok (block library: 2 blocks: basic, bottleneck)\n"
                                       "resgraph:blocks/resnet.yaml: ok (block library: 2 blocks: basic, bottleneck)\n")
    assert sorted(resgraph.api.check_library("resgraph:blocks/resnet.yaml").blocks) == ["basic", "bottleneck"]
    assert shipped_libraries() == ["resgraph:blocks/resnet.yaml"]


def test_a_broken_block_library_is_reported_in_its_file(tmp_path: pathlib.Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from resgraph.cli import main

    library = tmp_path / "lib.yaml"
    library.write_text("resgraph: 1\nblocks:\n  b:\n    layers:\n      - conv: {op: Conv2d, out_channel: 8}\n")
    assert main(["validate", str(library)]) == 1
    err = capsys.readouterr().err
    assert (f"{library}:5:28: error: block 'b', layer 'conv' (Conv2d): unknown argument 'out_channel'; "
            "did you mean 'out_channels'?") in err


def test_a_block_library_is_not_built_as_a_spec() -> None:
    with pytest.raises(UsageError, match="is a block library, not a spec: `resgraph validate examples/blocks/resnet"):
        resgraph.build("examples/blocks/resnet.yaml")
    with pytest.raises(UsageError, match="is not a block library"):
        resgraph.api.check_library("examples/tutorial.yaml")


def _wheel_test_skip_reason() -> str | None:
    if os.environ.get("RESGRAPH_SKIP_WHEEL_TEST"):
        return f"RESGRAPH_SKIP_WHEEL_TEST is set ({os.environ['RESGRAPH_SKIP_WHEEL_TEST']})"
    if importlib.util.find_spec("ensurepip") is None:
        return "this Python cannot make virtual environments with pip (Debian: apt-get install python3-venv)"
    if importlib.util.find_spec("setuptools") is None:
        return "building the wheel offline needs setuptools in this environment (pip install 'setuptools>=68')"
    return None


@pytest.mark.skipif(_wheel_test_skip_reason() is not None, reason=str(_wheel_test_skip_reason()))
def test_the_wheel_works_in_a_fresh_environment_outside_the_repository(tmp_path: pathlib.Path) -> None:
    # Build from a copy of the sources, so the build leaves nothing (build/, *.egg-info) in the repository.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "resgraph", source / "resgraph", ignore=shutil.ignore_patterns("__pycache__"))
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    wheels = tmp_path / "wheels"
    # --no-build-isolation: use this environment's setuptools rather than downloading one.
    run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels)], env=env, cwd=tmp_path)
    (wheel,) = wheels.glob("resgraph-*.whl")

    # A virtual environment that sees only resgraph's dependencies (torch, pydantic, ...), through a .pth file
    # naming the directories they are installed in: not the resgraph this test runs from.
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], env=env, cwd=tmp_path)
    python = venv / "bin" / "python"
    site = pathlib.Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            env=env, cwd=tmp_path).strip())
    dependencies = ("torch", "numpy", "yaml", "pydantic", "pydantic_core", "jsonschema", "graphviz")
    dirs = sorted({str(pathlib.Path(importlib.util.find_spec(name).origin).parent.parent) for name in dependencies})
    (site / "resgraph_test_dependencies.pth").write_text("\n".join(dirs) + "\n")
    run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], env=env, cwd=tmp_path)

    work = tmp_path / "elsewhere"
    work.mkdir()
    (work / "tiny.yaml").write_text(SHIPPED_SPEC)
    resgraph_cli = str(venv / "bin" / "resgraph")
    installed = pathlib.Path(run([str(python), "-c", "import resgraph; print(resgraph.__file__)"], env=env, cwd=work)
                             .strip())
    assert installed.is_relative_to(site), f"imported {installed}, not the installed wheel"
    schema = pathlib.Path(run([resgraph_cli, "schema", "--path"], env=env, cwd=work).strip())
    assert schema.is_relative_to(site) and schema.read_text() == schema_path().read_text()
    assert run([resgraph_cli, "validate", "resgraph:blocks/resnet.yaml", "tiny.yaml"], env=env, cwd=work) == (
        "resgraph:blocks/resnet.yaml: ok (block library: 2 blocks: basic, bottleneck)\n"
        "tiny.yaml: ok (22 nodes, 1 projection)\n")
    summary = json.loads(run([resgraph_cli, "build", "tiny.yaml", "--json"], env=env, cwd=work))
    expected = resgraph.summary(SHIPPED_SPEC)
    assert summary["total_params"] == expected.total_params and summary["projections"] == ["layer1.0.downsample"]
    probe = ("import torch, resgraph\n"
             "model = resgraph.build('tiny.yaml', seed=0)\n"
             "print(tuple(model(torch.randn(2, 3, 32, 32)).shape), model.build_record.imports[0][0])\n")
    assert run([str(python), "-c", probe], env=env, cwd=work) == "(2, 10) resgraph:blocks/resnet.yaml\n"


def run(command: list[str], *, env: dict[str, str], cwd: pathlib.Path) -> str:
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout
