"""Ops that compute differently in train and eval mode: batch_norm and dropout.

Each names, in `modes`, the op it lowers to in eval mode (docs/design.md#modes); the
train-mode op is itself. Train-mode batch_norm normalizes with the batch's statistics
(a saved value, `batch_norm_stats`: mean and biased variance per channel) and names in
`updates` the state update that moves the running statistics as PyTorch does; eval mode
reads the running statistics. Dropout is `random`: its mask comes from a counter-based
generator keyed by (train seed, step, node), so its gradient regenerates the mask
instead of storing it, and a recomputation draws the same mask.

Export (graphc/onnx/) writes the eval-mode graph: the eval ops map to ONNX ops, and a
train-only op (batch statistics, dropout's masks, which no ONNX runtime draws alike)
refuses with a located error.
"""
from __future__ import annotations

import zlib

from .. import shapes as S
from ..errors import SpecError
from .record import REQUIRED, OpDef, grad_of, same

_BN = {"momentum": 0.1, "eps": 1e-5}
_BW = {"group": "backward", "elementwise": False}
_TRAIN_WRT = ("x", "gamma", "beta")
_EVAL_WRT = _TRAIN_WRT + ("running_mean", "running_var")


def channels(x) -> object:
    """The channel count of a batch_norm input: axis 1 of a shape of rank >= 2."""
    if len(x) < 2:
        raise S.ShapeError(f"batch_norm needs an input [N, C, ...] with channels on axis 1, "
                           f"got {S.fmt(x)}")
    if not S.is_int(x[1]):
        raise S.ShapeError(f"the channel axis (axis 1) of {S.fmt(x)} must have a fixed size")
    return x[1]


def _batch_norm(shapes, attrs):
    """x's shape; gamma, beta, running_mean and running_var are [C], C = x's axis 1."""
    x, c = shapes[0], channels(shapes[0])
    for name, shape in zip(("gamma", "beta", "running_mean", "running_var"), shapes[1:5]):
        if tuple(shape) != (c,):
            raise S.ShapeError(f"{name} must be [{c}] (one value per channel of "
                               f"{S.fmt(x)}), got {S.fmt(shape)}")
    return tuple(x)


def _stats(shapes, attrs):
    """[2, C]: the batch mean, then the biased variance, of each channel."""
    _batch_norm(shapes, attrs)
    return (2, channels(shapes[0]))


def _wrt(x_at: int, param_at: int):
    """Gradient helpers: x's shape for wrt='x', a [C] param's for wrt='gamma'/'beta'."""
    return lambda shapes, attrs: shapes[x_at if attrs["wrt"] == "x" else param_at]


def _bn_layer(shapes, attrs):
    channels(shapes[0])
    return tuple(shapes[0])


def _bn_grads(grad_op: str, wrt: tuple, *reads: int):
    """The gradients `wrt` by `grad_op` over g and the inputs at `reads`; none for the
    rest (train mode: the running statistics, which it only writes, and the saved value)."""
    def rule(e, n, g):
        ins = [n.inputs[i] for i in reads]
        return tuple(e(grad_op, g, *ins, wrt=w, eps=n.attrs["eps"])
                     for w in wrt) + (None,) * (len(n.inputs) - len(wrt))
    return rule


def _bn_formula(sigma: str):
    if sigma == "σ_B":
        return lambda a, o, attrs: (f"{a[1]}/σ_B (δ - 1/m - x̂ x̂ᵀ/m)", "x̂", "1", None, None,
                                    None)
    return lambda a, o, attrs: (f"{a[1]}/σ", "x̂", "1", f"-Σ {a[1]}/σ",
                                f"-Σ {a[1]} x̂ / (2 σ²)")


def stream(node: str) -> int:
    """A random op's own stream of the generator: a stable hash of its node's name."""
    return zlib.crc32(node.encode("utf-8"))


def _dropout(e, n, g):
    """The same mask, regenerated from the same key and stream: nothing is saved."""
    return e("dropout_grad", g, n.inputs[1], **n.attrs), None


# --- export mappings (graphc/ops/record.py): eval mode only ----------------------------------
def _onnx_channels(b, v, rank: int):
    """A [C] value shaped to broadcast over an x [N, C, ...] of `rank`: [C, 1, ...]."""
    return b("Reshape", v, b.const([-1] + [1] * (rank - 2), integer=True))


def _onnx_scale(b, n, gamma, var):
    """(gamma / sigma, sigma) per channel, sigma = sqrt(running_var + eps)."""
    sigma = b("Sqrt", b("Add", var, b.const(n.attrs["eps"])))
    return b("Div", gamma, sigma), sigma


def _onnx_batch_norm_eval(b, n, x, gamma, beta, mean, var):
    """(x - running_mean) gamma / sigma + beta, as the kernel computes it."""
    rank = len(b.shape(n.inputs[0]))
    scale, _ = _onnx_scale(b, n, gamma, var)
    centered = b("Sub", x, _onnx_channels(b, mean, rank))
    return b("Add", b("Mul", centered, _onnx_channels(b, scale, rank)),
             _onnx_channels(b, beta, rank))


def _onnx_batch_norm_eval_grad(b, n, g, x, gamma, mean, var):
    """As the kernel (_bn_grad, running statistics): d x = g gamma / sigma; d beta = sum g,
    d gamma = sum g x_hat, d running_mean = -sum(g) gamma / sigma, d running_var =
    -sum(g x_hat) gamma / (2 sigma^2), sums over every axis but 1."""
    scale, sigma = _onnx_scale(b, n, gamma, var)
    wrt, rank = n.attrs["wrt"], len(b.shape(n.inputs[1]))
    if wrt == "x":
        return b("Mul", g, _onnx_channels(b, scale, rank))
    axes = [0] + list(range(2, rank))
    if wrt in ("beta", "running_mean"):
        total = b.reduce("ReduceSum", g, axes, False)
    else:
        centered = b("Sub", x, _onnx_channels(b, mean, rank))
        x_hat = b("Div", centered, _onnx_channels(b, sigma, rank))
        total = b.reduce("ReduceSum", b("Mul", g, x_hat), axes, False)
    if wrt in ("beta", "gamma"):
        return total
    if wrt == "running_var":
        scale = b("Div", scale, b("Mul", sigma, b.const(2.0)))     # gamma / (2 sigma^2)
    return b("Neg", b("Mul", total, scale))


def _onnx_train_only(b, n, *xs):
    """Batch statistics and dropout's masks are train mode's; export is eval mode's."""
    raise SpecError(f"op '{n.op}' exports in eval mode only", mark=n.mark,
                    node=n.origin or n.name,
                    hint="graphc export writes the eval-mode graph (running statistics, "
                         "dropout the identity), whose gradients graphc grad --mode eval "
                         "prints")


OPS = (
    OpDef("batch_norm", 5, _batch_norm,
          "batch_norm(x, gamma, beta, running_mean, running_var, momentum=0.1, eps=1e-5) = "
          "gamma (x - mean) / sqrt(var + eps) + beta per channel (axis 1), statistics over "
          "every other axis: the batch's (biased var) in train mode, which also moves the "
          "running ones (unbiased var), the running ones in eval mode (F.batch_norm)",
          attrs=_BN, saves="batch_norm_stats", updates="batch_norm_update",
          modes={"eval": "batch_norm_eval"}, layer_form="batch_norm_layer",
          vjp=_bn_grads("batch_norm_grad", _TRAIN_WRT, 0, 1, 5), formula=_bn_formula("σ_B"),
          elementwise=False, onnx=_onnx_train_only),
    OpDef("batch_norm_stats", 5, _stats,
          "batch_norm_stats(x, ...) = [mean, biased var] of each channel over the batch: "
          "train-mode batch_norm, its gradient and its state update read it",
          group="saved", elementwise=False, onnx=_onnx_train_only),
    OpDef("batch_norm_grad", 4, _wrt(1, 2),
          "batch_norm_grad(g, x, gamma, stats, wrt, eps) = d batch_norm / d wrt (x, gamma "
          "or beta) with batch statistics", attrs={"wrt": REQUIRED, "eps": 1e-5},
          onnx=_onnx_train_only, **_BW),
    OpDef("batch_norm_update", 6, grad_of(3),
          "batch_norm_update(x, gamma, beta, running_mean, running_var, stats, momentum): "
          "running = (1 - momentum) running + momentum batch, the variance unbiased "
          "(m / (m - 1)); the optimizer never touches it", attrs={"momentum": 0.1},
          group="update", elementwise=False, mutates=(3, 4)),
    OpDef("batch_norm_eval", 5, _batch_norm,
          "batch_norm_eval(x, gamma, beta, running_mean, running_var, momentum, eps) = "
          "gamma (x - running_mean) / sqrt(running_var + eps) + beta: eval-mode batch_norm",
          attrs=_BN, vjp=_bn_grads("batch_norm_eval_grad", _EVAL_WRT, 0, 1, 3, 4),
          formula=_bn_formula("σ_running"), elementwise=False, onnx=_onnx_batch_norm_eval),
    OpDef("batch_norm_eval_grad", 5, _wrt(1, 2),
          "batch_norm_eval_grad(g, x, gamma, running_mean, running_var, wrt, eps) = "
          "d batch_norm_eval / d wrt (x, gamma, beta, running_mean or running_var)",
          attrs={"wrt": REQUIRED, "eps": 1e-5}, onnx=_onnx_batch_norm_eval_grad, **_BW),
    OpDef("batch_norm_layer", 1, _bn_layer,
          "batch_norm_layer(x, momentum=0.1, eps=1e-5) = batch_norm(x, <node>.gamma, "
          "<node>.beta, <node>.running_mean, <node>.running_var); also written batch_norm(x)",
          group="layer", attrs=_BN),
    OpDef("dropout", 1, same,
          "dropout(x, p=0.5) = x * mask / (1 - p), mask[i] = 1 with probability 1 - p, drawn "
          "from (train seed, step, node) in train mode; the identity in eval mode (F.dropout)",
          attrs={"p": 0.5}, random=True, modes={"eval": "identity"},
          vjp=_dropout, formula=lambda a, o, attrs: ("mask / (1 - p)", None),
          elementwise=True, onnx=_onnx_train_only),
    OpDef("dropout_grad", 1, grad_of(0),
          "dropout_grad(g, key, p) = g * mask / (1 - p), the forward's mask drawn again from "
          "its key and stream", attrs={"p": 0.5}, random=True, elementwise=True, group="backward",
          onnx=_onnx_train_only),
)
