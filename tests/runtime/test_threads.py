"""TVM's thread pool gets the machine's physical cores (TVM alone halves the count on x86)."""

import os
import subprocess
import sys

from edgeq.runtime.threads import physical_cores

PROBE = ("import edgeq, tvm_ffi; from edgeq.runtime.threads import configure_tvm_threads; "
         "configure_tvm_threads(); print(tvm_ffi.get_global_func('runtime.NumThreads')())")


def _pool_threads(**env) -> int:
    clean = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def test_pool_uses_every_physical_core():
    assert physical_cores() >= 1
    assert _pool_threads() == physical_cores()


def test_user_setting_wins():
    assert _pool_threads(TVM_NUM_THREADS="1") == 1
