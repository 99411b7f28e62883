"""Train the built-in digits CNN and write ``digits_cnn.safetensors``.

Deterministic: fixed seeds, one thread, a fixed minibatch order, and the CPU kernels pinned to
AVX2 (torch, oneDNN and MKL each pick kernels by the CPU's instruction set, and AVX-512 kernels
sum in another order). So on any x86-64 host with AVX2 and the same torch version, running
this again rewrites the shipped file bit for bit (``tests/models/test_digits_cnn.py`` checks that); on a
host without AVX2 it trains, but to other weights. ``main`` runs the training in a child
process with ``PINNED_ENV`` set, because those libraries read it once, when they load.

    python -m edgeq.models.train_digits_cnn [--out PATH]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from edgeq._io import atomic_path
from edgeq.models.digits_cnn import WEIGHTS, DigitsCNN, accuracy, digits_data

EPOCHS = 40
BATCH = 64
LR = 3e-3
SEED = 0
# What the shipped weights were trained under: the kernels' instruction set and one thread.
PINNED_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2",
              "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def host_reproduces_shipped_weights() -> bool:
    """Whether this host can run the pinned (AVX2, FMA) kernels: an x86-64 CPU that reports both."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx2" in flags and "fma" in flags


def train() -> DigitsCNN:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(SEED)
        data = digits_data()
        model = DigitsCNN()
        opt = torch.optim.Adam(model.parameters(), lr=LR)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=EPOCHS)
        gen = torch.Generator().manual_seed(SEED)
        n = len(data.x_train)
        for _ in range(EPOCHS):
            model.train()
            for idx in torch.randperm(n, generator=gen).split(BATCH):
                loss = torch.nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            sched.step()
        return model.eval()
    finally:
        torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    args = parser.parse_args(argv)
    if any(os.environ.get(k) != v for k, v in PINNED_ENV.items()):
        cmd = [sys.executable, "-m", "edgeq.models.train_digits_cnn", "--out", str(args.out)]
        subprocess.run(cmd, env={**os.environ, **PINNED_ENV}, check=True)
        return
    if not host_reproduces_shipped_weights():
        print("this host has no AVX2: the weights will differ from the shipped file", file=sys.stderr)
    model = train()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    with atomic_path(args.out) as tmp:
        save_file(state, str(tmp))
    data = digits_data()
    with torch.no_grad():
        acc = accuracy(model(data.x_test), data.y_test)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes), float32 test top-1 {acc:.2%}")


if __name__ == "__main__":
    main()
