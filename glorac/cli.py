"""The ``glorac`` command line: a thin shell over the public pipeline functions.

Every user mistake surfaces as a GloraError, printed as one paragraph (or compiler-style
diagnostics) with a non-zero exit code; a traceback appears only with ``--debug``.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from .errors import GloraError, SpecError


def _cmd_check(args) -> int:
    from .dsl import analyze

    status = 0
    for file in args.files:
        spec, diagnostics = analyze(Path(file))
        if diagnostics:
            print(SpecError(diagnostics).render(), file=sys.stderr)
            status = 2
        elif args.json:
            print(spec.model_dump_json(indent=2))
        else:
            rules = sum(r.action == "adapt" for r in spec.rules)
            print(f"{file}: ok ({rules} adapt rule(s), {len(spec.trained)} trained module rule(s))")
    return status


def _cmd_fmt(args) -> int:
    from .dsl import format_source, read_spec_file

    status = 0
    for file in args.files:
        text, diagnostics = read_spec_file(file)
        if text is None:
            raise SpecError(diagnostics)
        formatted = format_source(text, file)
        if args.check:
            if formatted != text:
                print(f"{file}: not canonical (run `glorac fmt --write {file}`)", file=sys.stderr)
                status = 1
        elif args.write:
            if formatted != text:
                from .safeio import atomic_write_text

                atomic_write_text(Path(file), formatted, force=True)
                print(f"{file}: formatted")
        else:
            sys.stdout.write(formatted)
    return status


def _cmd_schema(args) -> int:
    from .ir import Spec

    print(json.dumps(Spec.model_json_schema(), indent=2))
    return 0


def version_line() -> str:
    """``glorac --version``: glorac's version and the installed torch's, from package
    metadata (torch is not imported, so this stays as fast as ``glorac check``)."""
    from importlib.metadata import PackageNotFoundError, version

    from .version import __version__

    try:
        torch_version = version("torch")
    except PackageNotFoundError:
        torch_version = "not installed"
    return f"glorac {__version__} (torch {torch_version})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glorac", description="GLoRA compiler: specs → supernet → search → folded weights"
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("--version", action="version", version=version_line(),
                        help="print glorac's and torch's versions and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("check", help="parse and validate .glora specs")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--json", action="store_true", help="print the validated IR as JSON")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("fmt", help="print specs in canonical form")
    p.add_argument("files", nargs="+", metavar="FILE")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 if a file is not canonical")
    mode.add_argument("--write", action="store_true", help="rewrite files in place (atomically)")
    p.set_defaults(func=_cmd_fmt)

    p = sub.add_parser("schema", help="print the JSON Schema of the spec IR")
    p.set_defaults(func=_cmd_schema)

    from . import commands  # torch-side commands register themselves

    commands.register(sub)
    from . import peft_commands  # to-peft, from-peft
    peft_commands.register(sub)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """glorac's own warnings read as one line for a user; anything else as Python prints it."""
    stream = file or sys.stderr
    if Path(filename).resolve().is_relative_to(Path(__file__).resolve().parent):
        stream.write(f"glorac: warning: {message}\n")
    else:
        stream.write(warnings.formatwarning(message, category, filename, lineno, line))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    warnings.showwarning = _show_warning
    try:
        args = build_parser().parse_args(argv)
        args.argv = list(argv)  # for messages that repeat the command (how to resume)
        return int(args.func(args) or 0)
    except GloraError as exc:
        if debug:
            raise
        print(exc.render(), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug in glorac, not the user's fault: say so plainly
        if debug:
            raise
        print(
            f"internal error: {type(exc).__name__}: {exc}\n"
            "This is a bug in glorac. Rerun with --debug for the traceback and report it.",
            file=sys.stderr,
        )
        return 70
