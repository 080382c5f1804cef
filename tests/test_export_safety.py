"""The standalone `.py` export never turns data into code.

Spec file names, model, block and layer names, argument names and argument values come from
whoever wrote the spec (or crafted a `.pt` file). Each hostile case below is exported, then:

1. parsed with `ast`: the module holds only its docstring (equal to the text it describes, the
   file name exactly as given), imports of torch (and of the layer modules the caller allowed)
   and `nn.Module` classes whose methods hold only the statements generated code uses, reading
   only names the file defines;
2. imported and run in a child process, in an empty directory: the model it defines loads the
   compiled model's weights (strict), gives the same outputs, and nothing else happened (no
   file appeared).
"""

from __future__ import annotations

import ast
import importlib
import keyword
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator

import pytest
import torch

import resgraph
from conftest import ROOT
from resgraph.export_py import RESERVED, _call, _literal, check_source

HEAD = "resgraph: 1\nname: {name}\ninputs: {{x: [4]}}\nlayers:\n"
PWNED = "touch PWNED"
HOSTILE_FILE_NAMES = [
    f'a"""; import os; os.system("{PWNED}"); """b.yaml',
    f"a'''; import os; os.system('{PWNED}'); '''b.yaml",
    "C:\\Users\\net.yaml",  # an honest Windows path: \U and \N are escapes in a Python string
    "C:\\N{BULLET}\\x41.yaml",
    "ends with a backslash\\",
    'ends with a quote"',
    f"line\nimport os; os.system('{PWNED}')\n.yaml",
    "\x1b[31mred\x1b[0m\r.yaml",
    "\u202eevil\u202c.yaml",  # a bidirectional override
    os.fsdecode(b"caf\xe9\xff.yaml"),  # not UTF-8: surrogates in the decoded name
    "{spec_file} %s %(x)s {0}.yaml",
]
HOSTILE_MODEL_NAMES = ["class", "None", "True", "nn", "torch", "float", "super", "self", "print", "exec", "Module",
                       "Sequential", "Parameter", "M"]

LAYERS_MODULE = '''
from torch import nn


class Anything(nn.Module):
    """Takes any keyword arguments (as a registered or imported layer may)."""

    def __init__(self, in_features, **kwargs):
        super().__init__()
        self.kwargs = kwargs
        self.fc = nn.Linear(in_features, in_features)

    def forward(self, x):
        return self.fc(x)
'''


@pytest.fixture(scope="module")
def layers_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pathlib.Path]:
    """A module of the user's own layers, importable here and by the child process."""
    directory = tmp_path_factory.mktemp("layers")
    (directory / "hostile_layers.py").write_text(LAYERS_MODULE)
    sys.path.insert(0, str(directory))
    try:
        module = importlib.import_module("hostile_layers")
        if "HostileAnything" not in resgraph.ops.generic.CUSTOM_OPS:
            resgraph.register_op("HostileAnything", module.Anything)
        yield directory / "hostile_layers.py"
    finally:
        sys.path.remove(str(directory))


def assert_only_definitions(source: str, docstring: str, allowed_imports: set[str] = frozenset()) -> str:
    """Check the module's structure (see the module docstring); returns the model class's name."""
    tree = ast.parse(source)
    assert ast.get_docstring(tree, clean=False) == docstring
    classes = [statement.name for statement in tree.body if isinstance(statement, ast.ClassDef)]
    assert len(set(classes)) == len(classes)
    file_names = {"torch", "nn", *classes, *(name.split(".")[0] for name in allowed_imports)}
    for statement in tree.body[1:]:
        if isinstance(statement, ast.Import):
            assert {alias.name for alias in statement.names} <= {"torch", *allowed_imports}
            assert all(alias.asname is None for alias in statement.names)
        elif isinstance(statement, ast.ImportFrom):
            assert statement.module == "torch" and [a.name for a in statement.names] == ["nn"]
        else:
            assert isinstance(statement, ast.ClassDef), ast.dump(statement)
            assert_plain_class(statement, file_names)
    for name in classes:
        assert name.isidentifier() and not keyword.iskeyword(name) and name not in RESERVED
    return classes[-1]


def assert_plain_class(cls: ast.ClassDef, file_names: set[str]) -> None:
    assert not cls.decorator_list and not cls.keywords and [ast.unparse(b) for b in cls.bases] == ["nn.Module"]
    docstring, init, forward = cls.body
    assert isinstance(docstring, ast.Expr) and isinstance(docstring.value, ast.Constant)
    assert isinstance(init, ast.FunctionDef) and init.name == "__init__"
    assert isinstance(forward, ast.FunctionDef) and forward.name == "forward"
    for method in (init, forward):
        arguments = method.args
        assert not method.decorator_list and not arguments.defaults and not arguments.kw_defaults
        assert not arguments.vararg and not arguments.kwarg and not arguments.kwonlyargs
        parameters = {a.arg for a in arguments.args}
        assert all(p.isidentifier() and not keyword.iskeyword(p) for p in parameters)
        assert "super" not in parameters and arguments.args[0].arg == "self"
    # __init__: super().__init__(), then `self.NAME = <construction>` only.
    first, *assignments = init.body
    assert ast.unparse(first) == "super().__init__()"
    for statement in assignments:
        assert isinstance(statement, ast.Assign) and len(statement.targets) == 1
        target = statement.targets[0]
        assert isinstance(target, ast.Attribute) and ast.unparse(target.value) == "self"
    # forward: an input guard (`if ...: raise ValueError(...)`), assignments, in-place adds into a
    # local (`t += s`), deletions, one return.
    body = forward.body
    while isinstance(body[0], ast.If):
        assert [type(s) for s in body[0].body] == [ast.Raise] and not body[0].orelse, ast.unparse(body[0])
        body = body[1:]
    assert all(isinstance(s, (ast.Assign, ast.Delete)) or (isinstance(s, ast.AugAssign) and isinstance(s.op, ast.Add)
                                                            and isinstance(s.target, ast.Name)) for s in body[:-1])
    assert isinstance(body[-1], ast.Return)
    locals_ = {t.id for s in body if isinstance(s, ast.Assign) for t in s.targets if isinstance(t, ast.Name)}
    guard_builtins = {"str", "tuple", "ValueError"} - locals_  # what the guard's message uses
    for method, known in ((init, file_names | {"super", "float"}), (forward, file_names | locals_ | guard_builtins)):
        parameters = {a.arg for a in method.args.args}
        for node in ast.walk(method):
            assert not isinstance(node, (ast.Lambda, ast.comprehension, ast.Import, ast.ImportFrom, ast.Global,
                                         ast.Nonlocal, ast.NamedExpr, ast.Await, ast.Yield)), ast.dump(node)
            if isinstance(node, ast.Name):
                assert node.id in known | parameters, f"{method.name} reads {node.id!r}"
            if isinstance(node, ast.Attribute):
                assert not node.attr.startswith("_") or ast.unparse(node) == "super().__init__", ast.unparse(node)


def run_exported(directory: pathlib.Path, cases: list[tuple[str, str, torch.nn.Module]],
                 extra: pathlib.Path | None = None) -> None:
    """Import each (source, class name, model) in one child process, in an otherwise empty
    directory: each exported model must equal its compiled model, and nothing else may happen."""
    directory.mkdir(exist_ok=True)
    if extra is not None:
        (directory / extra.name).write_text(extra.read_text())
    names = []
    for index, (source, class_name, model) in enumerate(cases):
        (directory / f"exported_{index}.py").write_text(source, encoding="utf-8")
        x = torch.randn(3, *model.graph.nodes[model.graph.inputs[0]].meta["type"].shape)
        with torch.no_grad():
            torch.save({"state": model.state_dict(), "x": x, "y": model.eval()(x)}, directory / f"check_{index}.pt")
        names.append(class_name)
    before = set(os.listdir(directory))
    probe = ("import importlib, sys, torch\n"
             "for index, name in enumerate(sys.argv[1:]):\n"
             "    exported = importlib.import_module(f'exported_{index}')\n"
             "    data = torch.load(f'check_{index}.pt')\n"
             "    net = getattr(exported, name)().eval()\n"
             "    net.load_state_dict(data['state'], strict=True)\n"
             "    with torch.no_grad():\n"
             "        torch.testing.assert_close(net(data['x']), data['y'], equal_nan=True)\n"
             "print('same', len(sys.argv) - 1)\n")
    env = {**os.environ, "PYTHONPATH": str(directory), "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run([sys.executable, "-c", probe, *names], cwd=directory, capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0 and result.stdout.split() == ["same", str(len(cases))], result.stderr[-3000:]
    assert set(os.listdir(directory)) == before  # importing wrote nothing: no PWNED, no other file
    assert not (ROOT / "PWNED").exists()


def header(model: torch.nn.Module, spec_file: str, options: str = "") -> str:
    """The docstring the export must carry, as text (`options`: the build's own, as the command to
    regenerate the file repeats them)."""
    import hashlib
    import shlex

    from resgraph.export_py import build_arguments

    digest = hashlib.sha256(model.build_record.spec.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    arguments = "".join(f", {argument}" for argument in build_arguments(model.build_record))
    command = (f"resgraph build {shlex.quote(spec_file)}{options} -o <this file>" if spec_file != "<string>" else
               f"resgraph.to_python(resgraph.build(spec{arguments}))  # spec: the YAML text it was built from")
    return (f"{model.graph.name}: generated by resgraph {resgraph.__version__} from {spec_file} "
            f"(spec sha256 {digest}...).\n\nPlain PyTorch: this file imports only torch. Regenerate it instead "
            f"of editing it:\n    {command}\n")


def test_hostile_file_names_are_data_in_the_docstring(tmp_path: pathlib.Path) -> None:
    cases = []
    for spec_file in HOSTILE_FILE_NAMES:
        model = resgraph.build(HEAD.format(name="M") + "  - fc: {op: Linear, out_features: 2}\n", file=spec_file,
                               seed=0)
        source = resgraph.to_python(model)
        assert_only_definitions(source, header(model, spec_file))
        cases.append((source, "M", model))
    run_exported(tmp_path / "run", cases)


def test_a_hostile_file_name_on_disk_through_the_cli(tmp_path: pathlib.Path) -> None:
    """The same through `resgraph build NAME -o model.py` and through a saved `.pt` file."""
    name = os.fsdecode(b'a"""; import os; os.system("touch PWNED"); """\xff\\N{x}.yaml')
    spec = tmp_path / name
    spec.write_text(HEAD.format(name="M") + "  - fc: {op: Linear, out_features: 2}\n")
    out = tmp_path / "model.py"
    result = subprocess.run([sys.executable, "-m", "resgraph", "build", os.fsencode(spec), "-o", str(out),
                             "--seed", "0"], capture_output=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    model = resgraph.build(spec, seed=0)
    assert_only_definitions(out.read_text(encoding="utf-8"), header(model, str(spec)))
    resgraph.save(model, tmp_path / "model.pt")
    loaded = resgraph.load(tmp_path / "model.pt")
    source = resgraph.to_python(loaded)
    assert source == out.read_text(encoding="utf-8")
    run_exported(tmp_path / "run", [(source, "M", model)])


def test_model_names_that_python_or_the_file_uses_are_renamed(tmp_path: pathlib.Path) -> None:
    cases = []
    for name in HOSTILE_MODEL_NAMES:
        model = resgraph.build(HEAD.format(name=f"'{name}'") + "  - fc: {op: Linear, out_features: 2}\n", seed=0)
        source = resgraph.to_python(model)
        class_name = assert_only_definitions(source, header(model, "<string>"))
        assert class_name == (name if name not in RESERVED else f"{name}_")
        cases.append((source, class_name, model))
    run_exported(tmp_path / "run", cases)


BLOCKS = """resgraph: 1
name: {name}
blocks:
  '{block}':
    layers:
      - super: {{op: Linear, out_features: 4}}
      - super_: {{op: Linear, out_features: 4}}
      - nn: {{op: ReLU}}
      - input: {{op: Tanh}}
      - print: {{op: Linear, out_features: 4}}
      - exec: {{op: Identity}}
    skips:
      - self_: {{from: x, to: print}}
  wrap:
    layers:
      - float_: {{block: '{block}'}}
inputs: {{x: [4]}}
layers:
  - stage: {{block: '{block}', repeat: 2}}
  - nested: {{block: wrap}}
  - fc: {{op: Linear, out_features: 3}}
"""


def test_block_and_layer_names_that_python_or_the_file_uses(tmp_path: pathlib.Path) -> None:
    cases = []
    for name, block in [("M", "none"), ("'None'", "none"), ("'True'", "true"), ("Nn", "nn"), ("Wrap", "other"),
                        ("'class'", "class_"), ("Print", "print"), ("Torch", "torch")]:
        model = resgraph.build(BLOCKS.format(name=name, block=block), seed=0)
        source = resgraph.to_python(model)
        cases.append((source, assert_only_definitions(source, header(model, "<string>")), model))
    run_exported(tmp_path / "run", cases)


HOSTILE_VALUES = {
    "quotes": 'a"""b\'\'\'c',
    "newline": "line\nimport os; os.system('touch PWNED')",
    "backslash": "C:\\Users\\N{BULLET}\\",
    "escape": "\x1b[31m\u202e",
    "nested": [[1, 2], [3, [4, 5.5]]],
    "none": None,
}
HOSTILE_KEYS = ["a b", "x=1); import os; os.system('touch PWNED')  #", "class", "1abc", "\u202e", "None"]


def test_hostile_argument_values_are_literals(layers_module: pathlib.Path, tmp_path: pathlib.Path) -> None:
    import yaml

    body = {"op": "HostileAnything", **HOSTILE_VALUES}
    text = HEAD.format(name="M") + "  - odd: " + yaml.safe_dump(body, default_flow_style=True, width=10**6)
    model = resgraph.build(text, seed=0)
    assert model.odd.kwargs.keys() == HOSTILE_VALUES.keys()
    source = resgraph.to_python(model)
    docstring = header(model, "<string>").replace("only torch", "torch and the modules of the spec's own layers")
    assert_only_definitions(source, docstring, {"hostile_layers"})
    tree = ast.parse(source)
    call = next(node for node in ast.walk(tree) if isinstance(node, ast.Call)
                and ast.unparse(node.func) == "hostile_layers.Anything")
    written = {k.arg: k.value for k in call.keywords}
    for key in HOSTILE_VALUES:  # each value reads back as exactly what the compiled layer was given
        rebuilt = eval(compile(ast.Expression(written[key]), "<literal>", "eval"), {"__builtins__": {"float": float}})
        assert repr(rebuilt) == repr(model.odd.kwargs[key]) and type(rebuilt) is type(model.odd.kwargs[key])
    run_exported(tmp_path / "run", [(source, "M", model)], extra=layers_module)


@pytest.mark.parametrize("value", ["{a: [1, [2, {b: null}]], 'c d': {e: true}}", ".inf", "-.inf", ".nan",
                                   "[.inf, {k: .nan}]"])
def test_values_without_a_plain_literal_are_refused_or_round_trip(value: str, layers_module: pathlib.Path) -> None:
    """Mappings and infinities: refused with their place, or written so they read back exactly."""
    import yaml

    text = HEAD.format(name="M") + f"  - odd: {{op: HostileAnything, value: {value}}}\n"
    try:
        model = resgraph.build(text, seed=0)
    except resgraph.SpecError as error:
        assert [(d.location.line, "'odd'" in d.message) for d in error.diagnostics] == [(5, True)]
        return
    source = resgraph.to_python(model)
    call = next(node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Call)
                and ast.unparse(node.func) == "hostile_layers.Anything")
    written = next(k.value for k in call.keywords if k.arg == "value")
    rebuilt = eval(compile(ast.Expression(written), "<literal>", "eval"), {"__builtins__": {"float": float}})
    assert repr(rebuilt) == repr(model.odd.kwargs["value"]) == repr(yaml.safe_load(value))


def test_hostile_argument_names_are_refused_or_passed_as_data(layers_module: pathlib.Path,
                                                               tmp_path: pathlib.Path) -> None:
    import yaml

    body = {"op": "HostileAnything", **{key: index for index, key in enumerate(HOSTILE_KEYS)}}
    text = HEAD.format(name="M") + "  - odd: " + yaml.safe_dump(body, default_flow_style=True, width=10**6)
    try:
        model = resgraph.build(text, seed=0)
    except resgraph.SpecError as error:  # refusing names that are not identifiers is just as safe
        assert all(d.location.line >= 1 for d in error.diagnostics)
        return
    source = resgraph.to_python(model)
    docstring = header(model, "<string>").replace("only torch", "torch and the modules of the spec's own layers")
    assert_only_definitions(source, docstring, {"hostile_layers"})
    run_exported(tmp_path / "run", [(source, "M", model)], extra=layers_module)


def test_argument_names_that_are_not_keywords_are_written_as_a_dict() -> None:
    kwargs = {key: index for index, key in enumerate(HOSTILE_KEYS)} | {"ok": 1}
    source = _call("nn.Identity", kwargs)
    call = ast.parse(source, mode="eval").body
    assert isinstance(call, ast.Call) and [k.arg for k in call.keywords] == ["ok", None]
    unpacked = eval(compile(ast.Expression(call.keywords[1].value), "<literal>", "eval"), {"__builtins__": {}})
    assert unpacked == {key: index for index, key in enumerate(HOSTILE_KEYS) if key != "ok"} | {"class": 2}


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), -0.0, 1e308, 5e-324, (1,), (),
                                   [1, (2.5, None)], {"a": [True, {"b": "c\n\"\"\""}]}, "\x1b\u202e\udcff",
                                   {1: "int keys"}, [float("inf"), {"nan": float("nan")}]])
def test_literals_round_trip_exactly(value: object) -> None:
    """Every value an argument can hold reads back as itself, with only `float` as a name."""
    source = _literal(value)
    tree = ast.parse(source, mode="eval")
    assert {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} <= {"float"}
    rebuilt = eval(compile(tree, "<literal>", "eval"), {"__builtins__": {"float": float}})
    assert repr(rebuilt) == repr(value) and type(rebuilt) is type(value)


@pytest.mark.parametrize("source", [
    '"""doc"""\nimport os\nos.system("x")\n',
    '"""doc"""\nfrom torch import nn\n\n\n@print\nclass A(nn.Module):\n    pass\n',
    '"""doc"""\nfrom torch import nn\n\n\nclass A(nn.Module, metaclass=type):\n    pass\n',
    '"""doc"""\nfrom torch import nn\n\n\nclass A(print("x") or nn.Module):\n    pass\n',
    '"""doc"""\nfrom torch import nn\n\n\nclass A(nn.Module):\n    x = print("x")\n',
    '"""doc"""\nfrom torch import nn\n\n\nclass A(nn.Module):\n    def f(self, a=print("x")):\n        pass\n',
    '"""doc"""\n"""; import os"""\n',
    '"""unterminated\n',
])
def test_the_exporter_refuses_source_that_would_run_code_on_import(source: str) -> None:
    with pytest.raises(resgraph.ResgraphError, match="internal error"):
        check_source(source)


def test_a_layer_that_cannot_be_written_is_a_located_error() -> None:
    """A class defined inside a function cannot be imported by name: refused, not written."""
    from torch import nn

    class Local(nn.Module):
        def __init__(self, in_features: int) -> None:
            super().__init__()
            self.fc = nn.Linear(in_features, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    if "ExportSafetyLocal" not in resgraph.ops.generic.CUSTOM_OPS:
        resgraph.register_op("ExportSafetyLocal", Local)
    model = resgraph.build(HEAD.format(name="M") + "  - local: {op: ExportSafetyLocal}\n")
    with pytest.raises(resgraph.SpecError, match=r"<string>:5:5: error: layer 'local' \(ExportSafetyLocal\): cannot be "
                                                 r"written as Python: its class .*cannot be imported by name"):
        resgraph.to_python(model)


def test_a_spec_built_with_allowed_imports_exports(tmp_path: pathlib.Path) -> None:
    text = HEAD.format(name="M") + ("  - act: {op: torch.nn.modules.activation.Hardtanh, min_val: -0.5}\n"
                                    "  - fc: {op: Linear, out_features: 3}\n")
    model = resgraph.build(text, allow_imports=["torch.nn"], seed=0)
    source = resgraph.to_python(model)
    assert "self.act = nn.Hardtanh(min_val=-0.5)" in source
    resgraph.save(model, tmp_path / "m.pt")
    resgraph.save(resgraph.load(tmp_path / "m.pt", allow_imports=["torch.nn"]), tmp_path / "m.py")
    assert (tmp_path / "m.py").read_text() == source
    assert_only_definitions(source, header(model, "<string>"))
    assert "resgraph.build(spec, allow_imports=['torch.nn'])" in source
    run_exported(tmp_path / "run", [(source, "M", model)])
