"""The shared maths every stage reads: bit packing, the group-wise quantization grid, Hadamard
matrices. The bottom layer of edgeq: these modules import nothing of edgeq but ``edgeq.errors``,
and do nothing when imported (see docs/ARCHITECTURE.md)."""
