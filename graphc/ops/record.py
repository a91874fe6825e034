"""The op record: everything the compiler knows about one op, backend-neutral.

An `OpDef` holds the op's signature (arity, attributes with defaults, which inputs
are integer labels), its shape rule, its gradient rule written with other ops, its
in-place permission (`elementwise`), the local-gradient formula `explain` prints,
the doc line `graphc ops` prints, and its export mapping (`onnx`). Kernels are not
here: each backend keys its own by op name (graphc/backends/).

Saved values are IR values: an op whose kernel and gradient share work (softmax
cross-entropy's exp and row sums) names, in `saves`, an op of group "saved" that
computes it from the same inputs. The IR builder adds that node and passes it as one
more input, so the planner places it and the verifier checks it like any other value.

Gradient rules: `vjp(emit, node, g)` returns one gradient node name (or None: no
gradient, e.g. class labels) per input, in the *output's* broadcast shape; `emit(op,
*inputs, **attrs)` adds a backward node. The driver (autodiff.py) sums fan-out and
un-broadcasts, once. Explain formulas: `formula(a, o, attrs)` gives d o / d a[i] per
input as text, `a` the inputs' display names, `o` the output's.

Export mappings: `onnx(b, node, *xs)` writes the node as ONNX ops and returns the name
of the value holding its result; `xs` are its inputs' values. It describes the ops
through `b` (graphc/onnx/export.py's builder), so no module here imports onnx:
`b(op_type, *inputs, **attrs)` adds one ONNX node and names its output, `b.const(value,
integer=False)` a constant, `b.count(x)` the number of elements of x (a float scalar),
`b.reduce(op_type, x, axes, keepdims)` a ReduceSum/ReduceMean/ReduceMax in the form of
the opset, `b.dims(shape)` a graphc shape (symbolic dims too) as a runtime shape, and
`b.shape(name)` a graphc value's shape. A mapping returning None says that no ONNX value
stands for the node: its readers recompute what they need (saved values).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

from .. import shapes as S

REQUIRED = object()   # attribute default meaning "must be given"
GROUPS = ("leaf", "forward", "layer", "saved", "backward", "update")
MODES = ("train", "eval")   # the plans one spec compiles to (docs/design.md#modes)


@dataclass(frozen=True)
class LabelKind:
    """What an op's integer input holds, in every error about it: `plural` (its str():
    "input 2 must be integer class labels"), `one` and `unit` ("label 5 is out of range
    for 3 classes"), and `against`, what one indexes ("3 class scores"; a format of
    {size}, and {table}, the name of what it indexes)."""
    plural: str
    one: str
    unit: str
    against: str

    def __str__(self) -> str:
        return self.plural

    def out_of_range(self, value, k: int, at: str = "") -> str:
        """The message: 'label 5 at index [2] is out of range for 3 classes (expected 0..2)'."""
        return f"{self.one} {value}{at} is out of range for {k} {self.unit} (expected 0..{k - 1})"

    def hint(self, name: str) -> str:
        return f"{self.plural} count from 0; check the data fed to '{name}'"


CLASS_LABELS = LabelKind("class labels", "label", "classes", "{size} class scores")


@dataclass(frozen=True)
class OpDef:
    """One op. `infer(input_shapes, attrs) -> shape`; `arity` None means variadic.

    `elementwise`: output element i depends only on element i of each same-shape input,
    so the planner may write the output over such an input (kernels must allow it) and
    explain's Jacobian is a diagonal. Every computed op states it (None is incomplete).
    """
    name: str
    arity: Optional[int]
    infer: Callable
    doc: str
    group: str = "forward"
    attrs: Mapping[str, object] = field(default_factory=dict)
    vjp: Optional[Callable] = None          # forward ops: the gradient rule
    formula: Optional[Callable] = None      # forward ops: explain's local gradients
    elementwise: Optional[bool] = None      # computed ops: the in-place permission
    mutates: tuple = ()                     # update ops: input positions written in place
    labels: tuple = ()                      # input positions that take integer class labels
    labels_are: LabelKind = CLASS_LABELS    # what those integers are, in error messages
    label_range: tuple = (0, -1)            # (input, axis) whose size the labels index:
                                            # 0..size-1 (class scores' last axis by default)
    layer_init: Optional[str] = None        # activations: the init dense picks for its W
    saves: Optional[str] = None             # the op computing what this op's kernel and
                                            # gradient read: an input the IR builder adds
    onnx: Optional[Callable] = None         # the export mapping: onnx(b, node, *xs)
    recomputable: bool = True               # False: the output is not a pure function of the
                                            # inputs and attrs (hidden RNG state): never
                                            # rematerialized (ops that mutate never are)
    flops: Optional[Callable] = None        # flops(input_shapes, attrs) -> the kernel's
                                            # arithmetic; None: one per output element
    modes: Mapping[str, str] = field(default_factory=dict)  # mode -> the op this one lowers
                                            # to there (dropout: eval -> identity); else itself
    updates: Optional[str] = None           # train mode: the state-update op the IR builder
                                            # adds over this op's inputs and saved value
    random: bool = False                    # reads the generator key (seed, step) the IR
                                            # builder adds as its last input; the mask is
                                            # recomputed exactly from it, never stored
    layer_form: Optional[str] = None        # the layer a one-input call of this op stands for
    piece: Optional[Callable] = None        # ops not differentiable everywhere (relu, max,
                                            # max_pool): piece(emit, node, ones) -> values
                                            # constant on each piece of the op's domain and
                                            # different on the next (relu: x > 0); gradcheck
                                            # reads a change of them as a kink crossed


def missing_facts(op: OpDef) -> list:
    """The facts a record of its group must state and does not (empty: complete)."""
    missing = [] if op.doc.startswith(op.name) or op.group == "leaf" else ["doc"]
    if op.group in ("forward", "saved", "backward", "update") and op.elementwise is None:
        missing.append("elementwise")
    if op.group == "forward":
        missing += [f for f in ("vjp", "formula") if getattr(op, f) is None]
    return missing


# --- shape rules -----------------------------------------------------------------------------
def same(shapes, attrs):
    """The first input's shape: elementwise ops, and updates (the parameter's shape)."""
    return shapes[0]


def bcast(shapes, attrs):
    return S.broadcast(*shapes)


def reduced(shapes, attrs):
    return S.reduce(shapes[0], attrs["axis"], attrs["keepdims"])


def scalar(shapes, attrs):
    return ()


def attr_shape(shapes, attrs):
    return tuple(attrs["shape"])


def grad_of(position):
    """Backward helpers whose output has the shape of their input at `position`."""
    return lambda shapes, attrs: shapes[position]


# --- gradient rule builders ------------------------------------------------------------------
def linear(*signs):
    """add/sub/neg/identity: the gradient passes through, negated where the sign is -1."""
    def rule(e, n, g):
        return tuple(g if s > 0 else e("neg", g) for s in signs)
    return rule


def through(grad_op: str, read: str = "output", **fixed):
    """The one-input rule `grad_op(g, v)`, v the node's output (or its input with
    read="input"); `fixed` attributes are passed as given."""
    def rule(e, n, g):
        return (e(grad_op, g, n.name if read == "output" else n.inputs[0], **fixed),)
    return rule


def constant_formula(*texts):
    """An explain formula that does not depend on the names: ("1", "-1") for sub."""
    return lambda a, o, attrs: texts


AXES = {"axis": None, "keepdims": False}


# --- export mappings -------------------------------------------------------------------------
def onnx_op(op_type: str, **fixed):
    """The mapping to one ONNX op over the node's inputs, with `fixed` attributes."""
    return lambda b, n, *xs: b(op_type, *xs, **fixed)


def onnx_attrs(op_type: str, *names):
    """The mapping to one ONNX op whose attributes are the node's `names` attributes."""
    return lambda b, n, *xs: b(op_type, *xs, **{k: n.attrs[k] for k in names})
