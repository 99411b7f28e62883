"""Append a benchmark's table to benchmarks/RESULTS.md with the command, the machine and the date."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.machine()}, {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def append_results(title: str, table: str, notes: str = "", command: str | None = None) -> None:
    """Append a section: title, date, machine, the command that made it, the table, notes."""
    command = command or "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    section = [
        f"\n## {title}\n",
        f"- date: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {machine()}",
        f"- command: `{command}`\n",
        table.rstrip() + "\n",
    ]
    if notes:
        section.append(notes.rstrip() + "\n")
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nEvery table here was written by a script in `benchmarks/`.\n")
    with RESULTS.open("a") as f:
        f.write("\n".join(section))


def print_and_record(title: str, table: str, notes: str, record: bool = True) -> None:
    """Print the table and its notes; append both to RESULTS.md unless ``record`` is False."""
    print(table)
    print(notes)
    if record:
        append_results(title, table, notes)


def markdown_table(headers, rows) -> str:
    lines = ["| " + " | ".join(map(str, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join("" if c is None else str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
              "avx512_bf16", "amx_tile", "asimd", "asimddp", "i8mm", "sve")


def cpu_flags(wanted: tuple[str, ...] = SIMD_FLAGS) -> str:
    """The SIMD features of ``wanted`` this CPU exposes (kernels dispatch on them: speeds and float
    results differ between hosts of the same kind)."""
    from edgeq.targets.registry import host_cpu_flags

    present = host_cpu_flags()
    if not present:
        return "unknown"
    return " ".join(f for f in wanted if f in present) or "none of " + " ".join(wanted)
