"""Emulated devices on this machine.

- ``arm64``: qemu-user runs an arm64 Debian root's Python with the aarch64 TVM runtime, which
  serves TVM RPC on 127.0.0.1.
- ``armv7`` and ``hexagon-sim``: targets with no TVM runtime to be had (no armv7 or Hexagon
  wheels; see docs/DEVICES.md). They run edgeq's kernel harness under qemu-user, the host's
  TVM VM driving the artifact's kernel calls (``edgeq.runtime.kernel_harness``); "starting"
  them prepares the emulator, the compilers and (armv7) the armhf root. There is no server.

``start_device("arm64")`` prepares everything on first use and caches it under the user's cache
folder (``$XDG_CACHE_HOME/edgeq`` or ``~/.cache/edgeq``):

1. Debian packages ``qemu-user-static`` (the emulator), ``g++-aarch64-linux-gnu`` (to link
   arm64 artifacts) and ``mmdebstrap`` (to build the root), with apt, as root;
2. an arm64 Debian root holding only the host's Python version and libstdc++ (mmdebstrap with
   no mirror argument: it uses this host's apt sources);
3. the aarch64 wheels of the TVM runtime and its Python dependencies, at the host's versions,
   with TVM's compiler library removed (the device only loads compiled modules);
4. a server script that runs TVM's RPC server in-process (``python -m tvm.exec.rpc_server``
   re-executes the interpreter, which fails under qemu-user without binfmt).

The server executes whatever code a client sends it and TVM RPC has no authentication, so it
binds to 127.0.0.1 unless the caller explicitly allows another address.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from edgeq.errors import RuntimeExecError


class DeviceError(RuntimeExecError):
    """The emulated device cannot be prepared, started, or reached."""


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    targets: tuple[str, ...]  # the edgeq targets whose artifacts it runs
    qemu: str  # the qemu-user binary (Debian package qemu-user-static)
    tools: dict[str, str]  # program -> Debian package: the compilers it links with
    debian_arch: str = ""  # the architecture of its Debian root ("": it needs none)
    wheel_platform: str = ""  # the platform of its TVM runtime wheels ("rpc" devices)
    runs: str = "rpc"  # "rpc": a TVM RPC server; "harness": edgeq's kernel harness, host-driven
    root_packages: tuple[str, ...] = ()  # Debian packages of its root ("harness" devices)
    root_marker: str = ""  # a file its root has once built ("harness" devices)

    @property
    def apt_packages(self) -> dict[str, str]:
        """program -> Debian package, for every program on the host the device needs: the
        emulator, its compilers and, where it has a Debian root, mmdebstrap to build it."""
        root = {"mmdebstrap": "mmdebstrap"} if self.debian_arch else {}
        return {self.qemu: "qemu-user-static", **self.tools, **root}

    def missing_packages(self) -> list[str]:
        """The Debian packages of :attr:`apt_packages` whose program is not on the PATH."""
        return sorted({pkg for prog, pkg in self.apt_packages.items() if shutil.which(prog) is None})


DEVICES: dict[str, DeviceSpec] = {spec.name: spec for spec in (
    DeviceSpec("arm64", ("arm64", "arm64-dotprod"), "qemu-aarch64-static",
               {"aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu"},
               debian_arch="arm64", wheel_platform="manylinux_2_28_aarch64"),
    DeviceSpec("armv7", ("armv7",), "qemu-arm-static", {"arm-linux-gnueabihf-gcc": "gcc-arm-linux-gnueabihf"},
               debian_arch="armhf", runs="harness", root_packages=("libc6", "libgcc-s1"),
               root_marker="lib/arm-linux-gnueabihf/libc.so.6"),
    DeviceSpec("hexagon-sim", ("hexagon-v68", "hexagon-v73", "hexagon-v68-hvx-int"), "qemu-hexagon-static",
               {"clang-14": "clang-14", "ld.lld-14": "lld-14"}, runs="harness"),
)}

RUNTIME_WHEELS = ("apache-tvm", "apache-tvm-ffi", "numpy", "ml_dtypes", "typing_extensions", "psutil", "cloudpickle")
DEFAULT_PORT = 9190
START_TIMEOUT_S = 120.0

SERVER_SCRIPT = '''\
"""TVM RPC server for the emulated device (written by edgeq; runs under qemu-user)."""
import argparse
import logging
import os

from tvm.rpc.server import PopenRPCServerState

parser = argparse.ArgumentParser()
parser.add_argument("--host", required=True)
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--key", default="")
parser.add_argument("--tracker", default=None)
args = parser.parse_args()
tracker = None
if args.tracker:
    host, port = args.tracker.rsplit(":", 1)
    tracker = (host, int(port))
logging.basicConfig(level=logging.INFO)
ready = False
home = os.getcwd()
while True:
    state = PopenRPCServerState(args.host, args.port, args.port + 1, tracker_addr=tracker, key=args.key)
    if not ready:
        print(f"edgeq-device-ready {state.port}", flush=True)
        ready = True
    state.thread.join()
    # A session worker died (a crashing model, a killed session): TVM's listen loop ends with
    # it. Close the listening socket and serve again on the same port.
    # The dead session's work folder was the current directory.
    state.sock.close()
    os.chdir(home)
    logging.warning("a session worker died; serving again")
'''


@dataclass
class DeviceState:
    """A running device, as recorded in ``state.json``."""

    name: str
    pid: int
    host: str
    port: int
    key: str
    tracker: str | None
    started: float
    runs: str = "rpc"

    @property
    def url(self) -> str:
        """Where executors find it: ``rpc://host:port``, or a harness device's name."""
        return f"rpc://{self.host}:{self.port}" if self.runs == "rpc" else self.name


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edgeq"


def device_spec(name: str) -> DeviceSpec:
    if name not in DEVICES:
        raise DeviceError(f"unknown device {name!r}; known devices: {', '.join(sorted(DEVICES))}")
    return DEVICES[name]


def device_dir(name: str) -> Path:
    return cache_dir() / "devices" / device_spec(name).name


def _python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _log(msg: str) -> None:
    print(f"[device] {msg}", file=sys.stderr, flush=True)


def _run(cmd: list[str], what: str, env: dict | None = None) -> None:
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.strip().splitlines()[-5:])
        raise DeviceError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd[:3])} ...\n{tail}")


def ensure_host_packages(spec: DeviceSpec) -> None:
    """Install the emulator, the cross compiler and mmdebstrap with apt when they are missing."""
    missing = spec.missing_packages()
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise DeviceError(
            f"the {spec.name} device needs the Debian packages {' '.join(missing)}; "
            f"install them as root: apt-get install {' '.join(missing)}"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _log(f"apt-get install {' '.join(missing)}")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    if subprocess.run(install, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env).returncode != 0:
        _run(["apt-get", "update", "-q"], "apt-get update", env)
        _run(install, "apt-get install", env)


def _host_suite() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip().strip('"')
    raise DeviceError("cannot tell this host's Debian release from /etc/os-release")


def ensure_rootfs(spec: DeviceSpec, root: Path) -> Path:
    """The device's Debian root, built once, atomically: the host's Python version with
    libstdc++ (a TVM RPC device), or ``spec.root_packages`` (a harness device)."""
    py = f"python{_python_version()}"
    if spec.runs == "rpc":
        packages, marker = [f"{py}-minimal", f"lib{py}-stdlib", "libstdc++6"], Path("usr") / "bin" / py
    else:
        packages, marker = list(spec.root_packages), Path(spec.root_marker)
    if (root / marker).exists():
        return root
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    _log(f"building an {spec.debian_arch} Debian root with {', '.join(packages)} ({_host_suite()})")
    mode = "root" if os.geteuid() == 0 else "unshare"
    try:
        _run([
            "mmdebstrap", f"--mode={mode}", "--variant=extract", f"--arch={spec.debian_arch}", "--quiet",
            f"--include={','.join(packages)}", _host_suite(), str(tmp),
        ], "mmdebstrap")
    except DeviceError as exc:
        if spec.runs == "rpc" or os.geteuid() != 0:
            raise
        # mmdebstrap fails on any index it cannot fetch (a mirror mid-sync); a harness root is a
        # few packages without maintainer scripts: fetch and unpack them with apt and dpkg
        _log(f"mmdebstrap failed ({str(exc).splitlines()[-1]}); unpacking the packages with apt-get download")
        _unpack_packages(spec, packages, tmp)
    if not (tmp / marker).exists():
        raise DeviceError(f"mmdebstrap built {tmp} without /{marker}")
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    return root


def _unpack_packages(spec: DeviceSpec, packages: list[str], root: Path) -> None:
    """``packages`` of ``spec.debian_arch`` unpacked into ``root`` (dpkg -x; no scripts run)."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["dpkg", "--add-architecture", spec.debian_arch], "dpkg --add-architecture", env)
    subprocess.run(["apt-get", "update", "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    shutil.rmtree(root, ignore_errors=True)
    debs = root.with_name(root.name + ".debs")
    shutil.rmtree(debs, ignore_errors=True)
    debs.mkdir(parents=True)
    try:
        proc = subprocess.run(["apt-get", "download", *[f"{p}:{spec.debian_arch}" for p in packages]], cwd=debs,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    finally:  # leave the host's dpkg as it was: a foreign architecture's indexes would be fetched by every update
        subprocess.run(["dpkg", "--remove-architecture", spec.debian_arch], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, env=env)
        subprocess.run(["apt-get", "update", "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    if proc.returncode != 0:
        raise DeviceError(f"apt-get download of {' '.join(packages)} ({spec.debian_arch}) failed:\n{proc.stdout.strip()[-500:]}")
    for deb in sorted(debs.glob("*.deb")):
        _run(["dpkg", "-x", str(deb), str(root)], f"dpkg -x {deb.name}", env)
    shutil.rmtree(debs, ignore_errors=True)


def ensure_runtime_wheels(spec: DeviceSpec, site: Path) -> Path:
    """The device's TVM runtime: aarch64 wheels at the host's versions, compiler library removed."""
    stamp = site / ".edgeq-wheels.json"
    pins = [f"{name}=={metadata.version(name)}" for name in RUNTIME_WHEELS]
    if stamp.exists() and json.loads(stamp.read_text()) == pins:
        return site
    tmp = site.with_name(site.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    _log(f"installing {spec.wheel_platform} wheels: {' '.join(pins)}")
    _run([
        sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
        "--only-binary=:all:", "--platform", spec.wheel_platform, "--python-version", _python_version(),
        "--implementation", "cp", "--target", str(tmp), *pins,
    ], "pip install of the device's TVM runtime")
    for lib in (tmp / "tvm" / "lib").glob("libtvm_compiler*"):
        lib.unlink()
    (tmp / ".edgeq-wheels.json").write_text(json.dumps(pins))
    shutil.rmtree(site, ignore_errors=True)
    tmp.rename(site)
    return site


def prepare_device(name: str) -> Path:
    """Everything the device needs, installed once; returns its folder."""
    spec = device_spec(name)
    folder = device_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    if spec.runs == "harness":
        _timed("host packages", ensure_host_packages, spec)
        if spec.debian_arch:
            _timed("Debian root", ensure_rootfs, spec, folder / "rootfs")
        return folder
    # The wheels (pip) do not depend on the packages and the root (apt): fetch both at once.
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        wheels = pool.submit(_timed, "runtime wheels", ensure_runtime_wheels, spec, folder / "site")
        _timed("host packages", ensure_host_packages, spec)
        _timed("Debian root", ensure_rootfs, spec, folder / "rootfs")
        wheels.result()
    (folder / "server.py").write_text(SERVER_SCRIPT)
    return folder


def _timed(what: str, fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    if time.perf_counter() - start > 1:
        _log(f"{what} ready in {time.perf_counter() - start:.1f} s")
    return result


def device_command(name: str, script: str | Path, *args: str) -> tuple[list[str], dict[str, str]]:
    """The command and environment that run a Python ``script`` on the emulated device."""
    spec = device_spec(name)
    folder = device_dir(name)
    root = folder / "rootfs"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(folder / "site"),
        "PYTHONNOUSERSITE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "TVM_USE_RUNTIME_LIB": "1",
        "HOME": os.environ.get("HOME", "/tmp"),
        "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
    }
    cmd = [shutil.which(spec.qemu) or spec.qemu, "-L", str(root), str(root / "usr" / "bin" / f"python{_python_version()}"),
           str(script), *args]
    return cmd, env


def _state_path(name: str) -> Path:
    return device_dir(name) / "state.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of this process has exited
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _recorded_state(name: str) -> DeviceState | None:
    """``state.json`` as recorded, or None (an unreadable or ill-formed one is removed)."""
    path = _state_path(name)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        state = DeviceState(**data)
        if state.runs == "harness":  # nothing runs between calls: ready while its tools are here
            if all(shutil.which(prog) for prog in device_spec(name).apt_packages):
                return state
            ok = False
        else:
            ok = (isinstance(state.pid, int) and not isinstance(state.pid, bool) and state.pid > 1
                  and isinstance(state.port, int) and 0 < state.port < 65536 and isinstance(state.host, str))
    except (OSError, ValueError, TypeError):
        ok = False
    if not ok:
        path.unlink(missing_ok=True)
        return None
    return state


def _is_device_server(state: DeviceState, name: str) -> bool:
    """Whether ``state.pid`` runs this device's server for ``state.host``/``state.port``: its
    command line is the one ``launch_server`` starts (qemu-user running this device's
    ``server.py`` with that host and port). A pid recorded by a server that has since exited may
    belong to any process now; this is what keeps ``stop`` from signalling it."""
    try:
        argv = [a.decode(errors="replace") for a in Path(f"/proc/{state.pid}/cmdline").read_bytes().split(b"\0")]
    except OSError:
        return False
    if not argv or Path(argv[0]).name != device_spec(name).qemu or str(device_dir(name) / "server.py") not in argv:
        return False
    options = dict(zip(argv, argv[1:]))
    return options.get("--host") == state.host and options.get("--port") == str(state.port)


def _port_answers(host: str, port: int, timeout_s: float = 2.0) -> bool:
    """Whether a TCP connection to the server's port opens (the server drops a connection that
    sends no RPC handshake and goes on serving)."""
    address = "127.0.0.1" if host in ("0.0.0.0", "localhost") else host
    try:
        with socket.create_connection((address, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def device_status(name: str) -> DeviceState | None:
    """The running device's state, or None when it is not running.

    ``state.json`` is trusted only when its pid is alive, is this device's server for the
    recorded port, and the port answers; a stale or foreign state is removed."""
    state = _recorded_state(name)
    if state is None or state.runs == "harness":  # a harness device has no server to check
        return state
    if not _alive(state.pid) or not _is_device_server(state, name):
        _state_path(name).unlink(missing_ok=True)
        return None
    for _ in range(5):  # the server re-opens its port after a session worker dies: allow a moment
        if _port_answers(state.host, state.port):
            return state
        time.sleep(0.5)
    return None


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def start_device(
    name: str = "arm64",
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    key: str = "",
    tracker: str | None = None,
    allow_remote: bool = False,
) -> DeviceState:
    """Prepare (first use only) and start the device's RPC server; returns its state.

    ``host`` other than 127.0.0.1 needs ``allow_remote``: the server runs any code it is sent.
    ``tracker`` ("host:port") registers the server with a TVM RPC tracker under ``key``.
    """
    if host not in ("127.0.0.1", "localhost") and not allow_remote:
        raise DeviceError(
            f"refusing to bind the RPC server to {host}: TVM RPC has no authentication and runs any code "
            "it is sent; pass --allow-remote to do it anyway"
        )
    if host not in ("127.0.0.1", "localhost"):
        print(f"warning: the {name} device's RPC server listens on {host}; TVM RPC has no authentication, "
              "anyone who can reach this port can run code on this machine", file=sys.stderr)
    running = device_status(name)
    if running is not None:
        return running
    recorded = _recorded_state(name)
    if recorded is not None:  # our server, alive, but its port does not answer
        raise DeviceError(f"the {name} device's server (pid {recorded.pid}) does not answer on port {recorded.port}; "
                          f"run `edgeq device stop {name}`, then start it again")
    folder = prepare_device(name)
    if device_spec(name).runs == "harness":
        state = DeviceState(name=name, pid=0, host="", port=0, key="", tracker=None, started=time.time(), runs="harness")
        _state_path(name).write_text(json.dumps(asdict(state)))
        return state
    proc, port = launch_server(name, host, port, key=key, tracker=tracker, log_path=folder / "server.log")
    state = DeviceState(name=name, pid=proc.pid, host=host, port=port, key=key, tracker=tracker, started=time.time())
    _state_path(name).write_text(json.dumps(asdict(state)))
    return state


def launch_server(
    name: str, host: str = "127.0.0.1", port: int = DEFAULT_PORT, key: str = "", tracker: str | None = None,
    log_path: Path | None = None,
) -> tuple[subprocess.Popen, int]:
    """Start one RPC server process of a prepared device on the first free port from ``port``;
    returns it (the leader of its own process group) once it listens, and its port."""
    folder = device_dir(name)
    if not (folder / "server.py").exists():
        raise DeviceError(f"the {name} device is not prepared; run `edgeq device start {name}`")
    while not _port_free(host, port):
        port += 1
    args = ["--host", host, "--port", str(port)]
    if key:
        args += ["--key", key]
    if tracker:
        args += ["--tracker", tracker]
    cmd, env = device_command(name, folder / "server.py", *args)
    log_path = log_path or folder / f"server-{port}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=folder, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = "\n".join(log_path.read_text().strip().splitlines()[-5:])
            raise DeviceError(f"the {name} device's server exited with code {proc.returncode} (log {log_path}):\n{tail}")
        if "edgeq-device-ready" in log_path.read_text():
            return proc, port
        time.sleep(0.2)
    kill_server(proc.pid)
    raise DeviceError(f"the {name} device's server did not start within {START_TIMEOUT_S:.0f} s (log {log_path})")


def kill_server(pid: int, grace_s: float = 5.0) -> None:
    """SIGTERM the server's process group (it forks a worker per session), SIGKILL after a grace."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            if not _alive(pid):
                break
            time.sleep(0.1)
    try:  # the group's other members (session workers) go with the leader
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop_device(name: str = "arm64") -> bool:
    """Stop the device's server and its session workers; True if one was running.

    Only a pid whose command line is this device's server is signalled (one that stopped
    answering included); a stale state naming another process is just removed."""
    state = _recorded_state(name)
    _state_path(name).unlink(missing_ok=True)
    if state is not None and state.runs == "harness":  # no process to stop
        return True
    if state is None or not _alive(state.pid) or not _is_device_server(state, name):
        return False
    kill_server(state.pid)
    return True


def harness_devices() -> list[str]:
    return sorted(name for name, spec in DEVICES.items() if spec.runs == "harness")


def is_harness_device(device: str) -> bool:
    """Whether ``device`` (an executor's --device) names a harness device, not an RPC URL."""
    return device in DEVICES and DEVICES[device].runs == "harness"


def harness_device_for(target: str) -> str | None:
    """The harness device that runs ``target``'s artifacts, if one does."""
    return next((name for name in harness_devices() if target in DEVICES[name].targets), None)


def harness_command(name: str, artifact, kernel_object: bytes | None, kernels: list[str]) -> tuple[list[str], dict[str, str]]:
    """The command (and environment) that runs edgeq's kernel harness for ``artifact`` on the
    prepared device ``name``; builds the harness program on first use."""
    from edgeq.runtime import kernel_harness

    spec = device_spec(name)
    if spec.runs != "harness":
        raise DeviceError(f"the {name} device serves TVM RPC; use rpc:// with it")
    missing = spec.missing_packages()
    if missing:
        raise DeviceError(f"the {name} device is not prepared (missing {' '.join(missing)}); run `edgeq device start {name}`")
    qemu = shutil.which(spec.qemu) or spec.qemu
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    if spec.debian_arch == "":  # Hexagon: a static, freestanding program
        mcpu = (artifact.tvm_target or {}).get("mcpu", "hexagonv68")
        # clang-14 knows Hexagon up to v69: the harness's own C needs nothing newer, and the
        # kernels keep the artifact's own code
        program = kernel_harness.hexagon_program(kernel_object, kernels, min(mcpu, "hexagonv68"))
        return [qemu, "-cpu", kernel_harness.HEXAGON_QEMU_CPU, str(program)], env
    root = device_dir(name) / "rootfs"
    if not (root / spec.root_marker).exists():
        raise DeviceError(f"the {name} device's Debian root is missing; run `edgeq device start {name}`")
    program = kernel_harness.armv7_program()
    return [qemu, "-L", str(root), str(program), str(Path(artifact.path).resolve())], env
