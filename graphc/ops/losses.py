"""Losses: scalars, the mean over the batch; each beside its fused gradient."""
from __future__ import annotations

from .. import shapes as S
from .record import OpDef, bcast, grad_of

_BW = {"group": "backward"}


def _loss_pair(shapes, attrs):
    """A loss comparing prediction and target element by element: the same shape, or a
    scalar target (`l1(v, 0)`). Broadcasting [batch, 1] against [batch] would compare every
    prediction with every target, so it is refused (PyTorch warns there)."""
    pred, target = (tuple(s) for s in shapes[:2])
    if pred != target and target != ():
        raise S.ShapeError(f"prediction {S.fmt(pred)} and target {S.fmt(target)} must have "
                           "the same shape (a loss compares them element by element, it does "
                           f"not broadcast); {_same_shape_fix(pred, target)}")
    return ()


def _same_shape_fix(pred, target) -> str:
    """How to make a loss's operands agree: declare the target like the prediction, or reshape."""
    fix = f"give the target the prediction's shape (an input: declare it {S.fmt(pred)})"
    try:
        S.reshape(pred, list(target))
    except S.ShapeError:
        return fix
    return f"{fix}, or reshape the prediction: reshape(<prediction>, shape={S.fmt(target)})"


def _labels(shapes, attrs):
    logits, labels = shapes[:2]
    if len(logits) < 1 or tuple(labels) != tuple(logits[:-1]):
        raise S.ShapeError(f"labels must have the logits' shape without the class axis: "
                           f"logits {S.fmt(logits)}, labels {S.fmt(labels)} "
                           f"(expected {S.fmt(logits[:-1])})")
    return ()


def _softmax_stats(shapes, attrs):
    """[..., classes + 2]: exp(z - row max) for every row, then each row's sum of it, then
    each row's z[label] - row max, packed in this order (row-major) in one value."""
    _labels(shapes, attrs)
    logits = shapes[0]
    if not isinstance(logits[-1], int):
        raise S.ShapeError(f"the class axis of the logits must have a fixed size, got "
                           f"{S.fmt(logits)}")
    return tuple(logits[:-1]) + (logits[-1] + 2,)


def _pair_loss(grad_op):
    """Losses of (pred - target): d/d target = -d/d pred."""
    return lambda e, n, g: (lambda d: (d, e("neg", d)))(e(grad_op, g, *n.inputs, **n.attrs))


def _hinge_piece(e, n, g):
    """1[1 - a b > 0], the side of the margin (hinge_grad reads a or b, which moves smoothly)."""
    margin = e("sub", e("const", value=1.0), e("mul", *n.inputs))
    return (e("relu_grad", e("expand", g, shape=e.shape(margin)), margin),)


def _bce(e, n, g):
    return tuple(e("binary_cross_entropy_with_logits_grad", g, *n.inputs, wrt=wrt)
                 for wrt in ("logits", "targets"))


def _pair_formula(text):
    """d/d pred as `text` over (pred, target); d/d target is its negative."""
    return lambda a, o, attrs: (text.format(p=a[0], t=a[1]), "-" + text.format(p=a[0], t=a[1]))


# --- export mappings (graphc/ops/record.py): mean over all elements, as the kernels -------------
def _mean_all(b, x):
    return b.reduce("ReduceMean", x, None, keepdims=False)


def _per_count(b, g, x):
    """g / the number of elements of x: the loss gradients' 1/n."""
    return b("Div", g, b.count(x))


def _onnx_mse(b, n, p, t):
    d = b("Sub", p, t)
    return _mean_all(b, b("Mul", d, d))


def _onnx_mse_grad(b, n, g, p, t):
    d = b("Sub", p, t)
    return b("Mul", d, b("Mul", b.const(2.0), _per_count(b, g, d)))


def _picked(b, s, labels):
    """s[..., label] for each row, kept as [..., 1]."""
    return b("GatherElements", s, b("Unsqueeze", labels, b.const([-1], integer=True)), axis=-1)


def _onehot(b, labels, classes: int):
    """[..., classes]: 1 at each row's label."""
    index = b("Unsqueeze", labels, b.const([-1], integer=True))
    return b("Cast", b("Equal", index, b.const(list(range(classes)), integer=True)),
             to=b.dtype)


def _onnx_sce(b, n, z, labels, stats=None):
    """mean(-log_softmax(z)[label]); the saved stats are recomputed."""
    return b("Neg", _mean_all(b, _picked(b, b("LogSoftmax", z, axis=-1), labels)))


def _onnx_sce_grad(b, n, g, z, labels, stats=None):
    classes = b.shape(n.inputs[1])[-1]
    diff = b("Sub", b("Softmax", z, axis=-1), _onehot(b, labels, classes))
    return b("Mul", diff, _per_count(b, g, labels))


def _onnx_hinge(b, n, s, y):
    return _mean_all(b, b("Relu", b("Sub", b.const(1.0), b("Mul", s, y))))


def _onnx_hinge_grad(b, n, g, x, y):
    xy = b("Mul", x, y)
    active = b("Cast", b("Greater", b("Sub", b.const(1.0), xy), b.const(0.0)), to=b.dtype)
    return b("Mul", b("Neg", b("Mul", y, active)), _per_count(b, g, xy))


def _onnx_l1_grad(b, n, g, p, t):
    d = b("Sub", p, t)
    return b("Mul", b("Sign", d), _per_count(b, g, d))


def _onnx_huber(b, n, p, t):
    """0.5 q^2 + delta (|d| - q), q = min(|d|, delta)."""
    d = b("Abs", b("Sub", p, t))
    delta = b.const(n.attrs["delta"])
    q = b("Min", d, delta)
    inside = b("Mul", b.const(0.5), b("Mul", q, q))
    return _mean_all(b, b("Add", inside, b("Mul", delta, b("Sub", d, q))))


def _onnx_huber_grad(b, n, g, p, t):
    d = b("Sub", p, t)
    delta = n.attrs["delta"]
    return b("Mul", b("Clip", d, b.const(-delta), b.const(delta)), _per_count(b, g, d))


def _onnx_bce(b, n, x, t):
    tail = b("Log", b("Add", b.const(1.0), b("Exp", b("Neg", b("Abs", x)))))
    loss = b("Sub", b("Add", tail, b("Max", x, b.const(0.0))), b("Mul", x, t))
    return _mean_all(b, loss)


def _onnx_bce_grad(b, n, g, x, t):
    full = b("Sub", b("Sigmoid", x), t)
    if n.attrs["wrt"] == "logits":
        return b("Mul", full, _per_count(b, g, full))
    return b("Mul", b("Neg", b("Add", x, b("Mul", t, b.const(0.0)))), _per_count(b, g, full))


def _margins(b, n, s, labels, classes: int):
    """m_j = s_j - s_y + margin, and 1 - onehot(y) (the correct class never counts)."""
    m = b("Add", b("Sub", s, _picked(b, s, labels)), b.const(n.attrs["margin"]))
    return m, b("Sub", b.const(1.0), _onehot(b, labels, classes))


def _onnx_multiclass_hinge(b, n, s, labels):
    m, others = _margins(b, n, s, labels, b.shape(n.inputs[0])[-1])
    total = b.reduce("ReduceSum", b("Mul", b("Relu", m), others), None, keepdims=False)
    return b("Div", total, b.count(labels))


def _onnx_multiclass_hinge_grad(b, n, g, s, labels):
    m, others = _margins(b, n, s, labels, b.shape(n.inputs[1])[-1])
    violated = b("Mul", b("Cast", b("Greater", m, b.const(0.0)), to=b.dtype), others)
    count = b.reduce("ReduceSum", violated, [-1], keepdims=True)
    at_label = b("Mul", count, b("Sub", b.const(1.0), others))
    return b("Mul", b("Sub", violated, at_label), _per_count(b, g, labels))


OPS = (
    OpDef("mse", 2, _loss_pair, "mse(pred, target) = mean((pred - target) ** 2)",
          vjp=_pair_loss("mse_grad"), formula=_pair_formula("2({p} - {t})/n"),
          elementwise=False, onnx=_onnx_mse),
    OpDef("mse_grad", 3, bcast, "mse_grad(g, pred, target) = g * 2 (pred - target) / n",
          elementwise=True, onnx=_onnx_mse_grad, **_BW),
    OpDef("softmax_cross_entropy", 2, _labels,
          "softmax_cross_entropy(logits, labels) = mean(logsumexp(logits) - logits[labels])",
          labels=(1,), saves="softmax_cross_entropy_stats",
          vjp=lambda e, n, g: (e("softmax_cross_entropy_grad", g, *n.inputs), None, None),
          formula=lambda a, o, attrs: (f"(softmax({a[0]}) - onehot({a[1]}))/n", None),
          elementwise=False, onnx=_onnx_sce),
    OpDef("softmax_cross_entropy_stats", 2, _softmax_stats,
          "softmax_cross_entropy_stats(logits, labels) = exp(z), sum(exp(z)), z[label] per row, "
          "z = logits - row max: the loss and its gradient read it", labels=(1,),
          group="saved", elementwise=False, onnx=lambda b, n, *xs: None),
    OpDef("softmax_cross_entropy_grad", 4, grad_of(1),
          "softmax_cross_entropy_grad(g, logits, labels, stats) = g * (softmax(logits) - "
          "onehot) / n, softmax from the saved stats", labels=(2,), elementwise=False,
          onnx=_onnx_sce_grad, **_BW),
    OpDef("hinge", 2, _loss_pair, "hinge(score, y) = mean(max(0, 1 - y * score)), y in {-1, 1}",
          vjp=lambda e, n, g: (e("hinge_grad", g, *n.inputs),
                               e("hinge_grad", g, *reversed(n.inputs))),
          formula=lambda a, o, attrs: (f"-{a[1]}·1[1 - {a[1]}·{a[0]} > 0]/n",
                                       f"-{a[0]}·1[1 - {a[1]}·{a[0]} > 0]/n"),
          elementwise=False, onnx=_onnx_hinge, piece=_hinge_piece),
    OpDef("hinge_grad", 3, bcast,
          "hinge_grad(g, a, b) = -g * b * (1 - a * b > 0) / n (d hinge / d a; swap for b)",
          elementwise=True, onnx=_onnx_hinge_grad, **_BW),
    OpDef("l1", 2, _loss_pair, "l1(pred, target) = mean(|pred - target|)",
          vjp=_pair_loss("l1_grad"), formula=_pair_formula("sign({p} - {t})/n"),
          elementwise=False, onnx=lambda b, n, p, t: _mean_all(b, b("Abs", b("Sub", p, t))),
          piece=lambda e, n, g: (e("l1_grad", g, *n.inputs),)),
    OpDef("l1_grad", 3, bcast, "l1_grad(g, pred, target) = g * sign(pred - target) / n",
          elementwise=True, onnx=_onnx_l1_grad, **_BW),
    OpDef("huber", 2, _loss_pair, "huber(pred, target, delta=1.0) = mean(0.5 d^2 if |d| < "
          "delta else delta (|d| - 0.5 delta)), d = pred - target", attrs={"delta": 1.0},
          vjp=_pair_loss("huber_grad"), formula=_pair_formula("clip({p} - {t}, ±δ)/n"),
          elementwise=False, onnx=_onnx_huber),
    OpDef("huber_grad", 3, bcast, "huber_grad(g, pred, target, delta) = g * clip(pred - "
          "target, -delta, delta) / n", attrs={"delta": 1.0}, elementwise=True,
          onnx=_onnx_huber_grad, **_BW),
    OpDef("binary_cross_entropy_with_logits", 2, _loss_pair,
          "binary_cross_entropy_with_logits(logits, targets) = mean(max(x, 0) - x t + "
          "log1p(exp(-|x|))), t in [0, 1]", vjp=_bce,
          formula=lambda a, o, attrs: (f"(σ({a[0]}) - {a[1]})/n", f"-{a[0]}/n"),
          elementwise=False, onnx=_onnx_bce),
    OpDef("binary_cross_entropy_with_logits_grad", 3, bcast,
          "binary_cross_entropy_with_logits_grad(g, x, t, wrt) = g * (sigmoid(x) - t) / n for "
          "wrt='logits', g * -x / n for wrt='targets'", attrs={"wrt": "logits"},
          elementwise=True, onnx=_onnx_bce_grad, **_BW),
    OpDef("multiclass_hinge", 2, _labels, "multiclass_hinge(scores, labels, margin=1.0) = "
          "mean over examples of sum_{j != y} max(0, s_j - s_y + margin) (the SVM loss)",
          attrs={"margin": 1.0}, labels=(1,),
          vjp=lambda e, n, g: (e("multiclass_hinge_grad", g, *n.inputs, **n.attrs), None),
          formula=lambda a, o, attrs: ("g ↦ Σ over violated margins of ±1/n", None),
          elementwise=False, onnx=_onnx_multiclass_hinge,
          piece=lambda e, n, g: (e("multiclass_hinge_grad", g, *n.inputs, **n.attrs),)),
    OpDef("multiclass_hinge_grad", 3, grad_of(1), "multiclass_hinge_grad(g, s, labels, "
          "margin) = g * (m_j > 0 for j != y; -count(m > 0) at y) / n, m_j = s_j - s_y + "
          "margin", attrs={"margin": 1.0}, labels=(2,), elementwise=False,
          onnx=_onnx_multiclass_hinge_grad, **_BW),
)
