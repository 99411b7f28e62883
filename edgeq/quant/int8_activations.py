"""The arithmetic of ``act_bits=8`` (``edgeq.targets.int8_lowbit``) in PyTorch: the reference a
compiled int8-activation artifact is checked against, and what its perplexity is measured with.

Every ``WeightOnlyLinear`` input is quantized per row and per weight group of K, symmetric to
int8, as the kernel does in float32: ``xq = round_half_even(x · (127 / max|x|))``,
``d = max|x| / 127``; the linear then sees ``d · xq``. The kernel's integer sums of ``xq`` and
the weight integers are exact, so the two differ only by float rounding in the rescale.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from edgeq.quant.weight_only import WeightOnlyLinear


def fake_quantize_activations(x: torch.Tensor, group: int) -> torch.Tensor:
    """``d · xq`` per row and group of ``group`` elements of the last dimension (float32)."""
    shape = x.shape
    blocks = x.float().reshape(*shape[:-1], shape[-1] // group, group)
    amax = blocks.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, torch.tensor(127.0) / amax, torch.zeros_like(amax))
    xq = torch.clamp(torch.round(blocks * inv), -127, 127)
    return (xq * (amax / 127.0)).reshape(shape).to(x.dtype)


@contextmanager
def int8_activations(model: torch.nn.Module):
    """Within the block, every ``WeightOnlyLinear`` of ``model`` takes int8-quantized inputs."""
    hooks = [m.register_forward_pre_hook(lambda mod, args: (fake_quantize_activations(args[0], mod.group_size), *args[1:]))
             for m in model.modules() if isinstance(m, WeightOnlyLinear)]
    try:
        yield model
    finally:
        for hook in hooks:
            hook.remove()
