"""A generation session on a TVM generation artifact (``edgeq compile`` of a KV-cache file), on
this host or on a device over RPC.

It follows the causal-LM session protocol of ``edgeq.runtime.generation``: ``prefill(ids)`` and
``decode(token)`` return the last position's logits, ``position`` counts the tokens in the cache,
``max_context`` bounds it. The cache never leaves the runtime: one ``[1, kv_heads, max_context,
head_dim]`` array per layer and K/V (remote arrays over RPC), allocated by ``reset``, which each
call writes its new positions into in place and returns only the logits (``CACHE_BOUND``, and
``CACHE_KEPT`` compiled before it, which takes the caches before ``cache_length``; an artifact
compiled before that also returns the caches, which the session passes to the next call; for an
artifact whose attention kept the appending form, each call's ``present`` arrays become the next
call's ``past``); only the logits come back to the host.

The session calls a ``CACHE_BOUND`` artifact's functions directly, on this host and over RPC (the VM's
``set_input`` copies arrays that arrive over RPC, so the in-place writes would miss the session's
caches). On this host the caches, and decode's workspace (its intermediates' views, made once), are
bound to the functions as trailing arguments at each ``reset``, so a call passes four inputs; over
RPC they go by handle with every call. Decode writes its logits into its workspace's item
``generation["workspace_logits"]`` and returns it; over RPC, where a function cannot return an
array it was passed by handle, it is called through a closure that returns nothing
(``save_function(..., include_return=False)``) and the logits are read from that item. On this
host a decode step's arguments cost no allocation: the token and its position are written into two
preallocated arrays (through numpy views of their memory), the attention mask and ``cache_length``
are views of arrays sized to the context, made once per length, and the logits are copied out of
the returned array (the VM reuses its memory).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeq.errors import ContextLengthError, ModelFileError, RuntimeExecError, first_line
from edgeq.runtime.rpc import CALL_TIMEOUT_S, bounded, connect, parse_device_url
from edgeq.targets.generation import CACHE_APPENDING, CACHE_BOUND, CACHE_IN_PLACE, CACHE_KEPT


# a function with its trailing arguments bound is saved in the VM under this prefix and its name
BOUND_PREFIX = "bound_"
# over RPC, decode returning its workspace's logits item is saved under this prefix, returning nothing
NO_RETURN_PREFIX = "no_return_"


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
        # the form the compile recorded: full caches written in place, after a cache_length argument,
        # returning the logits (compiled before that: the caches before a last cache_length, and
        # before that the caches returned too), or (attention the compile did not recognise, GPT-2)
        # caches returned appended
        form = self.generation.get("cache")
        if form not in (CACHE_BOUND, CACHE_KEPT, CACHE_IN_PLACE, CACHE_APPENDING):
            raise ModelFileError(f"{self.artifact.meta_path}: its generation entry records no cache form "
                                 f"(cache: {form!r}); compile the KV-cache file again with this edgeq")
        self.cache_in_place = form in (CACHE_BOUND, CACHE_KEPT, CACHE_IN_PLACE)
        self.returns_logits_only = form in (CACHE_BOUND, CACHE_KEPT)
        self._caches_bound = form == CACHE_BOUND  # the caches after cache_length, trailing arguments
        self._decode_workspace: list = []  # decode's last trailing arguments
        # the workspace item decode writes its logits into (and returns), when it does
        self._logits_item: int | None = self.generation.get("workspace_logits")
        self._local = None
        if self._session is None and self.max_context is not None:
            self._local = _LocalArguments(tvm, self.device, self.max_context)
        if self.returns_logits_only:  # called directly, no set_input / invoke_stateful / get_outputs
            # (set_input would copy the caches that arrive over RPC: the writes would miss the session's arrays)
            self._functions = bounded(lambda: {kind: self.vm[name] for kind, name in self.generation["functions"].items()},
                                      call_timeout_s, f"looking up the functions of {self.where}")
            if self.generation.get("workspace"):
                bounded(self._make_workspace, call_timeout_s, f"making the decode workspace of {self.where}")
            if self._session is not None and self._logits_item is not None:
                # a function cannot return over RPC an array it was passed by handle: decode's
                # return value is dropped on the device and its logits read from the workspace item
                name = self.generation["functions"]["decode"]
                self._functions["decode"] = bounded(lambda: self._no_return(name), call_timeout_s,
                                                    f"looking up decode on {self.where}")
        self.reset()

    def _make_workspace(self) -> None:
        """Decode's workspace (``generation["workspace"]``: the static views of its intermediates,
        ``edgeq.targets.lift_decode_workspace``), made once: each step writes into it and
        allocates nothing for it. Over RPC it stays on the device."""
        name = self.generation["workspace"]
        self.vm.set_input(name)
        self.vm.invoke_stateful(name)
        self._decode_workspace = list(self.vm.get_outputs(name))

    def _no_return(self, name: str):
        self.vm.save_function(name, NO_RETURN_PREFIX + name, include_return=False)
        return self.vm[NO_RETURN_PREFIX + name]

    def _bind_trailing(self) -> None:
        """On this host, each function of a ``CACHE_BOUND`` artifact with its trailing arguments
        bound (``save_function``): the caches, and decode's workspace after them; a step then passes
        the four inputs alone. Over RPC they travel by handle with each call instead:
        ``save_function`` copies arrays that arrive over RPC (as ``set_input`` does), and the
        in-place writes, and the views of one storage, would no longer share memory."""
        for kind, name in self.generation["functions"].items():
            self.vm.save_function(name, BOUND_PREFIX + name, *self._trailing(kind))
            self._functions[kind] = self.vm[BOUND_PREFIX + name]

    def _trailing(self, kind: str) -> list:
        """A ``CACHE_BOUND`` function's trailing arguments: the caches, and decode's workspace after them."""
        return [*self._cache, *(self._decode_workspace if kind == "decode" else [])]

    def reset(self) -> None:
        """Empty the cache (full-length arrays written in place, whose positions past ``position``
        are never read; else arrays of length 0 that each call returns appended to)."""
        g = self.generation
        shape = (1, g["num_kv_heads"], self.max_context if self.cache_in_place else 0, g["head_dim"])
        self._cache = [self._tvm.runtime.empty(shape, "float32", self.device) for _ in range(2 * g["num_layers"])]
        self.position = 0
        if self._caches_bound and self._session is None:
            self._bind_trailing()

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

    def decode_call(self, token_id: int) -> tuple:
        """(the VM function a decode step calls, its arguments) for ``token_id`` at ``position``, on
        an artifact whose functions return the logits alone (``CACHE_BOUND``, ``CACHE_KEPT``): what ``decode`` calls,
        for a benchmark to time the VM's part of a step apart from the session's. On this host the
        step's logits are the result's ``[0, -1]``; the position does not move."""
        return self._kept_call("decode", np.array([int(token_id)], np.int64), self.position)

    def _arguments(self, ids: np.ndarray, pos: int) -> tuple:
        """(input_ids, attention_mask, position_ids), cache_length (its shape is the number of
        tokens cached): on this host from ``_LocalArguments``, over RPC made for the call."""
        tvm, n = self._tvm, ids.size
        if self._local is not None:
            return list(self._local.arguments(ids, pos)), self._local.cache_length(pos)
        return ([tvm.runtime.tensor(ids[None], self.device),
                 tvm.runtime.tensor(np.ones((1, pos + n), np.int64), self.device),
                 tvm.runtime.tensor(np.arange(pos, pos + n, dtype=np.int64)[None], self.device)],
                tvm.runtime.empty((pos,), "int8", self.device))

    def _kept_call(self, kind: str, ids: np.ndarray, pos: int) -> tuple:
        args, cache_length = self._arguments(ids, pos)
        if not self._caches_bound:  # compiled before CACHE_BOUND
            return self._functions[kind], (*args, *self._cache, cache_length)
        if self._session is None:  # the caches and the workspace bound
            return self._functions[kind], (*args, cache_length)
        return self._functions[kind], (*args, cache_length, *self._trailing(kind))

    def _step(self, kind: str, ids: np.ndarray) -> np.ndarray:
        n, pos = ids.size, self.position
        function = self.generation["functions"][kind]

        def call_kept():  # the caches are written in place; only the logits come back
            vm_function, args = self._kept_call(kind, ids, pos)
            logits = vm_function(*args)
            if self._local is not None:  # the VM writes the next call's logits there: a copy
                return np.from_dlpack(logits)[0, -1].copy(), self._cache
            if logits is None:  # over RPC, decode's logits are its workspace item
                logits = self._decode_workspace[self._logits_item]
            return logits.numpy()[0, -1], self._cache

        def call_returning_caches():  # an in-place artifact compiled before CACHE_KEPT, or the appending form
            args, cache_length = self._arguments(ids, pos)
            self.vm.set_input(function, *args, *self._cache, *([cache_length] if self.cache_in_place else []))
            self.vm.invoke_stateful(function)
            outputs = self.vm.get_outputs(function)
            return outputs[0].numpy()[0, -1], list(outputs[1:])

        call = call_kept if self.returns_logits_only else call_returning_caches
        if self._session is None:
            try:
                logits, cache = call()
            except Exception as exc:
                raise RuntimeExecError(f"TVM failed on {self.where} ({kind}): {first_line(exc)}") from None
        else:
            logits, cache = bounded(call, self._timeout, f"{kind} on {self.where}")
        self._cache, self.position = cache, pos + n
        return logits


class _LocalArguments:
    """The per-call arguments of a generation function on this host, allocated once: ids and
    position ids (one-token arrays written through numpy views, longer prefill calls fresh), the
    attention mask (all ones) and ``cache_length`` (only its shape is read) as views of two arrays
    sized to the context, one view per length, made the first time that length is called."""

    def __init__(self, tvm, device, max_context: int):
        self._tvm, self._device = tvm, device
        self._token = tvm.runtime.empty((1, 1), "int64", device)
        self._position = tvm.runtime.empty((1, 1), "int64", device)
        self._token_view, self._position_view = np.from_dlpack(self._token), np.from_dlpack(self._position)
        self._ones = tvm.runtime.tensor(np.ones((1, max_context), np.int64), device)
        self._lengths_of = tvm.runtime.empty((max_context,), "int8", device)
        self._masks: dict = {}
        self._lengths: dict = {}

    def arguments(self, ids: np.ndarray, pos: int) -> tuple:
        """(input_ids, attention_mask, position_ids) for ``ids`` appended at ``pos``."""
        n = ids.size
        if n == 1:
            self._token_view[0, 0], self._position_view[0, 0] = ids[0], pos
            token, position = self._token, self._position
        else:
            token = self._tvm.runtime.tensor(ids[None], self._device)
            position = self._tvm.runtime.tensor(np.arange(pos, pos + n, dtype=np.int64)[None], self._device)
        return token, self.mask(pos + n), position

    def mask(self, length: int):
        view = self._masks.get(length)
        if view is None:
            view = self._masks[length] = self._ones._create_view((1, length))
        return view

    def cache_length(self, pos: int):
        view = self._lengths.get(pos)
        if view is None:
            view = self._lengths[pos] = self._lengths_of._create_view((pos,))
        return view
