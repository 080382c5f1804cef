"""Files the package ships, found wherever resgraph is installed: the JSON Schema and the block library.

A spec imports a shipped block library by name, `imports: [resgraph:blocks/resnet.yaml]`. The
name stays that string everywhere (error locations, build records), so a model saved on one
machine rebuilds on another where resgraph is installed elsewhere, and a shipped library's own
relative imports (`other.yaml` inside `resgraph:blocks/resnet.yaml`) name shipped files too.

The package's copies are the sources: `schemas/resgraph.schema.json` and `examples/blocks/*.yaml`
in the repository are copies that a test keeps identical.

>>> shipped_libraries()
['resgraph:blocks/resnet.yaml']
>>> read_import("resgraph:blocks/resnet.yaml").file
'resgraph:blocks/resnet.yaml'
"""

from __future__ import annotations

import pathlib

from .errors import UsageError
from .loader import LoadedSpec, load_import, load_library_text, load_text
from .suggest import did_you_mean

__all__ = ["PACKAGE_DIR", "SHIPPED", "is_shipped", "read_import", "read_shipped", "schema_path", "shipped_libraries"]

SHIPPED = "resgraph:"  # the prefix of an import that names a file shipped in the package
PACKAGE_DIR = pathlib.Path(__file__).resolve().parent


def schema_path() -> pathlib.Path:
    """The installed JSON Schema (`resgraph schema --path`), for editors' `$schema=` modelines."""
    return PACKAGE_DIR / "schemas" / "resgraph.schema.json"


def shipped_libraries() -> list[str]:
    """The importable names of the shipped block libraries, sorted."""
    return sorted(f"{SHIPPED}{path.relative_to(PACKAGE_DIR).as_posix()}"
                  for path in (PACKAGE_DIR / "blocks").glob("*.yaml"))


def is_shipped(path: str) -> bool:
    """True for a name of a shipped file (`resgraph:...`), which is not resolved against a directory."""
    return path.startswith(SHIPPED)


def read_shipped(name: str) -> LoadedSpec:
    """Read a shipped file by its name (`resgraph:blocks/resnet.yaml`); the name is its location in errors.

    Raises:
        UsageError: resgraph ships no block library of that name (only the names
            `shipped_libraries` lists are read, so a name cannot reach outside the package).
        SpecError: the text is not valid, safe YAML.
    """
    return load_text(_shipped_text(name), name)


def _shipped_text(name: str) -> str:
    available = shipped_libraries()
    if name not in available:
        raise UsageError(f"{name}: resgraph ships no such file (it ships {', '.join(available)})"
                         f"{did_you_mean(name, available)}")
    return (PACKAGE_DIR / name[len(SHIPPED):]).read_text(encoding="utf-8")


def read_import(path: str) -> LoadedSpec:
    """Read a file a spec's `imports:` names: a shipped library by name, anything else from disk
    (`loader.load_import`, which holds it to the rules for files a spec names).

    Raises:
        UsageError: the file cannot be read or is refused, or resgraph ships no library of that name.
        SpecError: the text is not valid, safe YAML.
    """
    return load_library_text(_shipped_text(path), path) if is_shipped(path) else load_import(path)
