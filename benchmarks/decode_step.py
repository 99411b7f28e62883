"""Decode steps of two (or more) edgeq TVM generation artifacts of one model, timed in one process,
rounds interleaved (the machine may be shared: compare minima and low percentiles), and what one
step costs the Relax VM: calls (kernels + builtins), kernels, and the kernels that launch the thread
pool (read from the library's code: a function that calls ``TVMBackendParallelLaunch``).

    python benchmarks/decode_step.py OLD.so NEW.so --labels old,new --steps 40 --rounds 8

Each round prefills nothing: the cache holds the prompt once (random ids), each artifact decodes
``--steps`` tokens from the prompt's length, the same tokens for every artifact (the first one's
greedy picks in round one), and the logits are compared between artifacts at every step. The
host's share outside the VM's function (the session's work per step) is measured apart.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _results import cpu_flags, markdown_table, print_and_record  # noqa: E402


def parallel_kernels(library: Path) -> set[str]:
    """Kernels of ``library`` whose code calls TVM's thread pool (x86-64 objdump; empty elsewhere)."""
    try:
        relocs = subprocess.run(["objdump", "-R", str(library)], capture_output=True, text=True, check=True).stdout
        code = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(library)], capture_output=True, text=True,
                              check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return set()
    slots = {line.split()[0].lstrip("0") for line in relocs.splitlines() if "__TVMBackendParallelLaunch" in line}
    found, current = set(), None
    for line in code.splitlines():
        if line.endswith(">:") and "<" in line:
            current = line[line.index("<") + 1:-2]
        elif current and any(f"# {slot} " in line or line.endswith(f"# {slot}") for slot in slots):
            found.add(current.removeprefix("__tvm_ffi_"))
    return found


def step_costs(session, token: int, library: Path) -> dict:
    """VM calls, kernels and thread-pool kernels of one decode step."""
    from edgeq.runtime.profile import vm_op_times

    start = session.position

    def step():
        session.decode(token)
        session.position = start

    ops = vm_op_times(session.vm, step, repeat=2, split_builtins=True)
    parallel = parallel_kernels(library)
    kernels = [o for o in ops if not o.name.startswith("vm.builtin")]
    return {"vm_calls": sum(o.calls for o in ops), "kernels": sum(o.calls for o in kernels),
            "parallel": sum(o.calls for o in kernels if o.name in parallel) if parallel else None}


def outside_the_vm_ms(session, token: int, steps: int = 120) -> float:
    """What a decode step costs on the host outside the VM's function, timed piece by piece around
    it as the session does them: the arguments (and ``set_input``) before, the outputs
    (``get_outputs``) and the logits' copy after; the median over ``steps`` steps."""
    import tvm

    start, name = session.position, session.generation["functions"]["decode"]
    outside = []
    for _ in range(steps):
        length = session._local.cache_length(start)  # the older forms' protocol, repeated by hand
        t0 = time.perf_counter()
        if session.returns_logits_only:  # the VM function called directly
            function, args = session.decode_call(token)
            t1 = time.perf_counter()
            out = function(*args)
            t2 = time.perf_counter()
            np.from_dlpack(out)[0, -1].copy()
        else:  # the set_input / invoke_stateful / get_outputs protocol
            args = [tvm.runtime.tensor(np.array([[token]]), session.device), session._local.mask(start + 1),
                    tvm.runtime.tensor(np.array([[start]]), session.device)]
            session.vm.set_input(name, *args, *session._cache, *([length] if session.cache_in_place else []))
            t1 = time.perf_counter()
            session.vm.invoke_stateful(name)
            t2 = time.perf_counter()
            outputs = session.vm.get_outputs(name)
            outputs[0].numpy()[0, -1], list(outputs[1:])
        outside.append((t1 - t0) + (time.perf_counter() - t2))
    return statistics.median(outside) * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="+", type=Path)
    parser.add_argument("--labels", help="comma-separated, one per artifact (default: the folder names)")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()
    from edgeq.runtime.tvm_generation import TvmCausalLMSession

    labels = args.labels.split(",") if args.labels else [p.parent.name for p in args.artifacts]
    sessions = [TvmCausalLMSession(p, threads=args.threads) for p in args.artifacts]
    vocab = sessions[0].artifact.outputs[0]["shape"][-1]
    prompt = np.random.default_rng(0).integers(0, vocab, args.prompt_tokens)
    tokens, first_logits = None, []
    for session in sessions:
        session.prefill(prompt)
    times = {label: [] for label in labels}
    differences = {label: 0.0 for label in labels}
    agree = {label: [0, 0] for label in labels}  # steps whose greedy pick equals the first artifact's, steps compared
    for r in range(args.rounds):
        order = list(zip(labels, sessions))
        for label, session in order if r % 2 == 0 else order[::-1]:
            session.position = args.prompt_tokens  # the cache's later positions are written again
            logits_seen, token = [], int(np.argmax(first_logits[-1])) if first_logits else 0
            for step in range(args.steps):
                feed = tokens[step] if tokens is not None else token
                begin = time.perf_counter()
                logits = session.decode(feed)
                times[label].append(time.perf_counter() - begin)
                logits_seen.append(logits)
                token = int(np.argmax(logits))
            if tokens is None:  # the first artifact's greedy picks become everyone's tokens
                tokens = [0] + [int(np.argmax(x)) for x in logits_seen[:-1]]
                first_logits = logits_seen
            elif r < 2:
                differences[label] = max(differences[label], max(float(np.abs(a - b).max())
                                                                 for a, b in zip(logits_seen, first_logits)))
                agree[label][0] += sum(int(np.argmax(a) == np.argmax(b)) for a, b in zip(logits_seen, first_logits))
                agree[label][1] += len(logits_seen)
    costs = [step_costs(s, tokens[0], p) for s, p in zip(sessions, args.artifacts)]
    for session, cost in zip(sessions, costs):
        session.position = args.prompt_tokens
        cost["outside"] = outside_the_vm_ms(session, tokens[0])
    rows = []
    for label, cost in zip(labels, costs):
        ms = sorted(t * 1e3 for t in times[label])
        rows.append([label, f"{ms[0]:.2f}", f"{ms[len(ms) // 10]:.2f}", f"{statistics.median(ms):.2f}",
                     f"{cost['outside']:.2f}", cost["vm_calls"], cost["kernels"], "-" if cost["parallel"] is None else cost["parallel"],
                     f"{differences[label]:.1e}", "-" if not agree[label][1] else f"{agree[label][0]} / {agree[label][1]}"])
    table = markdown_table(["artifact", "decode min ms", "p10 ms", "median ms", "outside the VM function ms (median)",
                            "VM calls / step", "kernels / step",
                            "thread-pool kernels / step", f"max abs logit difference to {labels[0]}",
                            f"greedy picks equal to {labels[0]}'s"], rows)
    load = open("/proc/loadavg").read().split()[0]
    notes = (f"{args.rounds} rounds x {args.steps} decode steps per artifact from a {args.prompt_tokens}-token cache, "
             f"rounds alternating the order, {args.threads} threads, one process; the same tokens fed to every "
             f"artifact. Outside the VM function: the session's work before and after the VM's function per step "
             f"(arguments, set_input / get_outputs where used, the logits' copy), median of 120 more steps. CPU flags: {cpu_flags()}. Load average (1 min) at the end: {load}. Artifacts: "
             + ", ".join(f"{label} = {p}" for label, p in zip(labels, args.artifacts)) + ".")
    print_and_record("Decode step, artifacts interleaved in one process", table, notes, record=not args.no_append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
