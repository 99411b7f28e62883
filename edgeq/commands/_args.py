"""Argument types shared by the subcommands: argparse refuses an impossible count or ratio as a
usage error (exit 2, one line naming the option) before any work starts."""

from __future__ import annotations

import argparse
import math


def _number(text: str, kind):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (counts of runs, samples, threads, trials, sizes)."""
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer (at least 1)")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0 (warm-up runs, seeds)."""
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def positive_float(text: str) -> float:
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value:g} is not positive")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text, float)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value:g} is negative")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1] (agreement rates)."""
    value = _number(text, float)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{value:g} is not in [0, 1]")
    return value


def cosine(text: str) -> float:
    value = _number(text, float)
    if not -1 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{value:g} is not in [-1, 1]")
    return value


def port(text: str) -> int:
    value = _number(text, int)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port (1..65535)")
    return value


def parse_targets(values: list[str]) -> list[str]:
    """``--target a,b --target c`` -> ``["a", "b", "c"]``, each resolved in the registry first, so
    an unknown or empty name fails before any target is built."""
    from edgeq.errors import TargetError
    from edgeq.targets.registry import get_target

    names = []
    for arg in values:
        for name in arg.split(","):
            if not name.strip():
                raise TargetError(f"--target {arg!r}: empty target name; give names such as cpu or cpu,arm64")
            names.append(name.strip())
    for name in names:
        get_target(name)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise TargetError(f"--target names {', '.join(duplicates)} more than once")
    return names
