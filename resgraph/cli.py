"""The `resgraph` command: a thin layer that parses arguments, calls the library, prints.

Exit codes: 0 success, 1 the spec is invalid, 2 usage error (bad flags, missing file).
Heavy imports happen inside commands, so `--help`, `schema` and `validate` never load torch.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Sequence

from .errors import ResgraphError, SpecError, UsageError
from .formats import diagram_suffixes, find_format
from .version import __version__

__all__ = ["main"]

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.run(args)
    except SpecError as exc:
        print(exc.format(), file=sys.stderr)
        return EXIT_INVALID
    except UsageError as exc:
        print(f"resgraph: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ResgraphError as exc:
        print(f"resgraph: error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resgraph",
        description="Declarative PyTorch architectures with named skip edges and automatic projections.")
    parser.add_argument("--version", action="version", version=f"resgraph {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    validate = commands.add_parser("validate", help="check specs (schema, names, shapes); print every error")
    validate.add_argument("specs", nargs="+", metavar="SPEC", help="spec files (YAML)")
    _add_set(validate)
    validate.set_defaults(run=_validate)

    build = commands.add_parser("build", help="compile a spec and print its summary")
    build.add_argument("spec", metavar="SPEC", help="spec file (YAML)")
    build.add_argument("--json", action="store_true", help="print the summary as JSON")
    build.add_argument("--seed", type=int, help="initialise weights deterministically")
    build.add_argument("-o", "--output", metavar="FILE",
                       help=f"save the model; the suffix picks the format: {_listed('model')}")
    build.add_argument("--code", action="store_true", help="print the generated forward() instead of the summary")
    build.add_argument("--depth", type=_positive, metavar="N",
                       help="module levels to show (1: top level only; default: all)")
    build.add_argument("--max-params", type=_positive, metavar="N", default=None,
                       help="refuse, before allocating weights, a model with more parameters (default: 2^31)")
    build.add_argument("--device", metavar="DEVICE",
                       help="where to allocate the weights: cpu (default), cuda, cuda:1, ... or meta "
                            "(allocate nothing: summary, code and diagram of a model of any size, no limit)")
    build.add_argument("--diagram", metavar="FILE",
                       help=f"also draw the architecture to FILE ({', '.join(diagram_suffixes())})")
    _add_set(build)
    build.set_defaults(run=_build)

    render = commands.add_parser("render", help="draw the architecture with Graphviz")
    render.add_argument("spec", metavar="SPEC", help="spec file (YAML)")
    render.add_argument("-o", "--output", metavar="FILE",
                        help=f"the diagram (default: SPEC's name with .svg); the suffix picks the format: "
                             f"{', '.join(diagram_suffixes())}")
    render.add_argument("--depth", type=_positive, metavar="N",
                        help="module levels to show (1: each block call is one node; default: all)")
    render.add_argument("--fold-repeats", action="store_true", help="draw a repeated block once, labelled xN")
    render.add_argument("--rankdir", choices=("TB", "LR"), default="TB",
                        help="top-to-bottom (default) or left-to-right")
    render.add_argument("--no-shapes", action="store_true", help="leave out output shapes")
    render.add_argument("--no-params", action="store_true", help="leave out parameter counts")
    render.add_argument("--no-args", action="store_true", help="leave out op arguments (kernel, stride, ...)")
    _add_set(render)
    render.set_defaults(run=_render)

    schema = commands.add_parser("schema", help="print the spec language's JSON Schema")
    schema.set_defaults(run=_schema)
    return parser


def _listed(kind: str) -> str:
    from .formats import FORMATS

    return ", ".join(f"{fmt.suffix} ({fmt.description})" for fmt in FORMATS.values() if fmt.kind == kind)


def _positive(text: str) -> int:
    value = int(text) if text.isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _add_set(command: argparse.ArgumentParser) -> None:
    command.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", dest="overrides",
                         help="override a spec parameter (VALUE is read as YAML: 10, 0.5, true, [1, 2]); repeatable")
    command.add_argument("--allow-import", action="append", default=[], metavar="PREFIX", dest="allow_imports",
                         help="let the spec name classes under this module prefix (op: PREFIX.module.Class); "
                              "repeatable; without it a spec cannot make resgraph import code")


def _overrides(pairs: list[str]) -> dict[str, object]:
    import yaml

    values: dict[str, object] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--set {pair}: expected NAME=VALUE")
        try:
            values[name.strip()] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            raise UsageError(f"--set {pair}: {text!r} is not a YAML value") from None
    return values


def _validate(args: argparse.Namespace) -> int:
    from .api import check

    status = EXIT_OK
    for path in args.specs:
        try:
            graph = check(pathlib.Path(path), params=_overrides(args.overrides), allow_imports=args.allow_imports)
        except SpecError as exc:
            print(exc.format(), file=sys.stderr)
            status = EXIT_INVALID
            continue
        except UsageError as exc:
            print(f"resgraph: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        graphs = [graph, *(g for _, g in graph.subgraphs())]
        nodes = [n for g in graphs for n in g.nodes.values()]
        projected = sum(1 for n in nodes if n.meta.get("projection") and not n.meta["projection"].is_identity)
        print(f"{path}: ok ({len(nodes)} nodes, {projected} projection{'s' if projected != 1 else ''})")
    return status


def _build(args: argparse.Namespace) -> int:
    # Refuse an unknown output format before any work is done.
    if args.output:
        find_format(args.output, "model")
    if args.diagram:
        find_format(args.diagram, "diagram")
    if args.device == "meta" and args.output and find_format(args.output, "model").suffix != ".py":
        raise UsageError(f"-o {args.output}: a model built with --device meta has no weights to save; "
                         "build it on a real device, or write its code with -o FILE.py")
    from .api import DEFAULT_MAX_PARAMS, build, render
    from .formats import save
    from .summary import format_summary, summarize

    module = build(pathlib.Path(args.spec), params=_overrides(args.overrides), seed=args.seed,
                   max_params=args.max_params or DEFAULT_MAX_PARAMS, allow_imports=args.allow_imports,
                   device=_device(args.device))
    if args.output:
        save(module, args.output)
    status = EXIT_OK
    if args.diagram:
        status = _draw(render(module), args.diagram)
    if args.code:
        print(module.code, end="")
        return status
    summary = summarize(module, depth=args.depth)
    if args.json:
        import json

        data = summary.to_dict()
        if args.output:
            data["saved"] = args.output
        print(json.dumps(data, indent=2))
    else:
        print(format_summary(summary))
        if args.output:
            print(f"Saved: {args.output}")
    return status


def _device(name: str | None) -> object:
    """The torch.device `--device` names (None: the default), or a usage error saying why not."""
    if name is None:
        return None
    import torch

    try:
        return torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise UsageError(f"--device {name}: {str(exc).splitlines()[0]} (e.g. cpu, cuda, cuda:1, meta)") from None


def _render(args: argparse.Namespace) -> int:
    output = args.output or str(pathlib.Path(args.spec).with_suffix(".svg").name)
    find_format(output, "diagram")
    from .api import render

    dot = render(pathlib.Path(args.spec), params=_overrides(args.overrides), shapes=not args.no_shapes,
                 param_counts=not args.no_params, args=not args.no_args, depth=args.depth,
                 fold_repeats=args.fold_repeats, rankdir=args.rankdir, allow_imports=args.allow_imports)
    status = _draw(dot, output)
    if status == EXIT_OK:
        print(f"Wrote {output}")
    return status


def _draw(dot: object, path: str) -> int:
    """Write the diagram; without Graphviz's `dot`, write the .dot source and say how to get it."""
    from .formats import write_diagram

    fallback = write_diagram(dot, path)
    if fallback is None:
        return EXIT_OK
    print(f"resgraph: error: cannot draw {path}: Graphviz's `dot` program is not installed.\n"
          f"  Wrote the diagram source to {fallback} instead.\n"
          f"  Install Graphviz (Debian/Ubuntu: apt-get install graphviz; macOS: brew install graphviz;\n"
          f"  others: https://graphviz.org/download/), then run again, or: dot -T{pathlib.Path(path).suffix[1:]} "
          f"{fallback} -o {path}", file=sys.stderr)
    return EXIT_INVALID


def _schema(args: argparse.Namespace) -> int:
    from .schema import schema_text

    sys.stdout.write(schema_text())
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
