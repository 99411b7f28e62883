"""A generation session on a TVM generation artifact (``edgeq compile`` of a KV-cache file), on
this host or on a device over RPC.

It follows the causal-LM session protocol of ``edgeq.runtime.generation``: ``prefill(ids)`` and
``decode(token)`` return the last position's logits, ``position`` counts the tokens in the cache,
``max_context`` bounds it. The cache never leaves the runtime: one ``[1, kv_heads, max_context,
head_dim]`` array per layer and K/V (remote arrays over RPC), allocated by ``reset``, which each
call writes its new positions into in place and passes back (or, for an artifact whose attention
kept the appending form, each call's ``present`` arrays become the next call's ``past``); only the
logits come back to the host.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeq.errors import ContextLengthError, ModelFileError, RuntimeExecError, first_line
from edgeq.runtime.rpc import CALL_TIMEOUT_S, bounded, connect, parse_device_url
from edgeq.targets.generation import CACHE_APPENDING, CACHE_IN_PLACE


class TvmCausalLMSession:
    """``TvmCausalLMSession(artifact, device=None | "rpc://host:port" | "tracker://...", threads=None)``."""

    def __init__(self, artifact_path: str | Path, device: str | None = None, threads: int | None = None,
                 call_timeout_s: float = CALL_TIMEOUT_S):
        import tvm
        from tvm import relax

        from edgeq.targets.compile import Artifact

        self.artifact = Artifact.load(artifact_path)
        if not self.artifact.generation:
            raise ModelFileError(f"{self.artifact.path}: not a generation artifact (compile a file from edgeq export --kv-cache)")
        self.generation = self.artifact.generation
        self.max_context: int | None = self.generation["max_context"]
        self.prefill_chunk: int = self.generation["prefill_chunk"]
        self._tvm, self._timeout, self._session = tvm, call_timeout_s, None
        name = self.artifact.path.name
        if device is None:
            from edgeq.runtime.threads import configure_tvm_threads

            configure_tvm_threads(threads)
            self.where = name
            self.device = tvm.cpu()
            self.vm = relax.VirtualMachine(tvm.runtime.load_module(str(self.artifact.path)), self.device)
        else:
            url = parse_device_url(device)
            self.where = f"{name} on {url}"
            self._session = connect(url)
            bounded(lambda: self._session.upload(str(self.artifact.path)), call_timeout_s, f"uploading {self.where}")
            lib = bounded(lambda: self._session.load_module(name), call_timeout_s, f"loading {self.where}")
            self.device = self._session.cpu()
            self.vm = bounded(lambda: relax.VirtualMachine(lib, self.device), call_timeout_s, f"starting the VM for {self.where}")
        # the form the compile recorded: full caches written in place, with a last cache_length
        # argument, or (attention the compile did not recognise, GPT-2) caches returned appended
        form = self.generation.get("cache")
        if form not in (CACHE_IN_PLACE, CACHE_APPENDING):
            raise ModelFileError(f"{self.artifact.meta_path}: its generation entry records no cache form "
                                 f"(cache: {form!r}); compile the KV-cache file again with this edgeq")
        self.cache_in_place = form == CACHE_IN_PLACE
        # on this host, the attention mask (all ones) and cache_length (only its shape is read) are
        # views of two arrays allocated once, sized to the context: no allocation per step
        self._ones = self._lengths = None
        if self._session is None and self.max_context is not None:
            self._ones = tvm.runtime.tensor(np.ones((1, self.max_context), np.int64), self.device)
            self._lengths = tvm.runtime.empty((self.max_context,), "int8", self.device)
        self.reset()

    def reset(self) -> None:
        """Empty the cache (full-length arrays written in place, whose positions past ``position``
        are never read; else arrays of length 0 that each call returns appended to)."""
        g = self.generation
        shape = (1, g["num_kv_heads"], self.max_context if self.cache_in_place else 0, g["head_dim"])
        self._cache = [self._tvm.runtime.empty(shape, "float32", self.device) for _ in range(2 * g["num_layers"])]
        self.position = 0

    def prefill(self, input_ids: np.ndarray) -> np.ndarray:
        """Append ``input_ids`` [seq] to the cache (in calls of at most ``prefill_chunk`` tokens);
        the logits [vocab] of the last one."""
        ids = np.asarray(input_ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise RuntimeExecError(f"{self.where}: prefill needs at least one token")
        self._check_room(ids.size)
        for start in range(0, ids.size, self.prefill_chunk):
            logits = self._step("prefill", ids[start:start + self.prefill_chunk])
        return logits

    def decode(self, token_id: int) -> np.ndarray:
        """Append one token; its logits [vocab]."""
        self._check_room(1)
        return self._step("decode", np.array([int(token_id)], np.int64))

    def close(self) -> None:
        """Free the cache and end the RPC session (the device serves one session at a time)."""
        import gc

        self._cache = self.vm = self.device = self._session = None
        gc.collect()

    def _check_room(self, tokens: int) -> None:
        if self.max_context is not None and self.position + tokens > self.max_context:
            raise ContextLengthError(
                f"{self.where}: {tokens} more token(s) would take the cache to {self.position + tokens}, "
                f"past its maximum context of {self.max_context} (compile with a larger --max-context)")

    def _step(self, kind: str, ids: np.ndarray) -> np.ndarray:
        tvm, n, pos = self._tvm, ids.size, self.position
        function = self.generation["functions"][kind]

        def call():
            if self._ones is not None:
                mask = self._ones._create_view((1, pos + n))
                cache_length = self._lengths._create_view((pos,))
            else:
                mask = tvm.runtime.tensor(np.ones((1, pos + n), np.int64), self.device)
                cache_length = tvm.runtime.empty((pos,), "int8", self.device)
            args = [tvm.runtime.tensor(ids[None], self.device), mask,
                    tvm.runtime.tensor(np.arange(pos, pos + n, dtype=np.int64)[None], self.device)]
            # cache_length: its shape is the number of tokens cached
            self.vm.set_input(function, *args, *self._cache, *([cache_length] if self.cache_in_place else []))
            self.vm.invoke_stateful(function)
            outputs = list(self.vm.get_outputs(function))
            return outputs[0].numpy()[0, -1], outputs[1:]

        if self._session is None:
            try:
                logits, cache = call()
            except Exception as exc:
                raise RuntimeExecError(f"TVM failed on {self.where} ({kind}): {first_line(exc)}") from None
        else:
            logits, cache = bounded(call, self._timeout, f"{kind} on {self.where}")
        self._cache, self.position = cache, pos + n
        return logits
