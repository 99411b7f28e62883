"""edgeq's CPU schedule rules, one per module, each a TVM ``ScheduleRule``:
``apply(func, target, tunable)`` returns a Schedule, or None when the function is not one for
the rule. ``edgeq.targets.cpu_pipeline`` applies them with ``ApplyDefaultSchedule``, first rule
that fits wins (TVM 0.27 schedules nothing on CPU and dlight has no CPU matmul rule).

- ``packed_linear``: the packed low-bit linears (lane kernel, prefill GEMM, int8 activations).
- ``matmul``: one reduction ``C[..., i, j] += A · B`` over k: register tiles with the j lanes
  vectorized when an operand is contiguous in j; float sums split into vector lanes over k
  (rfactor) when every operand is contiguous in k; integer sums keep k innermost for LLVM
  (``sdot`` where the target has dotprod, ``vpmaddwd``/VNNI on x86).
- ``conv``: width as vector lanes, output channels as a register tile, reduction outside both.
- ``rows``: softmax-like chains on the same rows: one parallel row loop, exp once per element
  into an L1-resident row.
- ``reduction``: other reductions (RMSNorm, mean): rows in parallel, vector lanes.
- ``elementwise``: injective functions: loops fused, vectorized and split over threads.

Rows go to threads only when the kernel has enough work (``PARALLEL_MIN_WORK``): on small shapes
waking the pool costs more than it saves. Written on loops only, so the same schedule gives AVX2
on x86-64 and NEON on arm64.
"""
