"""The ``edgeq`` command line, in the shape of tvmc and llama-quantize."""

from __future__ import annotations

import argparse
import importlib
import sys

from edgeq.commands import COMMANDS
from edgeq.errors import EdgeqError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeq", description="Quantize, export, compile and validate models for edge targets.")
    parser.add_argument("--version", action="version", version="edgeq 0.1.0")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"edgeq.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except EdgeqError as exc:
        print(f"edgeq {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"edgeq {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
