"""Named targets: each resolves to a TVM target, the compiler that links the artifact, and the
artifact's format. Adding a target is one ``register_target`` call.
"""

from __future__ import annotations

import functools
import platform
import shutil
from dataclasses import dataclass, field
from typing import Any

from edgeq.errors import TargetError


@dataclass(frozen=True)
class TargetSpec:
    name: str
    description: str
    tvm_target: dict[str, Any]
    host: dict[str, Any] | None = None
    cross_compiler: str | None = None  # None: TVM's default (the host's c++)
    compiler_package: str | None = None  # the Debian package that provides cross_compiler
    artifact: str = "so"  # "so" (shared library) or "tar" (object archive: no linker installed)
    machine: str | None = None  # ELF e_machine name the artifact must carry, checked in tests
    features: tuple[str, ...] = field(default_factory=tuple)
    gpu_arch: str | None = None  # e.g. "sm_90": GPU targets schedule with dlight before the build
    link_sources: tuple[str, ...] = ()  # C files (in targets/) the cross compiler links into the artifact

    @property
    def is_gpu(self) -> bool:
        return self.gpu_arch is not None

    def tvm(self):
        import tvm

        return tvm.target.Target(self.tvm_target, host=self.host) if self.host else tvm.target.Target(self.tvm_target)

    def require_compiler(self) -> str | None:
        """The cross compiler's path; a TargetError naming its package when it is missing."""
        if self.cross_compiler is None:
            return None
        found = shutil.which(self.cross_compiler)
        if found is None:
            hint = f" (Debian package {self.compiler_package})" if self.compiler_package else ""
            raise TargetError(
                f"target {self.name!r} links with {self.cross_compiler}, which is not installed{hint}"
            )
        return found


_TARGETS: dict[str, TargetSpec] = {}


def register_target(spec: TargetSpec) -> TargetSpec:
    _TARGETS[spec.name] = spec
    return spec


def get_target(name: str) -> TargetSpec:
    if name == "cpu":
        return host_cpu_target()
    if name not in _TARGETS:
        raise TargetError(f"unknown target {name!r}; known targets: {', '.join(target_names())}")
    return _TARGETS[name]


def target_names() -> list[str]:
    return ["cpu", *sorted(_TARGETS)]


@functools.cache
def host_cpu_target() -> TargetSpec:
    """This machine's CPU with the vector features the kernel reports it can run.

    TVM rejects ``mcpu=native``, and LLVM's host CPU name is not enough on a VM: here it says
    ``znver4`` while the hypervisor masks AVX-512, and code built for znver4 dies with SIGILL.
    On x86-64 the target is the micro-architecture level (x86-64-v2/v3/v4) that the reported
    flags support, plus VNNI where present; on aarch64 it is NEON with dotprod/i8mm when reported.
    """
    from tvm.target import codegen

    arch = platform.machine()
    flags = host_cpu_flags()
    llvm_cpu = codegen.llvm_get_system_cpu()
    if arch == "x86_64":
        target: dict[str, Any] = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": _x86_level(flags)}
        # /proc/cpuinfo spells them avx512_vnni / avx_vnni; LLVM's attributes are avx512vnni / avxvnni
        extras = [llvm for flag, llvm in (("avx512_vnni", "avx512vnni"), ("avx_vnni", "avxvnni")) if flag in flags]
        if extras:
            target["mattr"] = [f"+{f}" for f in extras]
        machine = "x86-64"
    elif arch == "aarch64":
        target = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}
        target["mattr"] += [f"+{name}" for flag, name in (("asimddp", "dotprod"), ("i8mm", "i8mm")) if flag in flags]
        machine = "aarch64"
    else:
        target = {"kind": "llvm", "mtriple": codegen.llvm_get_system_triple()}
        machine = None
    return TargetSpec(
        name="cpu",
        description=f"this host ({arch}, LLVM names it {llvm_cpu}, built as {target.get('mcpu', 'generic')})",
        tvm_target=target,
        machine=machine,
        features=tuple(sorted(f for f in flags if f in _REPORTED)),
    )


_REPORTED = {"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "asimd", "asimddp", "i8mm"}


@functools.cache
def host_cpu_flags() -> frozenset[str]:
    """The feature flags this host's CPU reports (/proc/cpuinfo ``flags`` on x86, ``Features`` on
    arm64; empty where there is none): what ``cpu`` targets and benchmark records go by."""
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return set()
    for line in text.splitlines():
        key = line.split(":", 1)[0].strip()
        if key in ("flags", "Features"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def _x86_level(flags: frozenset[str]) -> str:
    v4 = {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}
    v3 = {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "movbe", "xsave"}
    if (v3 | v4) <= flags:
        return "x86-64-v4"
    if v3 - {"movbe", "xsave"} <= flags:
        return "x86-64-v3"
    if {"sse4_1", "sse4_2", "ssse3", "popcnt"} <= flags:
        return "x86-64-v2"
    return "x86-64"


# What every artifact for one instruction set shares: the cross compiler that links it, the
# Debian package that provides it, and the ELF machine the artifact must carry.
_X86_64 = dict(cross_compiler="x86_64-linux-gnu-g++", compiler_package="g++-x86-64-linux-gnu", machine="x86-64")
_AARCH64 = dict(cross_compiler="aarch64-linux-gnu-g++", compiler_package="g++-aarch64-linux-gnu", machine="aarch64")


def _linux_cpu(name: str, description: str, mtriple: str, isa: dict[str, Any], **llvm: Any) -> TargetSpec:
    """A Linux CPU target: LLVM at ``mtriple`` with ``llvm``'s mcpu/mattr, linked per ``isa``."""
    return register_target(TargetSpec(name=name, description=description,
                                      tvm_target={"kind": "llvm", "mtriple": mtriple, **llvm}, **isa))


_linux_cpu("x86_64", "any x86-64 Linux with AVX2 and FMA (x86-64-v3: Haswell, Zen and later)",
           "x86_64-linux-gnu", _X86_64, mcpu="x86-64-v3")
_linux_cpu("arm64", "64-bit Arm Linux (aarch64) with NEON: phones, Raspberry Pi 4/5, Jetson CPUs",
           "aarch64-linux-gnu", _AARCH64, mattr=["+neon"])
_linux_cpu("arm64-dotprod", "aarch64 with NEON and the int8 dot product (sdot/udot): Cortex-A55/A76 and later",
           "aarch64-linux-gnu", _AARCH64, mcpu="cortex-a76", mattr=["+neon", "+dotprod"])
_linux_cpu("arm64-i8mm", "aarch64 with NEON, dotprod and the int8 matrix multiply (smmla): Armv8.6, "
           "Cortex-A710/X2, Neoverse V1/N2 and later",
           "aarch64-linux-gnu", _AARCH64, mattr=["+neon", "+dotprod", "+i8mm"])
_linux_cpu("x86_64-vnni", "x86-64 with AVX-512 and AVX-512 VNNI (x86-64-v4 + vpdpbusd: Ice Lake, Sapphire Rapids, "
           "Zen 4 and later)", "x86_64-linux-gnu", _X86_64, mcpu="x86-64-v4", mattr=["+avx512vnni"])
_linux_cpu("armv7", "32-bit Arm Linux with NEON and hard float (armv7-a: Raspberry Pi 2/3 32-bit OS, older SoCs)",
           "armv7a-linux-gnueabihf",
           dict(cross_compiler="arm-linux-gnueabihf-g++", compiler_package="g++-arm-linux-gnueabihf", machine="arm",
                # libgcc's int64<->float helpers with the hard-float convention
                link_sources=("armv7_float_abi.c",)),
           mattr=["+neon", "+vfp4"], **{"mfloat-abi": "hard"})

def _hexagon(name: str, description: str, version: str, *mattr: str) -> TargetSpec:
    """A Hexagon DSP with 128-byte HVX vectors: an object archive (no Hexagon linker here)."""
    return register_target(TargetSpec(
        name=name,
        description=description,
        tvm_target={"kind": "llvm", "mtriple": "hexagon", "mcpu": f"hexagon{version}",
                    "mattr": [f"+hvx{version}", "+hvx-length128b", *mattr]},
        artifact="tar",
        machine="hexagon",
    ))


for _version in ("v68", "v73"):
    _hexagon(f"hexagon-{_version}", f"Qualcomm Hexagon {_version} DSP with 128-byte HVX vectors; an object archive "
             "(no Hexagon linker here)", _version)

# QEMU 7.2 (the emulator edgeq checks Hexagon kernels with) executes HVX integer instructions
# but not v68's HVX float ones (qf32/IEEE vmpy, vadd: its decoder asserts). This target keeps HVX
# for integer code and leaves float math scalar, so float kernels can be checked under emulation.
_hexagon("hexagon-v68-hvx-int", "Hexagon v68 with 128-byte HVX for integer code, float math scalar (what "
         "qemu-hexagon 7.2 can execute)", "v68", "-hvx-qfloat", "-hvx-ieee-fp")

for _arch, _gpus in (("sm_80", "A100/A30"), ("sm_90", "H100/H200")):
    register_target(TargetSpec(
        name=f"cuda-{_arch.replace('_', '')}",
        description=f"NVIDIA GPU {_arch} ({_gpus}), host code for x86-64; kernels scheduled by dlight",
        tvm_target={"kind": "cuda", "arch": _arch},
        host={"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64-v3"},
        machine="x86-64",
        gpu_arch=_arch,
    ))
