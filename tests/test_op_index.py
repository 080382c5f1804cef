"""The op index: `ops.OPS` knows every curated op's name without importing it, and imports only the
module that defines an op when the op is looked up. `ops/index.py` (generated) says where each op
lives; these tests keep it equal to what the op modules register.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT
from resgraph.ops import OPS, Layer
from resgraph.ops.base import OpRegistry
from resgraph.ops.index import OP_MODULES
from resgraph.schema import op_index, op_index_text

INDEX_FILE = ROOT / "resgraph" / "ops" / "index.py"


def test_the_committed_index_equals_what_the_op_modules_register() -> None:
    assert INDEX_FILE.read_text(encoding="utf-8") == op_index_text(), (
        "resgraph/ops/index.py drifted from the op modules' register_op calls: run `python -m resgraph.schema`")


def test_every_indexed_op_is_defined_in_its_module() -> None:
    index = op_index()
    assert index == OP_MODULES
    assert list(OPS) == list(index)  # nothing registered outside the index
    for name, module in index.items():
        assert OPS[name].__module__ == f"resgraph.ops.{module}"
        assert OPS[name].model_fields["op"].annotation.__args__ == (name,)


def _fresh(code: str) -> list[str]:
    """Run `code` in a new interpreter (nothing imported yet); its printed lines."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_names_are_known_without_importing_any_op_module_and_a_lookup_imports_one() -> None:
    lines = _fresh(
        "import sys\n"
        "from resgraph.ops import OPS\n"
        "def loaded(): return sorted(m for m in sys.modules if m.startswith('resgraph.ops.'))\n"
        "before = loaded()\n"
        "print(','.join(before))\n"
        "print('Conv2d' in OPS, 'Unknown' in OPS, len(OPS), sorted(OPS)[:2])\n"
        "print(loaded() == before)\n"
        "print(OPS['Linear'].__name__, OPS.get('Unknown'), sorted(set(loaded()) - set(before)))\n"
        "print(len(dict(OPS.items())) == len(OPS))\n")
    imported_by_the_package = lines[0].split(",")
    assert "resgraph.ops.conv" not in imported_by_the_package and "resgraph.ops.dense" not in imported_by_the_package
    assert lines[1] == f"True False {len(OP_MODULES)} {sorted(OP_MODULES)[:2]}"
    assert lines[2] == "True"
    assert lines[3] == "Linear None ['resgraph.ops.dense']"
    assert lines[4] == "True"


def test_a_family_member_is_created_on_its_first_lookup_and_its_siblings_are_not() -> None:
    lines = _fresh("from resgraph.ops import OPS\n"
                   "from resgraph.ops.conv import ConvBase\n"
                   "print(OPS['Conv2d'] is OPS['Conv2d'], sorted(c.__name__ for c in ConvBase.__subclasses__()))\n")
    assert lines == ["True ['Conv2d']"]


def test_a_promised_op_is_an_op_created_once_when_looked_up() -> None:
    registry = OpRegistry({}, "resgraph.ops")
    calls = []

    def create() -> None:
        calls.append(1)
        registry.register("Linear", OPS["Linear"])

    registry.promise("Linear", create)
    assert "Linear" in registry and list(registry) == ["Linear"] and calls == []
    assert registry["Linear"] is OPS["Linear"] and registry["Linear"] is OPS["Linear"] and calls == [1]
    with pytest.raises(RuntimeError, match="registered twice"):
        registry.promise("Linear", create)


def test_an_unknown_name_is_a_key_error_and_a_second_registration_an_error() -> None:
    registry = OpRegistry({"Linear": "dense"}, "resgraph.ops")
    assert "Linear" in registry and list(registry) == ["Linear"] and len(registry) == 1
    with pytest.raises(KeyError):
        registry["Conv2d"]
    # Its classes come from register calls (an op module's import); here one is made by hand.
    registry.register("Linear", OPS["Linear"])
    assert registry["Linear"] is OPS["Linear"]
    with pytest.raises(RuntimeError, match="registered twice"):
        registry.register("Linear", OPS["Linear"])


def test_a_stale_index_says_how_to_regenerate_it() -> None:
    registry = OpRegistry({"Conv2d": "dense"}, "resgraph.ops")  # dense registers no Conv2d
    with pytest.raises(RuntimeError, match=r"python -m resgraph\.schema"):
        registry["Conv2d"]


def test_an_op_registered_outside_the_index_is_an_op() -> None:
    registry = OpRegistry({"Linear": "dense"}, "resgraph.ops")
    registry.register("Conv2d", OPS["Conv2d"])  # as an op module missing from the index would
    assert "Conv2d" in registry and registry["Conv2d"] is OPS["Conv2d"]
    assert list(registry) == ["Linear", "Conv2d"] and len(registry) == 2


def test_no_op_model_leaves_its_subclasses_a_class_var_to_evaluate() -> None:
    # pydantic evaluates a base's non-field annotations again for every subclass; resolved once, they
    # cost nothing per op (a string here would be compiled and evaluated ~100 times at start-up).
    for cls in {base for op in OPS.values() for base in op.__mro__ if issubclass(base, Layer)}:
        fields = cls.__dict__.get("__pydantic_fields__", {})
        unresolved = [name for name, value in cls.__dict__.get("__annotations__", {}).items()
                      if isinstance(value, str) and name not in fields]
        assert not unresolved, f"{cls.__qualname__}: {unresolved}"
