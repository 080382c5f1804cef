"""Output formats: one table from file suffix to writer, read by the CLI (`-o`, `--diagram`) and the API
(`resgraph.save`, `resgraph.write_diagram`).

A writer is named as "module:function" and imported only when a file of its format is written,
so listing the formats (for `--help` and error messages) imports neither torch nor an optional
exporter. Adding a format is one row here and its writer function:

- a model writer is `write(model, path) -> None`;
- a diagram writer is `write(digraph, path, *, replace) -> str | None`, returning the path of a
  `.dot` file written instead when Graphviz cannot draw the format (`replace=False`: another
  file at `path` is left as it is, FileExistsError).

>>> find_format("model.onnx", "model").requires
('onnx', 'onnxscript')
>>> model_suffixes()
('.pt', '.pth', '.py', '.onnx')
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from .errors import UsageError

__all__ = ["FORMATS", "OutputFormat", "check_writable", "diagram_suffixes", "find_format", "model_suffixes",
           "refuse_model_sources", "refuse_sources", "save", "write_diagram"]

Kind = Literal["model", "diagram"]


@dataclass(frozen=True)
class OutputFormat:
    suffix: str  # ".pt"
    kind: Kind  # what it writes: a compiled model, or a diagram
    description: str  # for --help
    writer: str  # "module:function", relative to the resgraph package
    requires: tuple[str, ...] = ()  # optional packages the writer imports
    extra: str | None = None  # the pip extra that installs them

    def load_writer(self) -> Callable[..., Any]:
        """The writer function, after checking its optional packages are installed.

        Raises:
            UsageError: an optional package is missing (the message says how to install it).
        """
        missing = [name for name in self.requires if importlib.util.find_spec(name) is None]
        if missing:
            install = f"pip install 'resgraph[{self.extra}]'" if self.extra else f"pip install {' '.join(missing)}"
            raise UsageError(f"writing {self.suffix} files needs {' and '.join(missing)}: {install}")
        module, _, function = self.writer.partition(":")
        return getattr(importlib.import_module(f"resgraph.{module}"), function)


FORMATS: dict[str, OutputFormat] = {}


def _add(*formats: OutputFormat) -> None:
    for fmt in formats:
        if fmt.suffix in FORMATS:
            raise RuntimeError(f"output format {fmt.suffix} is registered twice")
        FORMATS[fmt.suffix] = fmt


_add(
    OutputFormat(".pt", "model", "weights and build record (resgraph.load, torch.load(weights_only=True))",
                 "artifact:save"),
    OutputFormat(".pth", "model", "the same as .pt", "artifact:save"),
    OutputFormat(".py", "model", "a standalone PyTorch file", "export_py:write_python"),
    OutputFormat(".onnx", "model", "ONNX", "onnx_export:to_onnx", ("onnx", "onnxscript"), "onnx"),
    OutputFormat(".svg", "diagram", "SVG (Graphviz)", "diagram:write_diagram"),
    OutputFormat(".png", "diagram", "PNG (Graphviz)", "diagram:write_diagram"),
    OutputFormat(".pdf", "diagram", "PDF (Graphviz)", "diagram:write_diagram"),
    OutputFormat(".dot", "diagram", "Graphviz DOT source", "diagram:write_diagram"),
    OutputFormat(".html", "diagram", "a self-contained page: the SVG with collapsible blocks and hover details",
                 "diagram:write_diagram"),
)


def model_suffixes() -> tuple[str, ...]:
    return tuple(s for s, f in FORMATS.items() if f.kind == "model")


def diagram_suffixes() -> tuple[str, ...]:
    return tuple(s for s, f in FORMATS.items() if f.kind == "diagram")


def find_format(path: str, kind: Kind) -> OutputFormat:
    """The format a path's suffix names (case-insensitive).

    Raises:
        UsageError: the suffix names no format of this kind.
    """
    suffix = os.path.splitext(path)[1].lower()
    fmt = FORMATS.get(suffix)
    if fmt is None or fmt.kind != kind:
        options = model_suffixes() if kind == "model" else diagram_suffixes()
        name = os.path.basename(path)
        if name.lower() in options:  # (`.svg` alone: a hidden file's name, with no suffix)
            raise UsageError(f"{path}: the name is only a suffix; give the {kind} file a name before it "
                             f"(e.g. {os.path.join(os.path.dirname(path), 'model' + name)})")
        raise UsageError(f"{path}: the {kind} file must end in {' or '.join(options)}")
    return fmt


def save(model: Any, path: str | os.PathLike[str], **options: Any) -> None:
    """Write a compiled model (or torch.compile's or DistributedDataParallel's wrapper of one: see
    `model.built_model`) to `path` in the format its suffix names (.pt, .pth, .py, .onnx), atomically.

    Args:
        options: the writer's own keyword arguments (.onnx: `opset`, `dynamic_batch`).
    Raises:
        UsageError: an unknown suffix, a missing optional package, an option the format does not
            take, a path that cannot be written or that is the spec the model was built from (or a
            block library it imports), or a module resgraph did not build.
        ResgraphError: the exporter failed.
    """
    from .files import path_name
    from .model import built_model

    name = path_name(path, "save's path")
    fmt = find_format(name, "model")
    writer = fmt.load_writer()
    model = built_model(model, "save")  # (a wrapper's: its model's)
    refuse_model_sources(name, model)
    accepted = inspect.signature(writer).parameters
    unknown = [key for key in options if key not in accepted or key in ("model", "module", "path")]
    if unknown:
        raise UsageError(f"{fmt.suffix} files take no option {', '.join(map(repr, unknown))}")
    check_writable(name)  # before the export, which may take minutes
    try:
        writer(model, name, **options)
    except OSError as exc:
        raise _cannot_write(name, exc) from None


def refuse_sources(path: str | os.PathLike[str], spec: str, imports: Iterable[str] = (), *,
                   flag: str | None = None) -> None:
    """Refuse an output that is a file it was made from, which writing would overwrite: the spec
    itself, or a block library it imports, by any path to it (`./spec.yaml`, a symlink, a hard link).
    The CLI's `-o` and `--diagram`, `save` and `write_diagram` all ask here.

    >>> refuse_sources("net.svg", "net.yaml")
    >>> try:
    ...     refuse_sources("./net.yaml", "net.yaml", flag="-o")
    ... except UsageError as exc:
    ...     print(exc)
    -o ./net.yaml: that is the spec file net.yaml; writing it would overwrite it. Name another file

    Args:
        flag: the command-line option that named `path`, said before it.
    Raises:
        UsageError: which file it is, and what to do.
    """
    from .errors import one_line
    from .files import same_file

    name = os.fspath(path)
    named = f"{flag} {one_line(name)}" if flag else one_line(name)
    for source, what in [(spec, "the spec file"), *((library, "the block library") for library in imports)]:
        if same_file(name, source):
            imported = "" if source == spec else " that the spec imports"
            raise UsageError(f"{named}: that is {what} {one_line(source)}{imported}; writing it would overwrite it. "
                             "Name another file")


def refuse_model_sources(path: str | os.PathLike[str], model: Any) -> None:
    """`refuse_sources` for a model from `build`, whose build record names its spec and libraries.

    Raises:
        UsageError: `path` is one of them.
    """
    record = model.build_record
    refuse_sources(path, record.file, [library for library, _ in record.imports or ()])


def check_writable(path: str | os.PathLike[str], *, replace: bool = True) -> None:
    """Refuse now an output that could not be written at the end (see `files.check_writable`): the
    CLI checks its outputs before it builds, and `save` before it exports.

    Args:
        replace: as for `write_diagram`.
    Raises:
        UsageError: `cannot write PATH: REASON` (a missing folder, a directory at PATH, ...).
        FileExistsError: `replace` is False and a symlink is at `path`.
    """
    from .files import check_writable as check

    name = os.fspath(path)
    try:
        check(name, replace=replace)
    except FileExistsError:
        raise
    except OSError as exc:
        raise _cannot_write(name, exc) from None


def _cannot_write(name: str, exc: OSError) -> UsageError:
    return UsageError(f"cannot write {name}: {exc.strerror or exc}")


def write_diagram(dot: Any, path: str | os.PathLike[str], *, replace: bool = True) -> str | None:
    """Write a diagram (`resgraph.render`'s result) in the format its suffix names, atomically.

    Args:
        replace: False leaves a file already at `path` as it is, unless it holds exactly this
            diagram (for a path the user did not name).
    Returns:
        None on success; when Graphviz's `dot` program is missing and the format needs it, the
        path of the .dot file written instead.
    Raises:
        UsageError: `dot` is no diagram (a model or spec: `render` draws one), an unknown suffix, a
            path that cannot be written, or one that is a file the diagram was drawn from (its
            `spec_files`, see `resgraph.render`).
        FileExistsError: `replace` is False and another file, or a symlink, is at `path`.
    """
    import graphviz

    if not isinstance(dot, graphviz.Digraph):  # (a model, a graph or a spec: each is drawn by `render` first)
        raise UsageError(f"write_diagram takes a diagram, not a {type(dot).__name__}; draw it first: "
                         "resgraph.write_diagram(resgraph.render(model_or_spec), path)")
    from .files import path_name

    name = path_name(path, "write_diagram's path")
    writer = find_format(name, "diagram").load_writer()
    drawn_from = getattr(dot, "spec_files", ())  # (none for a Digraph resgraph did not draw)
    if drawn_from:
        refuse_sources(name, drawn_from[0], drawn_from[1:])
    check_writable(name, replace=replace)
    try:
        return writer(dot, name, replace=replace)
    except FileExistsError:
        raise
    except OSError as exc:
        raise _cannot_write(name, exc) from None
