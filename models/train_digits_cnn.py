"""Train the built-in digits CNN and write ``digits_cnn.safetensors``.

Deterministic: fixed seeds, one thread, a fixed minibatch order, so that running this again
with the same torch version rewrites the shipped file bit for bit
(``tests/test_models.py`` checks that).

    python -m edgeq.models.train_digits_cnn [--out PATH]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import save_file

from edgeq._io import atomic_path
from edgeq.models.digits_cnn import WEIGHTS, DigitsCNN, accuracy, digits_data

EPOCHS = 40
BATCH = 64
LR = 3e-3
SEED = 0


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
