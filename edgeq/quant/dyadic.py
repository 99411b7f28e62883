"""HAWQ-V3 integer-only quantization (``w8a8-dyadic``, ``w4a8-dyadic``, per-layer bit maps).

BatchNorm is folded first; weights are symmetric per output channel (8 or 4 bits, held in int8);
every activation is uint8, per tensor, with a range calibrated on sample inputs. Each op reads
quantized tensors and writes a quantized tensor:

    conv / linear (+ReLU):  acc = sum (q_x - z_x) * q_w  + bias_int32         (int32, scale S_x*S_w)
      (depthwise too)       q_y = DyadicRequantize(acc, b, c, z_y, lo, hi)     b/2^c ~= S_x*S_w/S_y
    add (+ReLU):            each branch (q - z) brought to S_y by its own dyadic multiplier,
                            added in int32, + z_y, clipped
    average pooling:        the window's int32 sum, requantized by S_x/(k*k*S_y); a global
                            pool (AdaptiveAvgPool2d(1), mean over H, W) by S_x/(H*W*S_y)
    ReLU / ReLU6:           the clip's bounds are z_y and z_y + rint(6/S_y)
    Hardsigmoid:            g = clip(q_x - z_x + rint(3/S_x), 0, rint(6/S_x)),  b/2^c ~= S_x/(6 S_y)
    Hardswish:              (q_x - z_x) * g,                                    b/2^c ~= S_x^2/(6 S_y)
    multiply (SE gate):     (q_a - z_a) * (q_b - z_b),                          b/2^c ~= S_a S_b/S_y

The quantizer returns a ``DyadicModel``: its ``forward`` is the PyTorch integer reference (it
computes these integers exactly, with the rounding contract of ``edgeq.opset.dyadic``), and
``qdq_module()`` is the same model in QuantizeLinear/DequantizeLinear form for ``edgeq.export``;
``edgeq.passes.integerize`` turns that export into an integer-only ONNX graph that computes the
same integers (``edgeq.passes.integerize.export_integer`` does both steps).
"""

from __future__ import annotations

import copy
import fnmatch
import operator
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from edgeq.errors import QuantizationError
from edgeq.maths.groups import symmetric_per_channel
from edgeq.opset import dyadic as formulas
from edgeq.opset.dyadic import INT32_MAX, INT32_MIN
from edgeq.opset.qdq import dequantize_linear, quantize_linear
from edgeq.quant.base import as_is, calib_batches, register_export_rule, register_quantizer
from edgeq.quant.fold import fold_batchnorm, trace, traceable
from edgeq.quant.w8a8 import affine_uint8_params
from edgeq.recipes import Recipe, register_preset, register_recipe_type

ACT_MIN, ACT_MAX = 0, 255  # uint8 activations


def activation_bounds(qp: "QParams", act: str | None) -> tuple[int, int]:
    """The uint8 bounds of a requantize to ``qp`` with the clip ``act`` fused in."""
    return formulas.activation_clip_bounds(qp.scale, qp.zero_point, ACT_MIN, ACT_MAX, act)


@dataclass(frozen=True)
class DyadicRecipe(Recipe):
    """Integer-only (HAWQ-V3): symmetric per-channel ``weight_bits`` weights, uint8 activations,
    int32 accumulators, dyadic requantization. ``layer_bits`` maps fnmatch patterns of layer
    names to weight bits for mixed precision (first match wins), e.g. (("stem.*", 8),)."""

    METHOD = "dyadic"
    weight_bits: int = 8
    layer_bits: tuple[tuple[str, int], ...] = ()
    act_percentile: float = 100.0

    @property
    def needs_calibration(self) -> bool:
        return True

    def bits_for(self, name: str) -> int:
        for pattern, bits in self.layer_bits:
            if fnmatch.fnmatchcase(name, pattern):
                return int(bits)
        return self.weight_bits


register_recipe_type(DyadicRecipe)
register_preset("w8a8-dyadic", DyadicRecipe(weight_bits=8))
register_preset("w4a8-dyadic", DyadicRecipe(weight_bits=4))


@dataclass(frozen=True)
class QParams:
    """A uint8 tensor's scale (float32, as ONNX stores it) and zero point."""

    scale: float
    zero_point: int


def dyadic_requantize(x: torch.Tensor, multiplier, shift, zero_point: int, lo: int, hi: int) -> torch.Tensor:
    """The rounding contract in int64 torch: clip(((x*b + 2^(c-1)) >> c) + z, lo, hi)."""
    m = torch.as_tensor(np.asarray(multiplier, np.int64))
    s = torch.as_tensor(np.asarray(shift, np.int64))
    t = x.to(torch.int64) * m + torch.bitwise_left_shift(torch.ones_like(s), s - 1)
    return torch.clamp(torch.bitwise_right_shift(t, s) + int(zero_point), lo, hi)


def _exact_int(x: torch.Tensor) -> torch.Tensor:
    """float64 holding integer sums below 2^53 (exact) back to int64."""
    return torch.round(x).to(torch.int64)


# --------------------------------------------------------------------------------------------
# QDQ modules: what edgeq.export writes (float compute on quantized values)


class ActFakeQuant(nn.Module):
    """QuantizeLinear -> DequantizeLinear at a uint8 activation's scale and zero point."""

    def __init__(self, qp: QParams):
        super().__init__()
        self.register_buffer("scale", torch.tensor(qp.scale, dtype=torch.float32))
        self.register_buffer("zero_point", torch.tensor(qp.zero_point, dtype=torch.uint8))

    def forward(self, x):
        return dequantize_linear(quantize_linear(x, self.scale, self.zero_point), self.scale, self.zero_point)


class QDQWeightLayer(nn.Module):
    """A conv or linear layer on its dequantized symmetric per-channel weight."""

    def __init__(self, layer: nn.Conv2d | nn.Linear, bits: int):
        super().__init__()
        q, scale = symmetric_per_channel(layer.weight, bits)
        self.bits = bits
        self.register_buffer("weight_int8", q)
        self.register_buffer("weight_scale", scale)
        self.register_buffer("weight_zero_point", torch.zeros_like(scale, dtype=torch.int8))
        bias = layer.bias.detach().float().clone() if layer.bias is not None else torch.zeros(q.shape[0])
        self.register_buffer("bias", bias)
        self.conv = isinstance(layer, nn.Conv2d)
        if self.conv:
            self.stride, self.padding, self.dilation, self.groups = layer.stride, layer.padding, layer.dilation, layer.groups

    def forward(self, x):
        w = dequantize_linear(self.weight_int8, self.weight_scale, self.weight_zero_point, axis=0)
        if self.conv:
            return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return F.linear(x, w, self.bias)


# --------------------------------------------------------------------------------------------
# Integer modules: the PyTorch integer reference (int64 tensors holding the exact integers)


class IntQuantize(nn.Module):
    def __init__(self, qp: QParams):
        super().__init__()
        self.fq = ActFakeQuant(qp)

    def forward(self, x):
        return quantize_linear(x, self.fq.scale, self.fq.zero_point).to(torch.int64)


class IntDequantize(nn.Module):
    def __init__(self, qp: QParams):
        super().__init__()
        self.fq = ActFakeQuant(qp)

    def forward(self, q):
        return (q.to(torch.float32) - self.fq.zero_point.to(torch.float32)) * self.fq.scale


class IntWeightLayer(nn.Module):
    """Integer conv/linear: int32 accumulator + int32 bias, dyadic requantize to the output."""

    def __init__(self, qdq: QDQWeightLayer, qp_in: QParams, qp_out: QParams, act: str | None):
        super().__init__()
        self.qdq = qdq
        self.in_zp = qp_in.zero_point
        s_w = qdq.weight_scale.numpy()
        self.register_buffer("bias_int32", torch.from_numpy(formulas.bias_int32(qdq.bias.numpy(), qp_in.scale, s_w)).to(torch.int64))
        b, c = formulas.accumulator_multiplier(qp_in.scale, s_w, qp_out.scale)
        shape = (-1, 1, 1) if qdq.conv else (-1,)
        self.multiplier, self.shift = b.reshape(shape), c.reshape(shape)
        self.out_zp = qp_out.zero_point
        self.lo, self.hi = activation_bounds(qp_out, act)

    def accumulate(self, q: torch.Tensor) -> torch.Tensor:
        x = (q - self.in_zp).to(torch.float64)
        w = self.qdq.weight_int8.to(torch.float64)
        if self.qdq.conv:
            acc = F.conv2d(x, w, None, self.qdq.stride, self.qdq.padding, self.qdq.dilation, self.qdq.groups)
            return _exact_int(acc) + self.bias_int32.reshape(-1, 1, 1)
        return _exact_int(F.linear(x, w)) + self.bias_int32

    def forward(self, q):
        return dyadic_requantize(self.accumulate(q), self.multiplier, self.shift, self.out_zp, self.lo, self.hi)


class IntAdd(nn.Module):
    """Residual add: each branch to the output scale by its own dyadic multiplier, int32 sum."""

    def __init__(self, qp_a: QParams, qp_b: QParams, qp_out: QParams, act: str | None):
        super().__init__()
        self.zp_a, self.zp_b = qp_a.zero_point, qp_b.zero_point
        self.ma, self.sa = formulas.rescale_multiplier(np.float32(qp_a.scale), qp_out.scale)
        self.mb, self.sb = formulas.rescale_multiplier(np.float32(qp_b.scale), qp_out.scale)
        self.out_zp = qp_out.zero_point
        self.lo, self.hi = activation_bounds(qp_out, act)

    def forward(self, qa, qb):
        a = dyadic_requantize(qa - self.zp_a, self.ma, self.sa, 0, INT32_MIN, INT32_MAX)
        b = dyadic_requantize(qb - self.zp_b, self.mb, self.sb, 0, INT32_MIN, INT32_MAX)
        return torch.clamp(a + b + self.out_zp, self.lo, self.hi)


class IntRequantize(nn.Module):
    """A quantized tensor to another scale (a standalone ReLU/ReLU6: the clip's bounds)."""

    def __init__(self, qp_in: QParams, qp_out: QParams, act: str | None):
        super().__init__()
        self.in_zp = qp_in.zero_point
        self.m, self.s = formulas.rescale_multiplier(np.float32(qp_in.scale), qp_out.scale)
        self.out_zp = qp_out.zero_point
        self.lo, self.hi = activation_bounds(qp_out, act)

    def forward(self, q):
        return dyadic_requantize(q - self.in_zp, self.m, self.s, self.out_zp, self.lo, self.hi)


class IntAvgPool(nn.Module):
    """Average pooling: the int32 window sum, divided by k*k inside the dyadic multiplier."""

    def __init__(self, pool: nn.AvgPool2d, qp_in: QParams, qp_out: QParams):
        super().__init__()
        k = _pair(pool.kernel_size)
        if any(_pair(pool.padding)) or pool.ceil_mode:
            raise QuantizationError(f"integer average pooling needs padding=0 and ceil_mode=False, got {pool}")
        self.kernel, self.stride = k, _pair(pool.stride or pool.kernel_size)
        self.in_zp = qp_in.zero_point
        self.m, self.s = formulas.rescale_multiplier(np.float32(qp_in.scale), qp_out.scale, count=k[0] * k[1])
        self.out_zp = qp_out.zero_point

    def forward(self, q):
        sums = F.avg_pool2d((q - self.in_zp).to(torch.float64), self.kernel, self.stride, divisor_override=1)
        return dyadic_requantize(_exact_int(sums), self.m, self.s, self.out_zp, ACT_MIN, ACT_MAX)


class IntGlobalAvgPool(nn.Module):
    """Global average pooling (AdaptiveAvgPool2d(1), a mean over H and W): the int32 sum over
    the plane, divided by H*W inside the dyadic multiplier."""

    def __init__(self, qp_in: QParams, qp_out: QParams, keepdim: bool):
        super().__init__()
        self.in_zp, self.in_scale, self.out_qp, self.keepdim = qp_in.zero_point, qp_in.scale, qp_out, keepdim

    def forward(self, q):
        sums = (q - self.in_zp).sum(dim=(2, 3), keepdim=self.keepdim)
        m, s = formulas.rescale_multiplier(np.float32(self.in_scale), self.out_qp.scale, count=q.shape[2] * q.shape[3])
        return dyadic_requantize(sums, m, s, self.out_qp.zero_point, ACT_MIN, ACT_MAX)


class IntHardGate(nn.Module):
    """Hardsigmoid relu6(x + 3) / 6 and Hardswish x * relu6(x + 3) / 6 in integers:
    g = clip(q - z + three, 0, six) with 3 and 6 at the input's scale, then (Hardswish) the
    integer product (q - z) * g, then a dyadic rescale to the output."""

    def __init__(self, qp_in: QParams, qp_out: QParams, swish: bool):
        super().__init__()
        self.in_zp, self.swish = qp_in.zero_point, swish
        self.three, self.six = formulas.hard_gate_offsets(qp_in.scale)
        rescale = formulas.hardswish_multiplier if swish else formulas.hardsigmoid_multiplier
        self.m, self.s = rescale(qp_in.scale, qp_out.scale)
        self.out_zp = qp_out.zero_point

    def forward(self, q):
        x = q - self.in_zp
        g = torch.clamp(x + self.three, 0, self.six)
        return dyadic_requantize(x * g if self.swish else g, self.m, self.s, self.out_zp, ACT_MIN, ACT_MAX)


class IntMul(nn.Module):
    """Elementwise product of two quantized tensors (the squeeze-excite gate times the feature
    map, broadcast over H and W): (q_a - z_a) * (q_b - z_b) in int32, a dyadic rescale."""

    def __init__(self, qp_a: QParams, qp_b: QParams, qp_out: QParams, act: str | None):
        super().__init__()
        self.zp_a, self.zp_b = qp_a.zero_point, qp_b.zero_point
        self.m, self.s = formulas.product_multiplier(qp_a.scale, qp_b.scale, qp_out.scale)
        self.out_zp = qp_out.zero_point
        self.lo, self.hi = activation_bounds(qp_out, act)

    def forward(self, qa, qb):
        return dyadic_requantize((qa - self.zp_a) * (qb - self.zp_b), self.m, self.s, self.out_zp, self.lo, self.hi)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


# --------------------------------------------------------------------------------------------
# Graph analysis: which FX nodes compute, which pass integer tensors through, where ReLU fuses

_RELU_FUNCS = {F.relu, torch.relu}
_RELU6_FUNCS = {F.relu6}
_ADD_FUNCS = {operator.add, operator.iadd, torch.add}
_MUL_FUNCS = {operator.mul, torch.mul}
_SHAPE_FUNCS = {torch.flatten, torch.reshape}
_SHAPE_METHODS = {"flatten", "view", "reshape"}
_GATE_MODULES = {nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid"}
_GATE_FUNCS = {F.hardswish: "hardswish", F.hardsigmoid: "hardsigmoid"}
SUPPORTED_OPS = ("Conv2d (grouped and depthwise too), Linear, ReLU, ReLU6, Hardswish, Hardsigmoid, add and "
                 "multiply of two tensors, AvgPool2d, MaxPool2d, AdaptiveAvgPool2d(1) / mean over H and W, flatten/reshape")


def _op_name(node: torch.fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return type(modules[node.target]).__name__
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    return getattr(node.target, "__name__", str(node.target))


def _layer_name(node: torch.fx.Node) -> str:
    return node.target if node.op == "call_module" else node.name


def _refuse(node: torch.fx.Node, modules: dict[str, nn.Module], why: str = "") -> QuantizationError:
    return QuantizationError(
        f"layer {_layer_name(node)!r}: {_op_name(node, modules)}{why} has no integer-only form in the dyadic "
        f"quantizer (it takes {SUPPORTED_OPS})"
    )


def _is_global_mean(node: torch.fx.Node) -> bool:
    """x.mean((2, 3)) / torch.mean(x, (-2, -1), keepdim=...) on an NCHW tensor."""
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if isinstance(dims, int) or dims is None:
        return False
    return sorted(d % 4 for d in dims) == [2, 3] and not node.kwargs.get("dtype")


def _tensor_args(node: torch.fx.Node) -> list:
    return [a for a in node.args if isinstance(a, torch.fx.Node)]


def _kind(node: torch.fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "placeholder":
        return "input"
    if node.op == "output":
        return "output"
    if node.op == "call_module":
        m = modules[node.target]
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            return "weight"
        if isinstance(m, nn.ReLU):
            return "relu"
        if isinstance(m, nn.ReLU6) or (isinstance(m, nn.Hardtanh) and (m.min_val, m.max_val) == (0.0, 6.0)):
            return "relu6"
        if type(m) in _GATE_MODULES:
            return _GATE_MODULES[type(m)]
        if isinstance(m, nn.AvgPool2d):
            return "avgpool"
        if isinstance(m, nn.AdaptiveAvgPool2d):
            if _pair(m.output_size) != (1, 1):
                raise _refuse(node, modules, f"(output_size={m.output_size})")
            return "gap"
        if isinstance(m, (nn.Flatten, nn.Identity, nn.Dropout)):
            return "shape"
        if isinstance(m, nn.MaxPool2d) and not m.return_indices:  # max commutes with a monotone quantization:
            return "shape"  # the same uint8 values, scale and zero point (padding is never the max)
    if node.op == "call_function":
        if node.target in _RELU_FUNCS:
            return "relu"
        if node.target in _RELU6_FUNCS:
            return "relu6"
        if node.target in _GATE_FUNCS:
            return _GATE_FUNCS[node.target]
        if node.target in _ADD_FUNCS:
            return "add"
        if node.target in _MUL_FUNCS:
            if len(_tensor_args(node)) != 2:
                raise _refuse(node, modules, " by a constant")
            return "mul"
        if node.target in _SHAPE_FUNCS:
            return "shape"
        if node.target is F.adaptive_avg_pool2d and _pair(node.args[1] if len(node.args) > 1 else node.kwargs["output_size"]) == (1, 1):
            return "gap"
        if node.target is torch.mean and _is_global_mean(node):
            return "gap"
    if node.op == "call_method":
        if node.target in _SHAPE_METHODS:
            return "shape"
        if node.target == "add":
            return "add"
        if node.target == "mul" and len(_tensor_args(node)) == 2:
            return "mul"
        if node.target == "mean" and _is_global_mean(node):
            return "gap"
    raise _refuse(node, modules)


_CLIPS = ("relu", "relu6")  # fuse into the requantize of the conv/linear/add/multiply before them
_SINGLE_INPUT_OPS = ("input", "avgpool", "gap", "hardswish", "hardsigmoid")


@dataclass
class _Plan:
    gm: torch.fx.GraphModule
    kinds: dict[str, str]
    fused_relu: dict[str, torch.fx.Node]  # compute node name -> the ReLU node fused into it
    quant_points: list[torch.fx.Node]  # nodes whose output is quantized (after any fused ReLU)


def _plan(model: nn.Module, example: tuple) -> _Plan:
    gm = trace(traceable(model), example, "for integer-only quantization")
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):  # folded BatchNorms (and no-op layers): out of the way of ReLU fusion
        if node.op == "call_module" and isinstance(modules[node.target], nn.Identity):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    kinds = {n.name: _kind(n, modules) for n in gm.graph.nodes if n.op != "get_attr"}
    fused: dict[str, torch.fx.Node] = {}
    points: list[torch.fx.Node] = []
    for node in gm.graph.nodes:
        kind = kinds.get(node.name)
        if kind in ("weight", "add", "mul"):
            users = list(node.users)
            if len(users) == 1 and kinds.get(users[0].name) in _CLIPS:
                fused[node.name] = users[0]
                points.append(users[0])
            else:
                points.append(node)
        elif kind in _SINGLE_INPUT_OPS or (kind in _CLIPS and node.name not in {r.name for r in fused.values()}):
            points.append(node)
    return _Plan(gm, kinds, fused, points)


def _calibrate(plan: _Plan, batches: list, percentile: float) -> dict[str, QParams]:
    """uint8 QParams of every quantization point from the float model's values."""
    ranges = {n.name: [float("inf"), float("-inf")] for n in plan.quant_points}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n.name in ranges:
                x = out.detach().float().flatten()
                if percentile < 100.0:
                    lo, hi = torch.quantile(x, 1 - percentile / 100).item(), torch.quantile(x, percentile / 100).item()
                else:
                    lo, hi = x.min().item(), x.max().item()
                r = ranges[n.name]
                r[0], r[1] = min(r[0], lo), max(r[1], hi)
            return out

    rec = Recorder(plan.gm)
    with torch.no_grad():
        for batch in batches:
            rec.run(*(batch if isinstance(batch, (tuple, list)) else (batch,)))
    return {name: QParams(*affine_uint8_params(lo, hi)) for name, (lo, hi) in ranges.items()}


# --------------------------------------------------------------------------------------------
# The quantized model


class DyadicModel(nn.Module):
    """Integer-only model: ``forward`` is the PyTorch integer reference (float in, float out,
    integers in between); ``integer_forward`` returns the output's uint8 values (as int64)."""

    def __init__(self, integer: torch.fx.GraphModule, qdq: torch.fx.GraphModule, recipe: DyadicRecipe,
                 output_qparams: QParams):
        super().__init__()
        self.integer = integer
        self.qdq = qdq
        self.recipe = recipe
        self.output_qparams = output_qparams

    def forward(self, x):
        return self.integer(x)

    def integer_forward(self, x) -> torch.Tensor:
        """The integers of the output before its DequantizeLinear."""
        qp = self.output_qparams
        with torch.no_grad():
            y = self.integer(x)
        return torch.round(y / qp.scale).to(torch.int64) + qp.zero_point

    def qdq_module(self) -> nn.Module:
        """The QuantizeLinear/DequantizeLinear form that ``edgeq.export`` writes."""
        return self.qdq


def _build(plan: _Plan, qparams: dict[str, QParams], recipe: DyadicRecipe) -> DyadicModel:
    gm = plan.gm
    modules = dict(gm.named_modules())
    qdq_graph, int_graph = torch.fx.Graph(), torch.fx.Graph()
    qdq_root, int_root = nn.Module(), nn.Module()
    qdq_env: dict[str, torch.fx.Node] = {}
    int_env: dict[str, torch.fx.Node] = {}
    qp_of: dict[str, QParams] = {}  # every value's quantization, by original node name
    fused_names = {r.name: owner for owner, r in plan.fused_relu.items()}
    counter = [0]

    def add(root, graph, module, args, hint):
        counter[0] += 1
        name = f"{hint}_{counter[0]}".replace(".", "_")
        root.add_module(name, module)
        return graph.call_module(name, tuple(args))

    for node in gm.graph.nodes:
        kind = plan.kinds.get(node.name)
        if node.name in fused_names:  # a ReLU fused into its producer: already computed
            qdq_env[node.name], int_env[node.name] = qdq_env[fused_names[node.name]], int_env[fused_names[node.name]]
            qp_of[node.name] = qp_of[fused_names[node.name]]
            continue
        act = plan.kinds[plan.fused_relu[node.name].name] if node.name in plan.fused_relu else None
        out_name = plan.fused_relu[node.name].name if act else node.name
        if kind == "input":
            qp = qparams[node.name]
            qx, ix = qdq_graph.placeholder(node.name), int_graph.placeholder(node.name)
            qdq_env[node.name] = add(qdq_root, qdq_graph, ActFakeQuant(qp), [qx], "input_quant")
            int_env[node.name] = add(int_root, int_graph, IntQuantize(qp), [ix], "input_quant")
            qp_of[node.name] = qp
        elif kind == "output":
            (result,) = node.args
            qp = qp_of[result.name]
            qdq_graph.output(qdq_env[result.name])
            int_graph.output(add(int_root, int_graph, IntDequantize(qp), [int_env[result.name]], "output_dequant"))
            output_qp = qp
        elif kind == "shape":
            src = node.args[0]
            qdq_env[node.name] = qdq_graph.node_copy(node, lambda n: qdq_env[n.name])
            qdq_root_copy(gm, node, qdq_root)
            int_env[node.name] = int_graph.node_copy(node, lambda n: int_env[n.name])
            qdq_root_copy(gm, node, int_root)
            qp_of[node.name] = qp_of[src.name]
        else:
            qp = qparams[out_name]
            ins = [a for a in node.args if isinstance(a, torch.fx.Node)]
            if kind == "weight":
                layer = modules[node.target]
                qdq_layer = QDQWeightLayer(layer, recipe.bits_for(node.target))
                y = _clip(qdq_graph, add(qdq_root, qdq_graph, qdq_layer, [qdq_env[ins[0].name]], node.target), act)
                int_mod = IntWeightLayer(qdq_layer, qp_of[ins[0].name], qp, act)
            elif kind in ("add", "mul"):
                if len(ins) != 2:
                    raise _refuse(node, modules, " of other than two tensors")
                op = operator.add if kind == "add" else operator.mul
                y = _clip(qdq_graph, qdq_graph.call_function(op, (qdq_env[ins[0].name], qdq_env[ins[1].name])), act)
                int_mod = (IntAdd if kind == "add" else IntMul)(qp_of[ins[0].name], qp_of[ins[1].name], qp, act)
            elif kind in _CLIPS:
                y = _clip(qdq_graph, qdq_env[ins[0].name], kind)
                int_mod = IntRequantize(qp_of[ins[0].name], qp, act=kind)
            elif kind == "avgpool":
                pool = modules[node.target]
                y = add(qdq_root, qdq_graph, copy.deepcopy(pool), [qdq_env[ins[0].name]], node.target)
                int_mod = IntAvgPool(pool, qp_of[ins[0].name], qp)
            elif kind == "gap":
                keepdim = node.op == "call_module" or node.target is F.adaptive_avg_pool2d or bool(node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False))
                y = qdq_graph.call_function(torch.mean, (qdq_env[ins[0].name], (2, 3)), {"keepdim": keepdim})
                int_mod = IntGlobalAvgPool(qp_of[ins[0].name], qp, keepdim)
            elif kind in ("hardswish", "hardsigmoid"):
                gate = F.hardswish if kind == "hardswish" else F.hardsigmoid
                y = qdq_graph.call_function(gate, (qdq_env[ins[0].name],))
                try:
                    int_mod = IntHardGate(qp_of[ins[0].name], qp, swish=kind == "hardswish")
                except QuantizationError as exc:
                    raise QuantizationError(f"layer {_layer_name(node)!r}: {exc}") from None
            else:  # _kind raised for anything else
                raise AssertionError(kind)
            qdq_env[node.name] = add(qdq_root, qdq_graph, ActFakeQuant(qp), [y], f"{out_name}_quant")
            int_env[node.name] = add(int_root, int_graph, int_mod, [int_env[a.name] for a in ins], out_name)
            qp_of[node.name] = qp
    qdq = torch.fx.GraphModule(qdq_root, qdq_graph, "DyadicQDQ").eval()
    integer = torch.fx.GraphModule(int_root, int_graph, "DyadicInteger").eval()
    return DyadicModel(integer, qdq, recipe, output_qp).eval()


def _clip(graph: torch.fx.Graph, y: torch.fx.Node, act: str | None) -> torch.fx.Node:
    """The float ReLU/ReLU6 of the QDQ form (exported as Relu / Clip(0, 6))."""
    if act is None:
        return y
    return graph.call_function(F.relu if act == "relu" else F.relu6, (y,))


def qdq_root_copy(gm: torch.fx.GraphModule, node: torch.fx.Node, root: nn.Module) -> None:
    """A pass-through module (nn.Flatten, ...) copied into a new root under the same name."""
    if node.op == "call_module" and not hasattr(root, node.target.replace(".", "_")):
        parts = node.target.split(".")
        parent = root
        for p in parts[:-1]:
            if not hasattr(parent, p):
                parent.add_module(p, nn.Module())
            parent = getattr(parent, p)
        parent.add_module(parts[-1], copy.deepcopy(gm.get_submodule(node.target)))


@register_quantizer(DyadicRecipe)
def quantize_dyadic(model: nn.Module, recipe: DyadicRecipe, calib) -> DyadicModel:
    batches = calib_batches(calib)
    if not batches:
        raise QuantizationError("recipe 'dyadic' calibrates activation ranges: pass calib=<sample inputs>")
    example = tuple(batches[0]) if isinstance(batches[0], (tuple, list)) else (batches[0],)
    folded = fold_batchnorm(model, example)
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules()):
        raise QuantizationError(f"{type(model).__name__}: a BatchNorm does not follow a conv/linear and cannot be folded")
    plan = _plan(folded, example)
    qparams = _calibrate(plan, batches, recipe.act_percentile)
    return _build(plan, qparams, recipe)


for _layer in (ActFakeQuant, QDQWeightLayer):  # the QDQ form exports as is; ``integerize`` makes it integer-only
    register_export_rule(_layer)(as_is)
