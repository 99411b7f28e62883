"""Run a compiled artifact whose target has no TVM runtime (Hexagon, armv7) kernel by kernel
under qemu-user, with the host driving the model.

The artifact carries its Relax VM executable (bytecode and constants) in the symbol
``__tvm_ffi__library_bin`` and its kernels as ``__tvm_ffi_<name>`` functions. The host loads
that executable into its own TVM VM and registers, for every kernel name, a function that sends
the kernel's arguments to edgeq's kernel harness (``kernel_harness.c``) running on the emulated
target, which calls the artifact's kernel and sends back the tensors it wrote. So the model's
sequence of calls is the artifact's own, every kernel executes as target code, and the builtins
of the VM (allocation, shape checks, reshape views) run on the host.

- Hexagon: the harness is freestanding (no Hexagon libc in Debian), built with ``clang-14``
  and linked by ``ld.lld-14`` with the kernel object from the artifact's ``.tar``, run by
  ``qemu-hexagon``. QEMU 7.2 knows the Hexagon v67 core only: it refuses the v68/v73 ELF flags,
  so the program runs with ``-cpu v67`` (see docs/DEVICES.md for what that executes).
- armv7: the harness is a hosted C program (``arm-linux-gnueabihf-gcc``) that ``dlopen``s the
  artifact's shared library, run by ``qemu-arm`` against an armhf Debian root.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import tarfile
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from edgeq.errors import RuntimeExecError, first_line
from edgeq.runtime.executors import Executor, Inputs, flatten_tvm_outputs

HARNESS_SOURCE = Path(__file__).with_name("kernel_harness.c")
READY = 0x4B514445  # "EDQK"
ARG_TENSOR, ARG_INT, ARG_FLOAT = 0, 1, 2
CALL_TIMEOUT_S = 600.0
HEXAGON_QEMU_CPU = "v67"  # the only core QEMU 7.2's linux-user Hexagon knows
HEXAGON_CFLAGS = ["-O2", "-ffreestanding", "-fno-builtin", "-nostdlib", "-fno-stack-protector"]


class HarnessError(RuntimeExecError):
    """The kernel harness could not be built, started, or run a kernel."""


# ------------------------------------------------------------------------------ ELF reading

@dataclass
class ElfSymbol:
    name: str
    value: int
    size: int
    kind: int  # STT_*
    section: int


class Elf:
    """Just enough of ELF (32/64-bit little-endian) to find symbols and read their bytes."""

    def __init__(self, data: bytes, where: str):
        if data[:4] != b"\x7fELF" or data[5] != 1:
            raise HarnessError(f"{where}: not a little-endian ELF file")
        self.data, self.where = data, where
        wide = data[4] == 2
        self.machine = struct.unpack_from("<H", data, 18)[0]
        if wide:
            shoff, = struct.unpack_from("<Q", data, 0x28)
            shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
        else:
            shoff, = struct.unpack_from("<I", data, 0x20)
            shentsize, shnum = struct.unpack_from("<HH", data, 0x2E)
        fmt = "<IIQQQQIIQQ" if wide else "<IIIIIIIIII"
        # (name, type, flags, addr, offset, size, link, info, addralign, entsize)
        self.sections = [struct.unpack_from(fmt, data, shoff + i * shentsize) for i in range(shnum)]
        self.wide = wide

    def symbols(self) -> list[ElfSymbol]:
        out = []
        for sec in self.sections:
            if sec[1] not in (2, 11):  # SHT_SYMTAB, SHT_DYNSYM
                continue
            strtab = self.sections[sec[6]]
            step = 24 if self.wide else 16
            for off in range(sec[4] + step, sec[4] + sec[5], step):  # entry 0 is the null symbol
                if self.wide:
                    name, info, _, shndx, value, size = struct.unpack_from("<IBBHQQ", self.data, off)
                else:
                    name, value, size, info, _, shndx = struct.unpack_from("<IIIBBH", self.data, off)
                start = strtab[4] + name
                text = self.data[start:self.data.index(b"\0", start)].decode()
                out.append(ElfSymbol(text, value, size, info & 0xF, shndx))
        return out

    def symbol_bytes(self, sym: ElfSymbol, n: int, relocatable: bool) -> bytes:
        sec = self.sections[sym.section]
        offset = sec[4] + (sym.value if relocatable else sym.value - sec[3])
        return self.data[offset:offset + n]


def kernel_names(elf: Elf) -> list[str]:
    """The artifact's kernels: its defined ``__tvm_ffi_<name>`` functions."""
    names = {s.name[len("__tvm_ffi_"):] for s in elf.symbols()
             if s.name.startswith("__tvm_ffi_") and s.kind == 2 and s.section != 0}
    return sorted(names)


def library_bin(elf: Elf, relocatable: bool) -> bytes:
    """The payload of ``__tvm_ffi__library_bin``: a u64 length, then the serialized modules."""
    sym = next((s for s in elf.symbols() if s.name == "__tvm_ffi__library_bin" and s.section != 0), None)
    if sym is None:
        raise HarnessError(f"{elf.where}: no __tvm_ffi__library_bin: not an edgeq/TVM artifact")
    n, = struct.unpack("<Q", elf.symbol_bytes(sym, 8, relocatable))
    return elf.symbol_bytes(sym, 8 + n, relocatable)[8:]


def vm_executable(blob: bytes, where: str):
    """The Relax VM executable serialized in a library_bin payload (its kernels not linked)."""
    import tvm_ffi

    pos = 0

    def u64() -> int:
        nonlocal pos
        value, = struct.unpack_from("<Q", blob, pos)
        pos += 8
        return value

    for _ in range(2):  # the import tree: row pointers, child indices
        count = u64()
        pos += 8 * count
    while pos < len(blob):
        length = u64()
        key = blob[pos:pos + length].decode()
        pos += length
        if key == "_lib":
            continue
        size = u64()
        payload = blob[pos:pos + size]
        pos += size
        if key == "relax.VMExecutable":
            return tvm_ffi.get_global_func("ffi.Module.load_from_bytes.relax.VMExecutable")(bytearray(payload))
    raise HarnessError(f"{where}: the artifact holds no Relax VM executable")


# ------------------------------------------------------------------------------ the programs

def _cache_root() -> Path:
    from edgeq.runtime.device import cache_dir

    return cache_dir() / "harness"


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()[:20]


def _run_tool(cmd: list[str], what: str, cwd: Path | None = None) -> None:
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.strip().splitlines()[-8:])
        raise HarnessError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd[:2])} ...\n{tail}")


def _tool(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise HarnessError(f"the kernel harness needs {name} (Debian package {package}); "
                           f"`edgeq device start` installs it")
    return found


def kernel_table_source(names: Sequence[str]) -> str:
    """C for the Hexagon harness's kernel table: name -> __tvm_ffi_<name>."""
    lines = ["#include <stdint.h>", "typedef int (*KernelFn)(void*, const void*, int32_t, void*);",
             "typedef struct { const char* name; KernelFn fn; } KernelEntry;"]
    lines += [f"extern int __tvm_ffi_{n}(void*, const void*, int32_t, void*);" for n in names]
    lines.append("const KernelEntry edgeq_kernels[] = {")
    lines += [f'  {{"{n}", __tvm_ffi_{n}}},' for n in names]
    lines += ["};", f"const int edgeq_kernel_count = {len(names)};", ""]
    return "\n".join(lines)


def hexagon_program(kernel_object: bytes, names: Sequence[str], mcpu: str) -> Path:
    """The freestanding Hexagon harness linked with the artifact's kernel object (cached)."""
    clang = _tool("clang-14", "clang-14")
    lld = _tool("ld.lld-14", "lld-14")
    source = HARNESS_SOURCE.read_bytes()
    key = _digest(source, kernel_object, mcpu.encode(), " ".join(HEXAGON_CFLAGS).encode())
    program = _cache_root() / "hexagon" / key / "harness"
    if program.exists():
        return program
    program.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgeq-harness-", dir=program.parent) as tmp:
        work = Path(tmp)
        (work / "kernels.o").write_bytes(kernel_object)
        (work / "kernel_table.c").write_text(kernel_table_source(names))
        flags = ["--target=hexagon", f"-mcpu={mcpu}", *HEXAGON_CFLAGS]
        _run_tool([clang, *flags, "-c", str(HARNESS_SOURCE), "-o", "harness.o"], "compiling the Hexagon harness", work)
        _run_tool([clang, *flags, "-c", "kernel_table.c", "-o", "kernel_table.o"], "compiling the kernel table", work)
        _run_tool([lld, "-static", "-e", "_start", "harness.o", "kernel_table.o", "kernels.o", "-o", "harness"],
                  "linking the Hexagon harness with the artifact's kernels (ld.lld)", work)
        os.replace(work / "harness", program)
    return program


def armv7_program() -> Path:
    """The hosted armv7 harness (it dlopens the artifact), cached by its source."""
    gcc = _tool("arm-linux-gnueabihf-gcc", "gcc-arm-linux-gnueabihf")
    source = HARNESS_SOURCE.read_bytes()
    # -rdynamic: the artifact's library resolves TVMFFIErrorSetRaisedFromCStrParts in the harness
    flags = ["-O2", "-std=gnu11", "-Wall", "-rdynamic"]
    program = _cache_root() / "armv7" / _digest(source, " ".join(flags).encode()) / "harness"
    if program.exists():
        return program
    program.parent.mkdir(parents=True, exist_ok=True)
    tmp = program.with_name(f"harness.{os.getpid()}.partial")
    _run_tool([gcc, *flags, "-o", str(tmp), str(HARNESS_SOURCE), "-ldl"], "compiling the armv7 harness")
    os.replace(tmp, program)
    return program


# ------------------------------------------------------------------------------ the client

@dataclass
class KernelCall:
    name: str
    seconds: float  # time inside the kernel, on the emulated target's clock


@dataclass
class KernelCheck:
    """One kernel call on the target against the same kernel of a host build on the same inputs."""

    name: str
    dtype: str
    elements: int
    mismatches: int
    max_abs: float
    scale: float  # max |host output|

    @property
    def max_rel(self) -> float:
        return self.max_abs / self.scale if self.scale else self.max_abs


class KernelHarness:
    """The harness process: one kernel call at a time over its stdin/stdout."""

    def __init__(self, cmd: list[str], env: dict[str, str] | None, where: str, call_timeout_s: float = CALL_TIMEOUT_S):
        self.where = where
        self.call_timeout_s = call_timeout_s
        self.timed_out = False
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self._stderr: list[bytes] = []
        self._stderr_reader = threading.Thread(target=lambda: self._stderr.extend(self.proc.stderr), daemon=True)
        self._stderr_reader.start()
        ready = self._read(4, "starting")
        if struct.unpack("<I", ready)[0] != READY:
            raise HarnessError(f"{where}: the harness answered {ready!r} instead of its ready word")

    def _read(self, n: int, what: str) -> bytes:
        data = self.proc.stdout.read(n) if n else b""
        if len(data) != n:
            self.proc.wait(timeout=10)
            self._stderr_reader.join(timeout=5)
            tail = b"".join(self._stderr).decode(errors="replace").strip().splitlines()[-5:]
            hint = ""
            if any("decode_packet" in line for line in tail):
                hint = ("\nQEMU cannot decode an instruction of this artifact: QEMU 7.2 executes Hexagon v67 "
                        "code and HVX integer instructions, not v68's HVX float (qf32/IEEE) ones; compile for "
                        "hexagon-v68-hvx-int to check float kernels under emulation (docs/DEVICES.md)")
            if self.timed_out:
                hint += f"\nthe kernel did not finish within {self.call_timeout_s:.0f} s: the harness was stopped"
            raise HarnessError(f"{self.where}: the harness died while {what} (exit {self.proc.returncode})"
                               + (":\n" + "\n".join(tail) if tail else "") + hint)
        return data

    def call(self, name: str, args: Sequence) -> tuple[dict[int, bytes], float]:
        """Run kernel ``name`` on ``args`` (tensors as (numpy array, DLPack dtype) pairs, ints,
        floats); returns the tensors it changed (argument index -> bytes) and its seconds on the
        target."""
        head = bytearray()
        body: list[bytes | memoryview] = []
        arena = 0
        for a in args:
            if isinstance(a, tuple):  # (array, DLPack dtype (code, bits, lanes))
                array, (code, bits, lanes) = a
                buf = np.ascontiguousarray(array).reshape(array.shape)  # (ascontiguousarray makes 0-d 1-d)
                part = struct.pack("<IBBHI", ARG_TENSOR, code, bits, lanes, buf.ndim)
                part += struct.pack(f"<{buf.ndim}q", *buf.shape) + struct.pack("<Q", buf.nbytes)
                body += [part, memoryview(buf.reshape(-1).view(np.uint8))]
                arena += 2 * (buf.nbytes + 256)
            elif isinstance(a, (bool, int, np.integer)):
                body.append(struct.pack("<Iq", ARG_INT, int(a)))
            elif isinstance(a, (float, np.floating)):
                body.append(struct.pack("<Id", ARG_FLOAT, float(a)))
            else:
                raise HarnessError(f"{self.where}: kernel {name}: cannot pass an argument of type {type(a).__name__}")
        encoded = name.encode()
        head += struct.pack("<I", len(encoded)) + encoded + struct.pack("<IQ", len(args), arena)
        watchdog = threading.Timer(self.call_timeout_s, self._stop_frozen)
        watchdog.start()
        try:
            return self._exchange(name, head, body)
        finally:
            watchdog.cancel()

    def _stop_frozen(self) -> None:
        self.timed_out = True
        self.proc.kill()

    def _exchange(self, name: str, head: bytes, body: list) -> tuple[dict[int, bytes], float]:
        try:
            self.proc.stdin.write(head)
            for part in body:
                self.proc.stdin.write(part)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self._read(1, f"receiving kernel {name}")
        status, ns = struct.unpack("<IQ", self._read(12, f"running kernel {name}"))
        if status != 0:
            n, = struct.unpack("<I", self._read(4, f"running kernel {name}"))
            message = self._read(n, f"running kernel {name}").decode(errors="replace")
            raise HarnessError(f"{self.where}: kernel {name} failed on the target: {message}")
        count, = struct.unpack("<I", self._read(4, f"running kernel {name}"))
        changed = {}
        for _ in range(count):
            index, nbytes = struct.unpack("<IQ", self._read(12, f"reading kernel {name}'s outputs"))
            changed[index] = self._read(nbytes, f"reading kernel {name}'s outputs")
        return changed, ns * 1e-9

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(struct.pack("<I", 0))
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


# ------------------------------------------------------------------------------ the executor

class HarnessExecutor(Executor):
    """A compiled artifact for a target without a TVM runtime, run kernel by kernel under
    qemu-user (``device``: ``hexagon-sim`` or ``armv7``) with the host's TVM VM driving it.

    ``check_against``: a host build (``edgeq.compile(..., target="cpu")``) of the same model;
    every kernel call is then also run by the host's kernel of the same name on the same inputs,
    and ``checks`` holds the comparison of each call. A kernel call that takes over
    ``call_timeout_s`` stops the harness and raises HarnessError."""

    def __init__(self, artifact_path: str | Path, device: str, check_against: str | Path | None = None,
                 entry: str = "main", call_timeout_s: float = CALL_TIMEOUT_S):
        import tvm
        from tvm import relax

        from edgeq.runtime.device import device_spec, harness_command
        from edgeq.targets.compile import Artifact

        self.artifact = Artifact.load(artifact_path)
        spec = device_spec(device)
        if self.artifact.target not in spec.targets:
            raise HarnessError(f"{self.artifact.path} is built for {self.artifact.target}; the {device} device runs "
                               f"{', '.join(spec.targets)} artifacts")
        self.name = f"harness:{self.artifact.target}"
        self.entry = entry
        self.calls: list[KernelCall] = []
        self.checks: list[KernelCheck] = []
        self._error: HarnessError | None = None
        where = f"{self.artifact.path.name} on {device}"
        kernels_elf, library_elf, relocatable, kernel_object = self._read_artifact()
        names = kernel_names(kernels_elf)
        executable = vm_executable(library_bin(library_elf, relocatable), str(self.artifact.path))
        cmd, env = harness_command(device, self.artifact, kernel_object, names)
        self.harness = KernelHarness(cmd, env, where, call_timeout_s)
        self._host = tvm.runtime.load_module(str(check_against)) if check_against else None
        self._tvm = tvm
        import tvm_ffi

        for kernel in names:
            tvm_ffi.register_global_func(kernel, self._forwarder(kernel), override=True)
        try:
            self.vm = relax.VirtualMachine(executable, tvm.cpu())  # takes the kernels from the registry now
        finally:  # the VM holds its own references: the names are free for the next artifact
            for kernel in names:
                tvm_ffi.registry.remove_global_func(kernel)

    def _read_artifact(self) -> tuple[Elf, Elf, bool, bytes | None]:
        """(the ELF file with the kernels, the one with the VM executable, whether that one is a
        relocatable object, the kernel object's bytes for linking (Hexagon) or None)."""
        path = self.artifact.path
        if path.suffix != ".tar":
            elf = Elf(path.read_bytes(), str(path))
            return elf, elf, False, None
        with tarfile.open(path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
        devc = [n for n in members if n.startswith("devc")]
        kernels = [n for n in members if n.endswith(".o") and not n.startswith("devc")]
        if len(kernels) != 1 or len(devc) != 1:
            raise HarnessError(f"{path}: expected one kernel object and devc.o, found {', '.join(sorted(members))}")
        return (Elf(members[kernels[0]], f"{path}:{kernels[0]}"), Elf(members[devc[0]], f"{path}:{devc[0]}"), True,
                members[kernels[0]])

    def _host_kernel(self, name: str):
        for mod in (self._host, *self._host.imports):
            fn = mod.get_function(name, True)
            if fn is not None:
                return fn
        raise HarnessError(f"the host build has no kernel {name}: it was not compiled from the same model")

    def _forwarder(self, name: str):
        def call(*args):
            values = [a.numpy() if hasattr(a, "numpy") else a for a in args]
            sent = [(v, (a.dtype.type_code, a.dtype.bits, a.dtype.lanes)) if isinstance(v, np.ndarray) else v
                    for a, v in zip(args, values)]
            try:
                changed, seconds = self.harness.call(name, sent)
            except HarnessError as exc:
                self._error = exc  # raised by run() as it is: the VM would wrap it
                raise
            self.calls.append(KernelCall(name, seconds))
            if self._host is not None:
                self._check(name, args, values, changed)
            for index, data in changed.items():
                arr = values[index]
                args[index].copyfrom(np.frombuffer(data, dtype=arr.dtype).reshape(arr.shape))

        return call

    def _check(self, name: str, args, values, changed: dict[int, bytes]) -> None:
        tvm = self._tvm
        copies = [tvm.runtime.tensor(v) if isinstance(v, np.ndarray) else v for v in values]
        self._host_kernel(name)(*copies)
        for i, (before, host) in enumerate(zip(values, copies)):
            if not isinstance(before, np.ndarray):
                continue
            host_out = host.numpy()
            target_out = np.frombuffer(changed[i], dtype=before.dtype).reshape(before.shape) if i in changed else before
            if i not in changed and np.array_equal(host_out, before, equal_nan=True):
                continue  # an input (or an output both left as it was)
            diff = np.abs(host_out.astype(np.float64) - target_out.astype(np.float64))
            self.checks.append(KernelCheck(
                name=name, dtype=str(before.dtype), elements=int(before.size),
                mismatches=int((host_out != target_out).sum()), max_abs=float(np.nanmax(diff)) if diff.size else 0.0,
                scale=float(np.abs(host_out.astype(np.float64)).max()) if host_out.size else 0.0))

    def run(self, inputs: Inputs) -> list[np.ndarray]:
        tvm = self._tvm
        args = [tvm.runtime.tensor(np.ascontiguousarray(x)) for x in inputs]
        self._error = None
        try:
            out = self.vm[self.entry](*args)
        except Exception as exc:
            if self._error is not None:
                raise self._error from None
            first = first_line(exc)
            raise HarnessError(f"{self.artifact.path.name} on {self.name}: {first}") from None
        return flatten_tvm_outputs(out)

    def time_runs(self, inputs: Inputs, warmup: int, repeat: int) -> list[float]:
        """Seconds per run: the sum of the kernels' times on the emulated target's clock (the
        host's VM and the transfers are not counted). Emulated, so compare only with each other."""
        for _ in range(warmup):
            self.run(inputs)
        times = []
        for _ in range(repeat):
            start = len(self.calls)
            self.run(inputs)
            times.append(sum(c.seconds for c in self.calls[start:]))
        return times

    def close(self) -> None:
        self.harness.close()
        self.vm = None
