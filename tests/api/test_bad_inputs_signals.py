"""Interrupted runs (#15), with real signals sent to a real ``edgeq`` process: Ctrl-C at any point
is one line and exit 130 with nothing left at the output path; a SIGKILLed writer's hidden
temporary (``.NAME.edgeq-tmp-PID-...``) is removed by the next run that writes in that folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest

from test_bad_inputs import tiny_model

CLI = [sys.executable, "-m", "edgeq.cli"]


def temps(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if ".edgeq-tmp-" in p.name] if folder.exists() else []


def _interruptible() -> None:
    """A shell's Ctrl-C reaches a foreground command with SIGINT at its default action; a pytest-xdist
    worker ignores SIGINT, and an ignored signal stays ignored across exec (Python then installs no
    KeyboardInterrupt handler), so the child gets the default back before it starts."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(args, **kw) -> subprocess.Popen:
    return subprocess.Popen(CLI + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_interruptible, **kw)


def wait_for_temp(proc: subprocess.Popen, folder: Path, timeout_s: float = 120.0) -> list[Path]:
    """Poll until the writer's temporary appears in ``folder`` (or the process ends)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        found = temps(folder)
        if found:
            return found
        time.sleep(0.002)
    return []


@pytest.fixture
def tiny(tmp_path) -> Path:
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny_model(), str(path))
    return path


def test_ctrl_c_while_the_libraries_load(tiny):
    """Was: a KeyboardInterrupt traceback from inside ``import torch``."""
    proc = start(["inspect", str(tiny)])
    time.sleep(1.0)  # torch, onnx and TVM take several seconds to import
    assert proc.poll() is None, "the command ended before the signal: nothing was tested"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip() == "edgeq: interrupted"


def test_ctrl_c_while_compiling_leaves_nothing(tiny, tmp_path):
    out = tmp_path / "out"
    proc = start(["compile", str(tiny), "--target", "cpu", "-o", str(out)])
    assert wait_for_temp(proc, out), "the artifact's temporary never appeared"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "edgeq compile: interrupted" and "Traceback" not in err
    assert not list(out.iterdir()), sorted(p.name for p in out.iterdir())


def test_sigkilled_compile_temp_is_cleaned_by_the_next_run(tiny, tmp_path):
    """Was: a SIGKILLed compile left ``.tiny.cpu.so.XXXX.so`` that no later run removed."""
    out = tmp_path / "out"
    proc = start(["compile", str(tiny), "--target", "cpu", "-o", str(out)])
    left = wait_for_temp(proc, out)
    assert left, "the artifact's temporary never appeared"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert all(p.exists() for p in left) and not (out / "tiny.cpu.so").exists()
    assert f"-{proc.pid}-" in left[0].name  # the writer's pid is in the name

    import edgeq

    artifact = edgeq.compile(tiny, target="cpu", out_dir=out)
    assert not temps(out)
    assert sorted(p.name for p in out.iterdir()) == ["tiny.cpu.json", "tiny.cpu.so"]
    assert artifact.path.stat().st_size > 0


def test_a_live_writers_temp_is_kept(tmp_path):
    """Cleaning removes only the temporaries of processes that are gone."""
    from edgeq._io import atomic_write_text, clean_stale_temps

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".model.onnx.edgeq-tmp-{sleeper.pid}-abc.tmp"
        live.write_text("still being written")
        dead = tmp_path / ".model.onnx.edgeq-tmp-999999999-abc.tmp"  # above any pid_max
        dead.write_text("left by a killed run")
        dead_dir = tmp_path / ".model.onnx.edgeq-tmp-999999998-xyz"
        dead_dir.mkdir()
        (dead_dir / "model.onnx.data").write_text("staged external data")
        other = tmp_path / ".cache-not-ours"
        other.write_text("someone else's")
        atomic_write_text(tmp_path / "report.json", "{}")
        assert live.exists() and other.exists() and not dead.exists() and not dead_dir.exists()
        assert clean_stale_temps(tmp_path) == []
    finally:
        sleeper.kill()
        sleeper.wait()
    assert os.path.exists(live)
    assert clean_stale_temps(tmp_path) == [live]


def test_a_reader_that_stops_early_is_no_error():
    """``edgeq quantize --list | head -1``: the closed pipe ends the listing quietly with exit 0."""
    proc = start(["quantize", "--list"], bufsize=0)
    proc.stdout.readline()
    proc.stdout.close()  # the reader is done: every later write meets a closed pipe
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0, err
    assert "error" not in err and "Traceback" not in err, err


def _initialization_failed() -> ImportError:
    """What onnxruntime raises when Ctrl-C lands inside its extension's initialisation."""
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as interrupt:
            raise ImportError("initialization failed") from interrupt
    except ImportError as exc:
        return exc


def test_an_import_error_from_ctrl_c_is_an_interruption(monkeypatch, capsys):
    """Was (CI, 2026-12-06): Ctrl-C inside onnxruntime's initialisation ended in an ImportError traceback, exit 1."""
    from edgeq import cli

    assert cli.caused_by_interrupt(_initialization_failed())
    assert not cli.caused_by_interrupt(ImportError("no module named onnxruntime"))

    def command(args):
        raise _initialization_failed()

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    monkeypatch.setattr(parser, "parse_args", lambda argv: type("Args", (), {"command": "inspect", "func": command}))
    assert cli.main(["inspect", "x.onnx"]) == cli.INTERRUPTED
    assert capsys.readouterr().err.strip() == "edgeq inspect: interrupted"
