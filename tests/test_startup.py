"""What the CLI's start-up loads, asserted on structure (never on timings: `python -m bench --only startup`
measures those). `resgraph validate` imports neither torch nor the op modules its spec does not name,
`resgraph --help` builds no command's parser, and the spec models' validators are built nested-first.
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import subprocess
import sys
import typing
from contextlib import redirect_stdout

import pytest

from conftest import ROOT
from resgraph import cli
from resgraph.ops.base import StrictModel
from resgraph.spec import BlockLibrary, Spec

# Modules `resgraph validate examples/resnet50.yaml` must not import: torch and the lowering, and the op
# modules and model-creating modules ResNet-50 does not name (its ops are conv, norm, elementwise, pool,
# dense, reshape).
NOT_FOR_RESNET = ["torch", "resgraph.lower", "resgraph.model", "resgraph.ops.tensor_ops", "resgraph.ops.merge_ops",
                  "resgraph.ops.attention", "resgraph.ops.arithmetic", "resgraph.ops.stored", "resgraph.summarize",
                  "resgraph.formats", "resgraph.diagram", "difflib", "resgraph.ops.sample_norm",
                  "resgraph.ops.resample"]


def _modules_after(args: list[str]) -> tuple[str, set[str]]:
    """Run `resgraph ARGS` in a fresh interpreter: its output and the modules it imported."""
    probe = ("import sys, runpy\nsys.argv = ['resgraph', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('resgraph', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "print('MODULES', *sorted(sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr
    output, _, modules = result.stdout.rpartition("MODULES ")
    return output, set(modules.split())


def test_validate_imports_only_what_the_spec_names() -> None:
    output, modules = _modules_after(["validate", "examples/resnet50.yaml"])
    assert output == "examples/resnet50.yaml: ok (188 nodes, 4 projections)\n"
    assert sorted(modules & set(NOT_FOR_RESNET)) == []
    assert {"resgraph.ops.conv", "resgraph.ops.tensor", "resgraph.ops.merge"} <= modules  # the bases and merges


def test_a_spec_naming_tensor_and_merge_ops_imports_their_modules(tmp_path: typing.Any) -> None:
    spec = tmp_path / "m.yaml"
    spec.write_text("resgraph: 1\nname: M\ninputs: {x: [4, 6]}\nlayers:\n"
                    "  - t: {op: transpose, dim0: 1, dim1: 2}\n"
                    "  - halves: {op: chunk, chunks: 2, dim: 1, outputs: [a, b]}\n"
                    "  - s: {op: add, input: [a, b]}\n")
    output, modules = _modules_after(["validate", str(spec)])
    assert output == f"{spec}: ok (5 nodes, 0 projections)\n"
    assert {"resgraph.ops.tensor_ops", "resgraph.ops.merge_ops"} <= modules
    assert "torch" not in modules


def test_help_builds_no_command_parser_and_equals_argparse_with_every_parser_built() -> None:
    """`resgraph --help` lists the commands without building their parsers; its text is what
    argparse prints when every command's parser is built with `add_parser`."""
    reference = argparse.ArgumentParser(
        prog="resgraph",
        description="Declarative PyTorch architectures with named skip edges and automatic projections.")
    reference.add_argument("--version", action="version", version="unused")
    commands = reference.add_subparsers(dest="command", metavar="COMMAND")
    for name, (summary, _, _) in cli.COMMANDS.items():
        commands.add_parser(name, help=summary)
    parser = cli._parser(["--help"])
    assert parser.format_help() == reference.format_help()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert list(subparsers.choices) == list(cli.COMMANDS)
    assert not any(isinstance(p, argparse.ArgumentParser) for p in subparsers.choices.values())
    built = cli._parser(["validate", "x.yaml"])
    chosen = next(a for a in built._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert isinstance(chosen["validate"], argparse.ArgumentParser) and chosen["build"] is None


@pytest.mark.parametrize("argv", [["bogus"], ["--help"], []])
def test_help_and_an_unknown_command_behave_as_before(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    if argv == []:
        buffer = io.StringIO()
        with redirect_stdout(buffer):
            assert cli.main(argv) == cli.EXIT_USAGE
        assert "COMMAND" in buffer.getvalue() and "validate" in buffer.getvalue()
        return
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    captured = capsys.readouterr()
    if argv == ["bogus"]:
        assert exit_info.value.code == 2
        assert "invalid choice: 'bogus' (choose from 'validate', 'build', 'render', 'sizes', 'schema')" in captured.err
    else:
        assert exit_info.value.code == 0
        assert all(name in captured.out for name in cli.COMMANDS)


def _nested_models(annotation: typing.Any) -> set[type[StrictModel]]:
    """The StrictModel classes a field annotation contains (in unions, lists, dicts, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, StrictModel):
        return {annotation}
    return {model for arg in typing.get_args(annotation) for model in _nested_models(arg)}


@pytest.mark.parametrize("model", [Spec, BlockLibrary])
def test_nested_first_lists_every_model_the_spec_nests(model: type[StrictModel]) -> None:
    """A model nested in Spec but built after it would have its schema generated twice (in Spec's,
    then on its own): `nested_first` must name every one."""
    nested = {found for field in model.model_fields.values() for found in _nested_models(field.annotation)}
    assert nested == set(model.nested_first)


def test_validating_a_spec_builds_its_sections_before_it() -> None:
    probe = ("from pydantic._internal import _model_construction as construction\n"
             "built = []\ncomplete = construction.complete_model_class\n"
             "def record(cls, *args, **kwargs):\n"
             "    built.append(cls.__name__)\n    return complete(cls, *args, **kwargs)\n"
             "construction.complete_model_class = record\n"
             "import resgraph\nfrom resgraph.spec import Spec\n"
             "print(built)\nresgraph.check('examples/tutorial.yaml')\nprint(*built)\n"
             "print(*(m.__name__ for m in Spec.nested_first))\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    nothing, built, sections = (line.split() for line in result.stdout.splitlines())
    assert nothing == ["[]"]  # no validator is built at import
    assert built[:len(sections) + 1] == [*sections, "Spec"]  # each built once, before the spec that nests them


def test_the_process_entry_runs_main_without_collector_passes_and_freezes_what_it_made() -> None:
    # What the process keeps until it exits is frozen, so the collection at interpreter shutdown skips
    # it; `main` itself (called by tests, in a process that lives on) leaves the collector alone.
    probe = ("import atexit, gc, sys\nfrom resgraph import cli\n"
             "atexit.register(lambda: print('AT EXIT', gc.isenabled(), gc.get_freeze_count() > 10_000))\n"
             "sys.argv = ['resgraph', *sys.argv[1:]]\ncli.entry()\n")
    for args, status, said in ((["validate", "examples/tutorial.yaml"], 0, "examples/tutorial.yaml: ok"),
                               (["validate", "nowhere.yaml"], 2, "")):
        result = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, cwd=ROOT)
        assert result.returncode == status, result.stderr
        assert result.stdout.startswith(said) and result.stdout.endswith("AT EXIT False True\n")
    assert cli.main(["validate", str(ROOT / "examples" / "tutorial.yaml")]) == 0
    assert gc.isenabled()


def test_the_installed_script_and_python_m_call_the_process_entry() -> None:
    assert 'resgraph = "resgraph.cli:entry"' in (ROOT / "pyproject.toml").read_text()
    assert "entry()" in (ROOT / "resgraph" / "__main__.py").read_text()
