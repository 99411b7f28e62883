"""integerize: a W8A8/W4A8 QuantizeLinear/DequantizeLinear graph to an integer-only one (HAWQ-V3).

Every float op between an activation DequantizeLinear and the next QuantizeLinear becomes
integer arithmetic on the quantized tensors (uint8/int8 activations, int8 weights holding 8 or
fewer bits):

    DQ(x) -> Conv(DQ(w), bias) [-> Relu] -> Q(y)            (grouped and depthwise Conv too)
        ConvInteger(q_x, w, z_x) + bias_int32 -> edgeq.DyadicRequantize(b, c, z_y, lo, hi) -> Cast
    DQ(x) -> Gemm/MatMul(DQ(w)) [+ bias] [-> Relu] -> Q(y)          MatMulInteger, the same tail
    DQ(a), DQ(b) -> Add [-> Relu] -> Q(y)       each branch to S_y by its own multiplier, int32 sum
    DQ(a), DQ(b) -> Mul [-> Relu] -> Q(y)       (q_a - z_a) * (q_b - z_b) in int32, S_a*S_b/S_y
    DQ(x) -> AveragePool -> Q(y)                int32 window sum (depthwise ConvInteger of ones),
                                                requantized by S_x / (k*k*S_y)
    DQ(x) -> ReduceMean(H, W) / GlobalAveragePool -> Q(y)
                                                int32 ReduceSum, requantized by S_x / (H*W*S_y)
    DQ(x) -> HardSigmoid -> Q(y)                g = clip(q_x - z_x + rint(3/S_x), 0, rint(6/S_x)),
                                                requantized by S_x / (6*S_y)
    DQ(x) -> HardSwish -> Q(y)                  (q_x - z_x) * g, requantized by S_x^2 / (6*S_y)
    DQ(x) [-> Relu] -> Q(y)                     requantize (a ReLU sets lo = z_y)
    DQ(x) -> Reshape/Flatten/... -> ...         the shape op moves onto the integers

"[-> Relu]" is a Relu or a Clip(0, 6) (ReLU6: hi = z_y + rint(6/S_y) as well).

with bias_int32 = round(bias / (S_x*S_w)) and b/2^c ~= S_x*S_w/S_y (``edgeq.opset.dyadic``: the
same functions the PyTorch integer reference uses, so both compute the same integers). The
input QuantizeLinear and the output DequantizeLinear stay.

The pass proves that no int32 accumulator can overflow: max|q_x - z_x| * max_c ||w_c||_1 +
max|bias| < 2^31, or it fails naming the layer. An op with no integer form fails naming the node
and op, unless it is listed in ``keep_float`` (node names or op types): then that region stays
in float, between its DequantizeLinear and QuantizeLinear.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeq.errors import PassError, QuantizationError
from edgeq.opset.dyadic import (
    ACTIVATION_RANGES,
    INT32_MAX,
    INT32_MIN,
    accumulator_multiplier,
    activation_clip_bounds,
    bias_int32,
    hard_gate_offsets,
    hardsigmoid_multiplier,
    hardswish_multiplier,
    product_multiplier,
    rescale_multiplier,
)
from edgeq.passes._onnx import attach_edgeq_functions, consumers, node_label, producers
from edgeq.passes.dead_nodes import remove_dead_nodes
from edgeq.passes.integer_check import float_ops_in_integer_region, region_edges
from edgeq.pass_manager import Pass, register_pass

# ops that move uint8 values without changing them: they keep their input's scale and zero point
# (MaxPool too: the max of quantized values is the quantized max, quantization being monotone)
SHAPE_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity", "MaxPool"}
_RANGES = {TensorProto.UINT8: (0, 255), TensorProto.INT8: (-128, 127)}


class IntegerizeError(PassError):
    """The graph cannot be made integer-only as asked (an op with no integer form, an overflow)."""


@dataclass(frozen=True)
class QTensor:
    """An integer tensor standing for a float one: value = scale * (q - zero_point)."""

    name: str  # the integer tensor
    scale: np.float32
    zero_point: int
    dtype: int  # TensorProto type of q

    @property
    def range(self) -> tuple[int, int]:
        return _RANGES[self.dtype]


@dataclass(frozen=True)
class QWeight:
    values: np.ndarray  # int8, [C_out, ...]
    scale: np.ndarray  # float32 [C_out]


class _Integerizer:
    def __init__(self, model: onnx.ModelProto, keep_float: set[str]):
        self.model = model
        self.graph = model.graph
        self.keep_float = keep_float
        self.inits = {t.name: t for t in self.graph.initializer}
        self.new_inits: list[onnx.TensorProto] = []
        self.qtensors: dict[str, QTensor] = {}  # float tensor name -> its integer form
        self.producers = producers(self.graph)
        self.users = consumers(self.graph)
        self.shapes = _static_shapes(model)
        self._uid = 0

    # -- helpers -------------------------------------------------------------------------------
    def const(self, hint: str, value: np.ndarray) -> str:
        self._uid += 1
        name = f"{hint}__int{self._uid}"
        self.new_inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def fresh(self, hint: str) -> str:
        self._uid += 1
        return f"{hint}__int{self._uid}"

    def value(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.producers.get(name)
        if node is not None and node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        return None

    def activation_dq(self, node: onnx.NodeProto) -> QTensor | None:
        """A per-tensor DequantizeLinear of an activation (not of a constant)."""
        if node.op_type != "DequantizeLinear" or self.value(node.input[0]) is not None:
            return None
        scale = self.value(node.input[1])
        zp = self.value(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros((), np.uint8)
        if scale is None or zp is None or scale.size != 1:
            return None
        dtype = helper.np_dtype_to_tensor_dtype(zp.dtype)
        if dtype not in _RANGES:
            return None
        return QTensor(node.input[0], np.float32(scale.reshape(())), int(zp.reshape(())), dtype)

    def weight(self, name: str) -> QWeight | None:
        """An int8 constant dequantized per output channel (axis 0), symmetric."""
        node = self.producers.get(name)
        if node is None or node.op_type != "DequantizeLinear":
            return None
        values, scale = self.value(node.input[0]), self.value(node.input[1])
        zp = self.value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if values is not None and values.dtype.name in ("int4", "int2"):
            values = values.astype(np.int8)  # ONNX int4/int2 initializers: the same integers
        if values is None or scale is None or values.dtype != np.int8:
            return None
        if zp is not None and np.any(zp != 0):
            return None
        if scale.size > 1 and axis != 0:
            return None
        scale = np.broadcast_to(scale.astype(np.float32).reshape(-1), (values.shape[0],)).copy()
        return QWeight(values, scale)

    def emit(self, op: str, inputs: list[str], outputs: list[str], domain: str = "", **attrs) -> None:
        self.emitted.append(helper.make_node(op, inputs, outputs, name=self.fresh(f"int_{op}"), domain=domain, **attrs))

    def as_int32_centered(self, q: QTensor, hint: str) -> str:
        """q - z as int32."""
        x32 = self.fresh(f"{hint}_i32")
        self.emit("Cast", [q.name], [x32], to=TensorProto.INT32)
        if q.zero_point == 0:
            return x32
        centered = self.fresh(f"{hint}_centered")
        self.emit("Sub", [x32, self.const(f"{hint}_zp", np.array(q.zero_point, np.int32))], [centered])
        return centered

    def weight_operands(self, w: np.ndarray, x: QTensor, hint: str) -> list[str]:
        """The weight and its zero point in the activation's signedness.

        onnxruntime's x86 kernels for mixed signedness (uint8 x int8 MatMulInteger, int8 x uint8
        ConvInteger) sum products pairwise in saturating int16 (vpmaddubsw) and get wrong
        answers; uint8 x uint8 and int8 x int8 are exact. So with uint8 activations the int8
        weight is stored as w + 128 with zero point 128 (the same integers after subtraction).
        """
        if x.dtype == TensorProto.INT8:
            return [self.const(f"{hint}_w", w), self.const(f"{hint}_wzp", np.array(0, np.int8))]
        shifted = (w.astype(np.int16) + 128).astype(np.uint8)
        return [self.const(f"{hint}_w", shifted), self.const(f"{hint}_wzp", np.array(128, np.uint8))]

    def requantize(self, acc: str, b: np.ndarray, c: np.ndarray, out: QTensor, act: str | None, shape, q_out: str, hint: str):
        lo, hi = _bounds(out, act)
        y32 = self.fresh(f"{hint}_requant")
        self.emit(
            "DyadicRequantize",
            [acc, self.const(f"{hint}_b", b.reshape(shape)), self.const(f"{hint}_c", c.reshape(shape)),
             self.const(f"{hint}_zp", np.array(out.zero_point, np.int32))],
            [y32], domain="edgeq", lo=int(lo), hi=int(hi),
        )
        self.emit("Cast", [y32], [q_out], to=out.dtype)

    # -- patterns --------------------------------------------------------------------------------
    def run(self) -> onnx.ModelProto:
        self.emitted: list[onnx.NodeProto] = []
        new_nodes: list[onnx.NodeProto] = []
        for node in self.graph.node:
            self.emitted = []
            q_in = self.activation_dq(node)
            if q_in is not None:
                self.qtensors[node.output[0]] = q_in
            elif node.op_type in SHAPE_OPS and node.input and node.input[0] in self.qtensors:
                self.shape_op(node)
            elif node.op_type == "QuantizeLinear" and self.producers.get(node.input[0]) is not None:
                if self.quantize_anchor(node):
                    new_nodes.extend(self.emitted)  # the integer nodes now produce its output
                    continue
            new_nodes.append(node)
            new_nodes.extend(self.emitted)
        del self.graph.node[:]
        self.graph.node.extend(new_nodes)
        self.graph.initializer.extend(self.new_inits)
        return self.model

    def shape_op(self, node: onnx.NodeProto) -> None:
        src = self.qtensors[node.input[0]]
        out = self.fresh(node.output[0])
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        self.emit(node.op_type, [src.name, *node.input[1:]], [out], **attrs)
        self.qtensors[node.output[0]] = QTensor(out, src.scale, src.zero_point, src.dtype)

    def quantize_anchor(self, qnode: onnx.NodeProto) -> bool:
        """Rewrite the float op(s) that feed ``qnode`` (a QuantizeLinear) into integers."""
        out_scale, out_zp = self.value(qnode.input[1]), self.value(qnode.input[2]) if len(qnode.input) > 2 else None
        if out_scale is None or out_scale.size != 1 or out_zp is None:
            return False
        dtype = helper.np_dtype_to_tensor_dtype(out_zp.dtype)
        if dtype not in _RANGES:
            return False
        out = QTensor(qnode.output[0], np.float32(out_scale.reshape(())), int(out_zp.reshape(())), dtype)
        src = self.producers[qnode.input[0]]
        act = self.activation_clip(src)
        if act is not None:
            src = self.producers.get(src.input[0])
            if src is None:
                return False
        if src.name in self.keep_float or src.op_type in self.keep_float:
            return False
        hint = (src.name or src.output[0]).replace("/", "_")
        if src.output[0] in self.qtensors:  # DQ [-> Relu] -> Q: a requantize
            self.rescale([self.qtensors[src.output[0]]], out, act, qnode.output[0], hint)
        elif src.op_type == "Conv":
            self.conv(src, out, act, qnode.output[0], hint)
        elif src.op_type in ("Gemm", "MatMul"):
            self.matmul(src, None, out, act, qnode.output[0], hint)
        elif src.op_type == "Add" and self._matmul_with_bias(src) is not None:
            mm, bias = self._matmul_with_bias(src)
            self.matmul(mm, bias, out, act, qnode.output[0], hint)
        elif src.op_type == "Add" and all(i in self.qtensors for i in src.input):
            self.rescale([self.qtensors[i] for i in src.input], out, act, qnode.output[0], hint)
        elif src.op_type == "Mul" and all(i in self.qtensors for i in src.input):
            self.multiply(src, out, act, qnode.output[0], hint)
        elif src.op_type == "AveragePool" and src.input[0] in self.qtensors:
            self.average_pool(src, out, act, qnode.output[0], hint)
        elif src.op_type in ("ReduceMean", "GlobalAveragePool") and src.input[0] in self.qtensors:
            self.global_average_pool(src, out, act, qnode.output[0], hint)
        elif src.op_type in ("HardSigmoid", "HardSwish") and src.input[0] in self.qtensors:
            self.hard_gate(src, out, act, qnode.output[0], hint)
        else:
            return False  # left in float; the region check after the rewrite names it
        return True

    def activation_clip(self, node: onnx.NodeProto) -> str | None:
        """"relu" for a Relu, "relu6" for a Clip(0, 6) with constant bounds, else None."""
        if node.op_type == "Relu":
            return "relu"
        if node.op_type == "Clip" and len(node.input) == 3 and all(node.input[1:]):
            lo, hi = self.value(node.input[1]), self.value(node.input[2])
            if lo is not None and hi is not None and (float(lo), float(hi)) == ACTIVATION_RANGES["relu6"]:
                return "relu6"
        return None

    def _matmul_with_bias(self, add: onnx.NodeProto):
        for i, j in ((0, 1), (1, 0)):
            mm = self.producers.get(add.input[i])
            bias = self.value(add.input[j])
            if mm is not None and mm.op_type == "MatMul" and bias is not None:
                return mm, bias
        return None

    def check_accumulator(self, x: QTensor, w: np.ndarray, bias: np.ndarray, layer: onnx.NodeProto) -> None:
        lo, hi = x.range
        x_max = max(abs(lo - x.zero_point), abs(hi - x.zero_point))
        l1 = np.abs(w.astype(np.int64)).reshape(w.shape[0], -1).sum(axis=1)
        bound = int(x_max * l1.max() + np.abs(bias.astype(np.int64)).max(initial=0))
        if bound > INT32_MAX:
            raise IntegerizeError(
                f"{node_label(layer)}: its int32 accumulator can overflow (bound {bound} = "
                f"max|x - z| {x_max} * max_c ||w_c||_1 {int(l1.max())} + max|bias|, over 2^31 - 1); "
                f"keep it in float or split the reduction"
            )

    def conv(self, node, out: QTensor, act: str | None, q_out: str, hint: str) -> None:
        x = self.qtensors.get(node.input[0])
        w = self.weight(node.input[1])
        if x is None or w is None:
            return self._unsupported(node, "its input or weight is not quantized")
        bias_f = self.value(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(w.values.shape[0], np.float32)
        bias = bias_int32(bias_f, x.scale, w.scale)
        self.check_accumulator(x, w.values, bias, node)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        attrs.pop("auto_pad", None) if attrs.get("auto_pad") in (b"NOTSET", "NOTSET") else None
        acc = self.fresh(f"{hint}_acc")
        w_name, w_zp = self.weight_operands(w.values, x, hint)
        x_zp = self.const(f"{hint}_xzp", np.array(x.zero_point, _np(x.dtype)))
        self.emit("ConvInteger", [x.name, w_name, x_zp, w_zp], [acc], **attrs)
        acc_b = self.fresh(f"{hint}_acc_bias")
        self.emit("Add", [acc, self.const(f"{hint}_bias", bias.reshape(-1, 1, 1))], [acc_b])
        b, c = accumulator_multiplier(x.scale, w.scale, out.scale)
        self.requantize(acc_b, b, c, out, act, (-1, 1, 1), q_out, hint)

    def matmul(self, node, bias_f, out: QTensor, act: str | None, q_out: str, hint: str) -> None:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Gemm" and (attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            return self._unsupported(node, "only Gemm with transA=0, alpha=beta=1 is integerized")
        x = self.qtensors.get(node.input[0])
        w = self.weight(node.input[1])
        if x is None or w is None:
            return self._unsupported(node, "its input or weight is not quantized")
        # weight as [N, K] with the per-channel axis first; MatMul holds it as [K, N]
        if node.op_type == "Gemm" and not attrs.get("transB", 0) or node.op_type == "MatMul":
            return self._unsupported(node, "weights quantized along the input axis")
        if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
            bias_f = self.value(node.input[2])
        if bias_f is None:
            bias_f = np.zeros(w.values.shape[0], np.float32)
        bias = bias_int32(np.broadcast_to(bias_f, (w.values.shape[0],)), x.scale, w.scale)
        self.check_accumulator(x, w.values, bias, node)
        acc = self.fresh(f"{hint}_acc")
        w_name, w_zp = self.weight_operands(np.ascontiguousarray(w.values.T), x, hint)
        x_zp = self.const(f"{hint}_xzp", np.array(x.zero_point, _np(x.dtype)))
        self.emit("MatMulInteger", [x.name, w_name, x_zp, w_zp], [acc])
        acc_b = self.fresh(f"{hint}_acc_bias")
        self.emit("Add", [acc, self.const(f"{hint}_bias", bias)], [acc_b])
        b, c = accumulator_multiplier(x.scale, w.scale, out.scale)
        self.requantize(acc_b, b, c, out, act, (-1,), q_out, hint)

    def rescale(self, branches: list[QTensor], out: QTensor, act: str | None, q_out: str, hint: str) -> None:
        """One branch: a requantize; two: the residual add, summed in int32."""
        if len(branches) == 1:
            (q,) = branches
            b, c = rescale_multiplier(q.scale, out.scale)
            return self.requantize(self.as_int32_centered(q, hint), b, c, out, act, (), q_out, hint)
        parts = []
        for k, q in enumerate(branches):
            b, c = rescale_multiplier(q.scale, out.scale)
            if float(max(abs(q.range[0] - q.zero_point), abs(q.range[1] - q.zero_point))) * b / 2.0 ** c > 2**29:
                raise IntegerizeError(f"{hint}: branch {k} of the add overflows int32 at the output's scale")
            part = self.fresh(f"{hint}_branch{k}")
            self.emit("DyadicRequantize", [self.as_int32_centered(q, f"{hint}_{k}"), self.const(f"{hint}_b{k}", b),
                                           self.const(f"{hint}_c{k}", c), self.const(f"{hint}_zero", np.array(0, np.int32))],
                      [part], domain="edgeq", lo=INT32_MIN, hi=INT32_MAX)
            parts.append(part)
        total = self.fresh(f"{hint}_sum")
        self.emit("Add", parts, [total])
        shifted = self.fresh(f"{hint}_shifted")
        self.emit("Add", [total, self.const(f"{hint}_zp", np.array(out.zero_point, np.int32))], [shifted])
        lo, hi = _bounds(out, act)
        clipped = self.fresh(f"{hint}_clipped")
        self.emit("Clip", [shifted, self.const(f"{hint}_lo", np.array(lo, np.int32)), self.const(f"{hint}_hi", np.array(hi, np.int32))], [clipped])
        self.emit("Cast", [clipped], [q_out], to=out.dtype)

    def average_pool(self, node, out: QTensor, act: str | None, q_out: str, hint: str) -> None:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        kernel = list(attrs["kernel_shape"])
        if any(attrs.get("pads", [0])) or attrs.get("ceil_mode", 0) or len(kernel) != 2:
            return self._unsupported(node, "integer average pooling needs a 2-D window, no padding, ceil_mode=0")
        x = self.qtensors[node.input[0]]
        shape = self.shapes.get(node.input[0])
        if shape is None or len(shape) != 4 or not isinstance(shape[1], int):
            return self._unsupported(node, "the channel count is not static")
        channels = shape[1]
        ones, ones_zp = self.weight_operands(np.ones((channels, 1, *kernel), np.int8), x, hint)
        acc = self.fresh(f"{hint}_sum")
        x_zp = self.const(f"{hint}_xzp", np.array(x.zero_point, _np(x.dtype)))
        self.emit("ConvInteger", [x.name, ones, x_zp, ones_zp], [acc], group=channels, kernel_shape=kernel, strides=list(attrs.get("strides", kernel)))
        b, c = rescale_multiplier(x.scale, out.scale, count=int(np.prod(kernel)))
        self.requantize(acc, b, c, out, act, (), q_out, hint)

    def multiply(self, node, out: QTensor, act: str | None, q_out: str, hint: str) -> None:
        a, b = (self.qtensors[i] for i in node.input)
        product = self.fresh(f"{hint}_product")
        self.emit("Mul", [self.as_int32_centered(a, f"{hint}_0"), self.as_int32_centered(b, f"{hint}_1")], [product])
        m, s = product_multiplier(a.scale, b.scale, out.scale)
        self.requantize(product, m, s, out, act, (), q_out, hint)

    def global_average_pool(self, node, out: QTensor, act: str | None, q_out: str, hint: str) -> None:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        shape = self.shapes.get(node.input[0])
        if shape is None or len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape[2:]):
            return self._unsupported(node, "its input is not NCHW with a static height and width")
        keepdims = 1
        if node.op_type == "ReduceMean":
            axes = self.value(node.input[1]) if len(node.input) > 1 and node.input[1] else attrs.get("axes")
            if axes is None or sorted(int(a) % 4 for a in np.ravel(axes)) != [2, 3]:
                return self._unsupported(node, "only a mean over height and width (axes 2, 3) is integerized")
            keepdims = int(attrs.get("keepdims", 1))
        x = self.qtensors[node.input[0]]
        total = self.fresh(f"{hint}_sum")
        self.emit("ReduceSum", [self.as_int32_centered(x, hint), self.const(f"{hint}_axes", np.array([2, 3], np.int64))],
                  [total], keepdims=keepdims)
        b, c = rescale_multiplier(x.scale, out.scale, count=shape[2] * shape[3])
        self.requantize(total, b, c, out, act, (), q_out, hint)

    def hard_gate(self, node, out: QTensor, act: str | None, q_out: str, hint: str) -> None:
        """relu6(x + 3) / 6 (HardSigmoid) or x * relu6(x + 3) / 6 (HardSwish) in integers."""
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "HardSigmoid" and (abs(attrs.get("alpha", 0.2) - 1 / 6) > 1e-6 or attrs.get("beta", 0.5) != 0.5):
            return self._unsupported(node, "only PyTorch's HardSigmoid (alpha 1/6, beta 1/2) is integerized")
        x = self.qtensors[node.input[0]]
        try:
            three, six = hard_gate_offsets(x.scale)
        except QuantizationError as exc:
            raise IntegerizeError(f"{node_label(node)}: {exc}") from None
        centered = self.as_int32_centered(x, hint)
        shifted, gate = self.fresh(f"{hint}_plus3"), self.fresh(f"{hint}_gate")
        self.emit("Add", [centered, self.const(f"{hint}_three", np.array(three, np.int32))], [shifted])
        self.emit("Clip", [shifted, self.const(f"{hint}_zero", np.array(0, np.int32)),
                           self.const(f"{hint}_six", np.array(six, np.int32))], [gate])
        if node.op_type == "HardSigmoid":
            b, c = hardsigmoid_multiplier(x.scale, out.scale)
            return self.requantize(gate, b, c, out, act, (), q_out, hint)
        product = self.fresh(f"{hint}_product")
        self.emit("Mul", [centered, gate], [product])
        b, c = hardswish_multiplier(x.scale, out.scale)
        self.requantize(product, b, c, out, act, (), q_out, hint)

    def _unsupported(self, node, why: str):
        raise IntegerizeError(
            f"{node_label(node)} has no integer form here ({why}); pass keep_float=[{node.name!r}] "
            f"(edgeq optimize --keep-float {node.name}) to keep it in float"
        )


def _bounds(out: QTensor, act: str | None) -> tuple[int, int]:
    return activation_clip_bounds(out.scale, out.zero_point, *out.range, act)


def _np(dtype: int):
    return helper.tensor_dtype_to_np_dtype(dtype)


def _static_shapes(model: onnx.ModelProto) -> dict[str, list]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        return {}
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]
    return shapes


def integerize(model: onnx.ModelProto, keep_float=()) -> onnx.ModelProto:
    """An integer-only copy of the QDQ ``model`` (see the module docstring)."""
    keep = set(keep_float)
    starts, ends = region_edges(model)
    if not starts:
        raise IntegerizeError("no QuantizeLinear of a graph input: this is not a QDQ graph to integerize")
    if len(ends) != len(model.graph.output):
        done = {e.output[0] for e in ends}
        out = next(o.name for o in model.graph.output if o.name not in done)
        src = producers(model.graph).get(out)
        raise IntegerizeError(
            f"graph output {out!r} is not a DequantizeLinear of integers (it comes from "
            f"{node_label(src) if src is not None else 'the graph input'}): quantize the model's outputs "
            f"(the w8a8-dyadic/w4a8-dyadic recipes do) to make it integer-only"
        )
    result = _Integerizer(_copy(model), keep).run()
    result = remove_dead_nodes(result)
    attach_edgeq_functions(result)
    leftover = [n for n in float_ops_in_integer_region(result)
                if n.name not in keep and n.op_type not in keep and not _feeds_kept(n, result, keep)]
    if leftover:
        n = next((n for n in leftover if n.op_type not in ("DequantizeLinear", "QuantizeLinear")), leftover[0])
        raise IntegerizeError(
            f"{node_label(n)} has no integer form; pass keep_float=[{n.name!r}] "
            f"(edgeq optimize --keep-float {n.name}) to keep that region in float"
        )
    onnx.checker.check_model(result, full_check=True)
    return result


def _feeds_kept(node: onnx.NodeProto, model: onnx.ModelProto, keep: set[str]) -> bool:
    """The DequantizeLinear/QuantizeLinear at the edge of a region kept in float."""
    if node.op_type != "DequantizeLinear":
        return False
    return any(u.name in keep or u.op_type in keep for u in consumers(model.graph).get(node.output[0], []))


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


register_pass(Pass(
    name="integerize", run=integerize, doc=__doc__.splitlines()[0],
    requires=frozenset({"qdq"}), guarantees=frozenset({"integer_only"}),
    waived_by={"keep_float": frozenset({"integer_only"})},
    tolerance=0.05,  # dyadic rounding of biases and rescales: a few output steps
))


def export_integer(qmodel, example_inputs, path, opset: int = 21, **options: Any):
    """Export a dyadic-quantized model (``edgeq.quantize(model, "w8a8-dyadic", ...)``) to an
    integer-only ONNX file: its QDQ form through ``edgeq.export``, then :func:`integerize`
    (``options``: its keywords). ``edgeq.export`` is imported at call time so that the passes load
    without torch."""
    from edgeq._io import atomic_path
    from edgeq.export import export

    with atomic_path(path, keep_suffix=True) as tmp:
        export(qmodel.qdq_module(), example_inputs, tmp, opset=opset)
        model = integerize(onnx.load(str(tmp)), **options)
        onnx.save_model(model, str(tmp))
    return path
