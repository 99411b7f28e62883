"""Device state (``state.json``) is trusted only when its pid is this device's server for the
recorded port: ``edgeq device stop`` never signals an unrelated process and ``device status``
never reports one. Every test works in a temporary XDG_CACHE_HOME (the shared device's state
under ~/.cache/edgeq is not touched)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from edgeq.cli import main
from edgeq.runtime import device as dev

# Listens on the port given after --port, like the device's server; its argv mimics qemu-user's.
LISTENER = ("import socket, sys, time; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
            "s.bind(('127.0.0.1', int(sys.argv[sys.argv.index('--port') + 1]))); s.listen(); time.sleep(120)")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = dev.device_dir("arm64")
    folder.mkdir(parents=True)
    return folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _record(folder, pid: int, port: int) -> None:
    state = {"name": "arm64", "pid": pid, "host": "127.0.0.1", "port": port, "key": "", "tracker": None,
             "started": time.time()}
    (folder / "state.json").write_text(json.dumps(state))


@pytest.fixture
def stranger():
    """An unrelated process (``sleep 60``) that a stale state.json might name."""
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


def test_stop_never_signals_the_unrelated_process_a_stale_state_names(cache, stranger, capsys):
    _record(cache, stranger.pid, _free_port())
    assert main(["device", "stop", "arm64"]) == 0
    assert "arm64 device was not running" in capsys.readouterr().out
    time.sleep(0.2)
    assert stranger.poll() is None, "device stop signalled an unrelated process"
    assert not (cache / "state.json").exists()


def test_status_never_reports_an_unrelated_process(cache, stranger, capsys):
    _record(cache, stranger.pid, _free_port())
    assert dev.device_status("arm64") is None
    assert not (cache / "state.json").exists()
    _record(cache, stranger.pid, _free_port())
    assert main(["device", "status", "arm64", "--json"]) == 1
    assert json.loads(capsys.readouterr().out) == {"name": "arm64", "running": False}
    assert stranger.poll() is None


def test_an_unrelated_listener_on_the_recorded_port_is_not_the_device(cache, tmp_path):
    """The port answering is not enough: the pid's command line must be the device's server."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-c", LISTENER, "--host", "127.0.0.1", "--port", str(port)],
                            start_new_session=True)
    try:
        _wait_listening(port)
        _record(cache, proc.pid, port)
        assert dev.device_status("arm64") is None
        _record(cache, proc.pid, port)
        assert dev.stop_device("arm64") is False
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("text", ["{", "[]", '{"pid": 1}', json.dumps({"name": "arm64", "pid": 0, "host": "127.0.0.1",
                                  "port": 9190, "key": "", "tracker": None, "started": 0})])
def test_ill_formed_state_is_discarded(cache, text):
    (cache / "state.json").write_text(text)
    assert dev.device_status("arm64") is None and dev.stop_device("arm64") is False
    assert not (cache / "state.json").exists()


@pytest.fixture
def lookalike_server(cache, tmp_path):
    """A process whose command line is the device's server (qemu-user name, this device's
    server.py, --host, --port) and that listens on that port: what ``launch_server`` starts."""
    qemu = tmp_path / "bin" / dev.device_spec("arm64").qemu
    qemu.parent.mkdir()
    qemu.symlink_to(sys.executable)
    port = _free_port()
    proc = subprocess.Popen([str(qemu), "-c", LISTENER, str(cache / "server.py"), "--host", "127.0.0.1", "--port", str(port)],
                            start_new_session=True)
    _wait_listening(port)
    yield proc, port
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_the_device_server_itself_is_reported_and_stopped(cache, lookalike_server):
    proc, port = lookalike_server
    _record(cache, proc.pid, port)
    state = dev.device_status("arm64")
    assert state is not None and (state.pid, state.port) == (proc.pid, port)
    _record(cache, proc.pid, port + 1)  # the same server, but the state names another port
    assert dev.device_status("arm64") is None
    _record(cache, proc.pid, port)
    assert dev.stop_device("arm64") is True
    proc.wait(timeout=10)
    assert not (cache / "state.json").exists()
