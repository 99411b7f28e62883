"""What an ONNX file holds: opsets, op histogram, edgeq ops, weight bytes by dtype, effective bits
per weight, inputs and outputs. ``edgeq inspect`` prints it; ``--json`` gives ``to_dict()``.

Bits per weight count everything a quantized layer stores (packed integers, scales, zero points,
low-rank factors) over the weights it represents; a tensor shared by two layers (a tied embedding
and ``lm_head``) is counted once.
"""

from __future__ import annotations

import collections
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from edgeq.errors import ModelFileError
from edgeq.external_data import external_data_files
from edgeq.opset import DOMAIN

_BITS = {
    onnx.TensorProto.INT4: 4, onnx.TensorProto.UINT4: 4, onnx.TensorProto.INT2: 2, onnx.TensorProto.UINT2: 2,
    onnx.TensorProto.BOOL: 8, onnx.TensorProto.STRING: 0,
}
_NOT_WEIGHTS = {onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.BOOL}
# edgeq ops: (packed weight input, bit width attribute, inputs that are overhead of that weight)
_PACKED_OPS = {"LowBitLinear": (1, (2, 3)), "LowRankLinear": (1, (2, 3, 4, 5))}


@dataclass
class ValueInfo:
    name: str
    dtype: str
    shape: list


@dataclass
class ModelInfo:
    path: str
    file_bytes: int
    ir_version: int
    opsets: dict[str, int]
    op_histogram: dict[str, int]
    edgeq_ops: dict[str, int]
    function_bodies: int
    weight_bytes_by_dtype: dict[str, int]
    weights: int
    weight_bytes: int
    quantized_weights: int
    quantized_weight_bytes: int
    inputs: list[ValueInfo] = field(default_factory=list)
    outputs: list[ValueInfo] = field(default_factory=list)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.weight_bytes / max(self.weights, 1)

    @property
    def quantized_bits_per_weight(self) -> float | None:
        return 8 * self.quantized_weight_bytes / self.quantized_weights if self.quantized_weights else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bits_per_weight"] = round(self.bits_per_weight, 4)
        q = self.quantized_bits_per_weight
        d["quantized_bits_per_weight"] = None if q is None else round(q, 4)
        return d


_TYPED_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")


def check_tensor_data(model: onnx.ModelProto, path) -> None:
    """A ModelFileError naming the first initializer whose declared size has no data, or the
    wrong amount of it (a truncated or hand-edited file); external data is not read here."""
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            continue
        numel = int(np.prod(t.dims)) if t.dims else 1
        if t.HasField("raw_data"):
            if len(t.raw_data) != tensor_bytes(t):
                raise ModelFileError(f"{path}: initializer {t.name!r} declares shape {list(t.dims)} "
                                     f"({tensor_bytes(t)} bytes) but holds {len(t.raw_data)} bytes")
        elif numel and not any(len(getattr(t, f)) for f in _TYPED_FIELDS):
            raise ModelFileError(f"{path}: initializer {t.name!r} declares shape {list(t.dims)} but holds no data")


def tensor_bytes(t: onnx.TensorProto) -> int:
    numel = int(np.prod(t.dims)) if t.dims else 1
    bits = _BITS.get(t.data_type)
    if bits is None:
        bits = 8 * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    return (numel * bits + 7) // 8


def _dtype_name(elem_type: int) -> str:
    return onnx.TensorProto.DataType.Name(elem_type).lower()


def _value_info(v: onnx.ValueInfoProto) -> ValueInfo:
    t = v.type.tensor_type
    shape = [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else "?") for d in t.shape.dim]
    return ValueInfo(v.name, _dtype_name(t.elem_type), shape)


def model_info(path: str | Path) -> ModelInfo:
    """Read ``path`` (external data is sized, not loaded) and summarize it."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such file")
    if path.is_file() and path.stat().st_size == 0:
        raise ModelFileError(f"{path}: empty file, not an ONNX model")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelFileError(f"{path}: not an ONNX model ({type(exc).__name__})") from None
    if not model.graph.node:
        raise ModelFileError(f"{path}: no graph (not an ONNX model, or a truncated one)")
    check_tensor_data(model, path)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    sizes = {name: tensor_bytes(t) for name, t in inits.items()}
    by_dtype: dict[str, int] = collections.Counter()
    for t in inits.values():
        by_dtype[_dtype_name(t.data_type)] += sizes[t.name]

    # weights each initializer represents; quantized ones include their overhead tensors
    represented = {name: int(np.prod(t.dims)) if t.dims else 1 for name, t in inits.items()}
    quantized: dict[str, list[str]] = {}
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.domain == DOMAIN and node.op_type in _PACKED_OPS:
            w_index, overhead = _PACKED_OPS[node.op_type]
            packed = node.input[w_index]
            if packed in inits:
                rows, cols = inits[packed].dims
                represented[packed] = rows * (cols * 8 // attrs["bits"])
                quantized[packed] = [node.input[i] for i in overhead if node.input[i] in inits]
        elif node.op_type == "DequantizeLinear" and node.input[0] in inits:
            quantized[node.input[0]] = [name for name in node.input[1:3] if name in inits]
    overhead_names = {name for names in quantized.values() for name in names}
    for name in overhead_names:
        represented[name] = 0
    for name, t in inits.items():  # shape constants and indices are not weights
        if t.data_type in _NOT_WEIGHTS and name not in quantized:
            represented[name] = 0
    q_weights = sum(represented[name] for name in quantized)
    q_bytes = sum(sizes[name] for name in quantized) + sum(sizes[name] for name in overhead_names)

    histogram = collections.Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}" for n in graph.node)
    data_bytes = sum(p.stat().st_size for p in set(external_data_files(model, path).values()) if p.is_file())
    return ModelInfo(
        path=str(path),
        file_bytes=path.stat().st_size + data_bytes,
        ir_version=model.ir_version,
        opsets={(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        op_histogram=dict(histogram.most_common()),
        edgeq_ops={k.split(".", 1)[1]: v for k, v in histogram.items() if k.startswith(DOMAIN + ".")},
        function_bodies=len(model.functions),
        weight_bytes_by_dtype=dict(sorted(by_dtype.items(), key=lambda kv: -kv[1])),
        weights=sum(represented.values()),
        weight_bytes=sum(sizes[name] for name in inits if represented[name] or name in overhead_names),
        quantized_weights=q_weights,
        quantized_weight_bytes=q_bytes,
        inputs=[_value_info(v) for v in graph.input if v.name not in inits],
        outputs=[_value_info(v) for v in graph.output],
    )
