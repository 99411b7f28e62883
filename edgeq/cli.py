"""The ``edgeq`` command line, in the shape of tvmc and llama-quantize.

Exit status (docs/ERRORS.md): 0 done; 1 a check said no (validate disagrees, inspect
--integer-only finds a float op, device status finds none); 2 a usage error (argparse); each
``EdgeqError`` class its own ``exit_code``; 70 an internal error (a bug: ``EDGEQ_DEBUG=1`` shows
its traceback); 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from pathlib import Path

INTERNAL_ERROR = 70  # EX_SOFTWARE of sysexits.h
INTERRUPTED = 130  # 128 + SIGINT, as shells report it
DEBUG_ENV = "EDGEQ_DEBUG"


def build_parser() -> argparse.ArgumentParser:
    from edgeq.commands import COMMANDS

    parser = argparse.ArgumentParser(prog="edgeq", description="Quantize, export, compile and validate models for edge targets.",
                                     epilog="exit status: 0 done, 1 a check said no, 2 usage, 3-14 an edgeq error "
                                            "(docs/ERRORS.md), 70 internal error, 130 interrupted")
    parser.add_argument("--version", action="version", version="edgeq 0.1.0")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"edgeq.commands.{name}").register(sub)
    return parser


def one_line(text: str) -> str:
    """A message on one line: a library's multi-line text joined, blank lines dropped."""
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def main(argv: list[str] | None = None) -> int:
    from edgeq.errors import EdgeqError

    command = "edgeq"
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        args = build_parser().parse_args(argv)
        command = f"edgeq {args.command}"
        return args.func(args)
    except BrokenPipeError:  # `edgeq quantize --list | head`: the reader has all it wanted
        if is_cli_process():
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 0
    except KeyboardInterrupt:
        return _interrupted(command)
    except EdgeqError as exc:
        if debug:
            traceback.print_exc()
        print(f"{command}: error: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # a bug in edgeq, not bad input: one line, the traceback on request
        if caused_by_interrupt(exc):  # Ctrl-C inside a library's C initialisation, re-raised as its own error
            return _interrupted(command)
        if debug:
            traceback.print_exc()
        print(f"{command}: internal error: {type(exc).__name__}: {one_line(exc)} "
              f"(a bug in edgeq; run with {DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
        return INTERNAL_ERROR


def _interrupted(command: str) -> int:
    print(f"{command}: interrupted", file=sys.stderr)
    if is_cli_process():  # objects a library was building when Ctrl-C landed (TVM's TempDirectory)
        sys.unraisablehook = lambda unraisable: None  # complain from their finalizers at exit
    return INTERRUPTED


def caused_by_interrupt(exc: BaseException) -> bool:
    """Whether Ctrl-C is in ``exc``'s chain: onnxruntime's extension, interrupted while it
    initialises, raises ``ImportError("initialization failed")`` from the KeyboardInterrupt."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def is_cli_process() -> bool:
    """Whether this process is the ``edgeq`` command (the console script or ``python -m edgeq.cli``)."""
    argv = getattr(sys, "orig_argv", sys.argv)
    return Path(sys.argv[0]).name == "edgeq" or any(argv[i:i + 2] == ["-m", "edgeq.cli"] for i in range(len(argv)))


def exit_if_interrupted_cli(exc: BaseException) -> None:
    """Called when ``import edgeq`` fails while it loads its libraries (seconds, before ``main``
    runs): if Ctrl-C caused it, the command exits with one line and status 130; otherwise, and
    for a library user's import, the caller re-raises."""
    if caused_by_interrupt(exc) and is_cli_process():
        print("edgeq: interrupted", file=sys.stderr, flush=True)
        os._exit(INTERRUPTED)  # the interpreter is mid-import: leave without running its teardown


if __name__ == "__main__":
    sys.exit(main())
