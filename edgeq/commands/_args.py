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


def _checked(kind, ok, why: str):
    """An argparse type: ``text`` parsed as ``kind`` (finite), refused with ``why`` unless ``ok(value)``."""

    def parse(text: str):
        value = _number(text, kind)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{value:g} {why}")
        return value

    return parse


positive_int = _checked(int, lambda v: v >= 1, "is not a positive integer (at least 1)")  # runs, samples, threads, sizes
non_negative_int = _checked(int, lambda v: v >= 0, "is negative")  # warm-up runs, seeds
positive_float = _checked(float, lambda v: v > 0, "is not positive")
non_negative_float = _checked(float, lambda v: v >= 0, "is negative")
fraction = _checked(float, lambda v: 0 <= v <= 1, "is not in [0, 1]")  # agreement rates
cosine = _checked(float, lambda v: -1 <= v <= 1, "is not in [-1, 1]")
port = _checked(int, lambda v: 1 <= v <= 65535, "is not a TCP port (1..65535)")


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


def check_device(device: str) -> None:
    """``--device`` of validate/profile: a harness device's name (armv7, hexagon-sim) or an RPC
    URL, checked before any work."""
    from edgeq.runtime.device import is_harness_device
    from edgeq.runtime.rpc import parse_device_url

    if not is_harness_device(device):
        parse_device_url(device)


def parse_dim_sizes(items: list[str], option: str, error) -> dict[str, int]:
    """A repeatable ``--option NAME=N`` (a symbolic dimension's size): ``["seq=8"]`` ->
    ``{"seq": 8}``; ``error`` (the command's EdgeqError subclass) for anything else."""
    sizes = {}
    for item in items:
        name, _, size = item.partition("=")
        if not name or not size.isdigit() or int(size) < 1:
            raise error(f"{option} {item!r}: expected NAME=N with N >= 1, e.g. seq=128")
        sizes[name] = int(size)
    return sizes
