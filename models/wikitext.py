"""WikiText-2 perplexity of a causal LM, and calibration windows from the same text.

The test text is cut into consecutive non-overlapping windows of ``seq_len`` tokens (the whole
file tokenized once); perplexity is ``exp`` of the mean next-token loss over the first
``windows`` windows (each window predicts its tokens 2..seq_len from its own prefix).

Default 40 windows × 512 tokens (20,480 tokens; SmolLM2-135M float32: 28.74). How to check that a
count is stable to 1%: ``python -m edgeq.models.wikitext --stability`` evaluates every window of
the file and prints the fewest windows after which the running perplexity stays within 1% of the
whole-text figure (:func:`stability`). That full pass (~580 windows) was not run on the shared
2-core machine yet, so 40 is the count used by the reference figures, not a measured bound.
Comparisons of a quantized model with its float original are paired per window, and their
uncertainty is far smaller: ``benchmarks/weight_only.py --stability`` prints the standard error
of each quantized/float ratio (20 windows: 0.86% for W4 g128 GPTQ on SmolLM2-135M).
Only the test split ships in ``shared/data``, so GPTQ calibration takes windows *after* the
evaluated ones (``calibration_windows``): disjoint text from the same file.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from edgeq.errors import ModelFileError

SEQ_LEN = 512
WINDOWS = 40
_REL = Path("shared/data/wikitext-2-raw/wiki.test.raw")


def find_wikitext(path: str | Path | None = None) -> Path:
    """The WikiText-2 raw test file: ``path`` if given, else ``/work/shared/data/...`` or
    ``../shared/data/...`` relative to the repository."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ModelFileError(f"WikiText-2 text not found: {p}")
        return p
    repo = Path(__file__).resolve().parent.parent
    for candidate in (repo.parent / _REL, repo / _REL, Path("/work") / _REL, Path.cwd().parent / _REL):
        if candidate.is_file():
            return candidate
    raise ModelFileError(f"WikiText-2 test text not found as ../{_REL} or /work/{_REL}; pass its path")


def wikitext_tokens(tokenizer, path: str | Path | None = None) -> torch.Tensor:
    """The whole test text as one 1-D tensor of token ids."""
    text = find_wikitext(path).read_text(encoding="utf-8")
    return torch.tensor(tokenizer(text, return_tensors=None)["input_ids"], dtype=torch.long)


def windows_of(tokens: torch.Tensor, seq_len: int = SEQ_LEN) -> torch.Tensor:
    n = tokens.numel() // seq_len
    return tokens[: n * seq_len].reshape(n, seq_len)


def window_nll(model, windows: torch.Tensor, batch_size: int = 4, desc: str = "wikitext-2") -> torch.Tensor:
    """Mean next-token negative log-likelihood of each window [n]."""
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for i in tqdm(range(0, windows.shape[0], batch_size), desc=desc, leave=False):
            ids = windows[i:i + batch_size].to(device)
            logits = model(ids, use_cache=False).logits.float()
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
            out.append(loss.reshape(ids.shape[0], -1).mean(dim=1).cpu())
    return torch.cat(out)


def perplexity(model, tokens: torch.Tensor, windows: int = WINDOWS, seq_len: int = SEQ_LEN, batch_size: int = 4) -> float:
    """WikiText-2 perplexity over the first ``windows`` windows of ``tokens``."""
    w = windows_of(tokens, seq_len)[:windows]
    return math.exp(window_nll(model, w, batch_size).mean().item())


def calibration_windows(tokens: torch.Tensor, count: int = 32, seq_len: int = SEQ_LEN, skip: int = WINDOWS,
                        seed: int = 0) -> torch.Tensor:
    """``count`` windows [count, seq_len] drawn (seeded) from those after the first ``skip``."""
    w = windows_of(tokens, seq_len)[skip:]
    g = torch.Generator().manual_seed(seed)
    return w[torch.randperm(w.shape[0], generator=g)[:count]]


def stability(nll: torch.Tensor, tolerance: float = 0.01) -> int:
    """Fewest windows n such that the running perplexity over the first m windows is within
    ``tolerance`` of the whole-text figure for every m >= n."""
    full = math.exp(nll.mean().item())
    running = torch.exp(torch.cumsum(nll, 0) / torch.arange(1, nll.numel() + 1))
    bad = ((running / full - 1).abs() > tolerance).nonzero()
    return 1 if bad.numel() == 0 else int(bad.max().item()) + 2


def main(argv=None) -> int:
    import argparse

    from edgeq.models.smollm2 import load_smollm2

    p = argparse.ArgumentParser(description="SmolLM2-135M WikiText-2 perplexity")
    p.add_argument("--text", default=None)
    p.add_argument("--windows", type=int, default=WINDOWS)
    p.add_argument("--stability", action="store_true", help="evaluate every window and report the count stable to 1%")
    args = p.parse_args(argv)
    model, tokenizer = load_smollm2()
    tokens = wikitext_tokens(tokenizer, args.text)
    if args.stability:
        nll = window_nll(model, windows_of(tokens))
        print(f"all {nll.numel()} windows: ppl {math.exp(nll.mean().item()):.3f}; stable to 1% from {stability(nll)} windows")
    else:
        print(f"ppl {perplexity(model, tokens, args.windows):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
