"""Run a compiled artifact on a device over TVM RPC: ``rpc://host:port`` (one device) or
``tracker://host:port/key`` (a TVM RPC tracker that hands out a free device with that key, the
way a farm of phones and boards is shared).

TVM's RPC client has no time limit of its own: a device that stops answering blocks the caller
forever. Every remote step here runs under a watchdog (the blocking FFI call releases the GIL),
so a dead or frozen device becomes a RuntimeExecError within a bounded time.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import numpy as np

from edgeq.errors import RuntimeExecError, first_line
from edgeq.runtime.executors import Executor, Inputs, check_shared_library, flatten_tvm_outputs

CONNECT_TIMEOUT_S = 60.0  # a reachable device or tracker may be busy with another session
REACH_TIMEOUT_S = 5.0  # an unreachable one fails within this
CALL_TIMEOUT_S = 300.0
SESSION_TIMEOUT_S = 1800.0  # the server ends a session (and its worker) after this long


@dataclass(frozen=True)
class DeviceUrl:
    scheme: str  # "rpc" or "tracker"
    host: str
    port: int
    key: str = ""

    def __str__(self) -> str:
        base = f"{self.scheme}://{self.host}:{self.port}"
        return f"{base}/{self.key}" if self.scheme == "tracker" else base


def parse_device_url(url: str) -> DeviceUrl:
    """``rpc://host:port`` or ``tracker://host:port/key``; a RuntimeExecError otherwise."""
    parsed = urlparse(url)
    key = parsed.path.strip("/")
    try:
        port = parsed.port
    except ValueError:
        port = None
    if parsed.scheme not in ("rpc", "tracker") or not parsed.hostname or port is None:
        raise RuntimeExecError(f"device {url!r}: expected rpc://host:port or tracker://host:port/key")
    if parsed.scheme == "tracker" and not key:
        raise RuntimeExecError(f"device {url!r}: a tracker URL names the device key: tracker://host:port/key")
    return DeviceUrl(parsed.scheme, parsed.hostname, port, key)


def bounded(fn: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Run ``fn`` in a watchdog thread; RuntimeExecError if it fails or takes over ``timeout_s``."""
    result: dict[str, Any] = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised below as one clear line
            result["error"] = exc

    worker = threading.Thread(target=target, daemon=True, name=f"edgeq-rpc: {what}")
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise RuntimeExecError(f"{what}: the device did not answer within {timeout_s:.0f} s")
    if "error" in result:
        exc = result["error"]
        first = first_line(exc)
        if "kShutdown" in first or "connection" in first.lower() or "socket" in first.lower():
            first = f"the device closed the connection (it died or was stopped): {first}"
        raise RuntimeExecError(f"{what}: {first}") from None
    return result.get("value")


def require_reachable(dev: DeviceUrl, timeout_s: float = REACH_TIMEOUT_S) -> None:
    """A RuntimeExecError naming ``dev`` unless its host accepts a TCP connection on its port
    within ``timeout_s``. TVM's own connect retries an unreachable tracker for 60 s (and an RPC
    server for ~5 s with a C++ check message); this says so at once."""
    try:
        with socket.create_connection((dev.host, dev.port), timeout=timeout_s):
            return
    except OSError as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__).lower()
    if dev.scheme == "tracker":
        raise RuntimeExecError(f"{dev}: no RPC tracker answers at {dev.host}:{dev.port} ({why}); check the URL")
    raise RuntimeExecError(f"{dev}: no device answers at {dev.host}:{dev.port} ({why}); check the URL, or start "
                           "the emulated one with `edgeq device start arm64`")


def connect(url: str | DeviceUrl, session_timeout_s: float = SESSION_TIMEOUT_S, timeout_s: float = CONNECT_TIMEOUT_S):
    """An RPC session with the device at ``url`` (directly or through a tracker)."""
    import tvm.rpc

    dev = url if isinstance(url, DeviceUrl) else parse_device_url(url)
    require_reachable(dev)
    if dev.scheme == "rpc":
        return bounded(lambda: tvm.rpc.connect(dev.host, dev.port, key=dev.key, session_timeout=session_timeout_s),
                       timeout_s, f"connecting to {dev}")
    return bounded(
        lambda: tvm.rpc.connect_tracker(dev.host, dev.port).request(dev.key, session_timeout=session_timeout_s, max_retry=3),
        timeout_s, f"requesting a {dev.key!r} device from {dev}",
    )


class RpcExecutor(Executor):
    """A compiled Relax artifact run by TVM's VM on a remote device."""

    def __init__(self, artifact_path: str | Path, url: str, entry: str = "main", call_timeout_s: float = CALL_TIMEOUT_S):
        import tvm
        from tvm import relax

        from edgeq.targets.compile import Artifact
        from edgeq.targets.registry import get_target

        self.artifact = Artifact.load(artifact_path)
        spec = get_target(self.artifact.target)
        if spec.artifact == "so":  # a truncated library would crash the device's server
            check_shared_library(self.artifact.path, spec.machine)
        self.url = parse_device_url(url)
        self.name = f"tvm-rpc:{self.artifact.target}"
        self.entry = entry
        self.call_timeout_s = call_timeout_s
        self._tvm = tvm
        self.session = connect(self.url)
        where = f"{self.artifact.path.name} on {self.url}"
        bounded(lambda: self.session.upload(str(self.artifact.path)), call_timeout_s, f"uploading {where}")
        lib = bounded(lambda: self.session.load_module(self.artifact.path.name), call_timeout_s, f"loading {where}")
        self.device = self.session.cpu()
        self.vm = bounded(lambda: relax.VirtualMachine(lib, self.device), call_timeout_s, f"starting the VM for {where}")

    def close(self) -> None:
        """End the RPC session: the device serves one session at a time."""
        import gc

        self.vm = self.session = self.device = None
        gc.collect()

    def _remote_args(self, inputs: Inputs) -> list:
        return [self._tvm.runtime.tensor(np.ascontiguousarray(x), self.device) for x in inputs]

    def run(self, inputs: Inputs) -> list[np.ndarray]:
        def call():
            # A tuple result stays a remote object; the VM's stateful interface fetches its fields.
            self.vm.set_input(self.entry, *self._remote_args(inputs))
            self.vm.invoke_stateful(self.entry)
            return flatten_tvm_outputs(self.vm.get_outputs(self.entry))

        return bounded(call, self.call_timeout_s, f"running {self.artifact.path.name} on {self.url}")

    def time_runs(self, inputs: Inputs, warmup: int, repeat: int) -> list[float]:
        """Seconds per run, measured on the device by TVM's ``time_evaluator`` (one run per repeat)."""

        def measure():
            args = self._remote_args(inputs)
            if warmup:
                self.vm.time_evaluator(self.entry, self.device, number=warmup, repeat=1)(*args)
            return list(self.vm.time_evaluator(self.entry, self.device, number=1, repeat=repeat)(*args).results)

        return bounded(measure, self.call_timeout_s, f"timing {self.artifact.path.name} on {self.url}")
