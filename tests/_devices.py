"""Which emulated devices a test run must have, and the skip-or-fail rule for the others.

EDGEQ_REQUIRE_DEVICE names the devices CI prepares (comma-separated: ``arm64,armv7,hexagon-sim``);
a test needing one of them fails instead of skipping when it is missing."""

from __future__ import annotations

import os
import shutil

import pytest


def required_devices() -> set[str]:
    return {d.strip() for d in os.environ.get("EDGEQ_REQUIRE_DEVICE", "").split(",") if d.strip()}


def skip_or_fail(device: str, message: str) -> None:
    if device in required_devices():
        pytest.fail(f"{message} but EDGEQ_REQUIRE_DEVICE lists {device}")
    pytest.skip(message)


def require_harness_device(name: str) -> None:
    """A harness device (armv7, hexagon-sim) is usable when its tools and root are here."""
    from edgeq.runtime.device import device_dir, device_spec

    spec = device_spec(name)
    missing = sorted({pkg for prog, pkg in spec.apt_packages.items() if shutil.which(prog) is None})
    if missing:
        skip_or_fail(name, f"the {name} device needs the Debian packages {' '.join(missing)} (edgeq device start {name})")
    if spec.root_marker and not (device_dir(name) / "rootfs" / spec.root_marker).exists():
        skip_or_fail(name, f"the {name} device's Debian root is not built (edgeq device start {name})")
