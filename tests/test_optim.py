"""Optimizer updates against PyTorch's documented update rules, re-derived here in NumPy.

The loss is a separable quadratic whose gradient is known in closed form,
g1 = C1 * w1 + D1 and g2 = C2 * w2, so the reference loops below need nothing
from graphc: each follows the pseudo-code of torch.optim's docs (SGD, RMSprop,
Adagrad, Adam, AdamW) and torch.nn.utils.clip_grad_norm_. graphc runs the same
steps through its training graph (autodiff + update kernels) in float64.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from graphc.errors import SpecError
from graphc.executor import using_step_code
from graphc.model import Runner, load_model, zero_state
from graphc.plan import compile_plan
from graphc.optim import LR, NORM, parse_optimizer, training_graph

C1, D1 = np.array([1.0, 2.0, 0.5]), np.array([0.3, -0.2, 1.0])
C2 = np.array([[1.5, 0.2], [0.7, 3.0]])
W0 = {"w1": np.array([1.0, -2.0, 0.5]), "w2": np.array([[0.5, -1.0], [2.0, 0.1]])}
SPEC = f"""\
dtype: float64
inputs:
  c1: {{value: {C1.tolist()}}}
  d1: {{value: {D1.tolist()}}}
  c2: {{value: {C2.tolist()}}}
params:
  w1: {{value: {W0['w1'].tolist()}}}
  w2: {{value: {W0['w2'].tolist()}}}
nodes:
  loss: 0.5 * sum(c1 * w1 * w1) + sum(d1 * w1) + 0.5 * sum(c2 * w2 * w2)
"""
STEPS = 6


def grads(w: dict) -> dict:
    return {"w1": C1 * w["w1"] + D1, "w2": C2 * w["w2"]}


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "quad.yaml"
    path.write_text(SPEC)
    return path


def graphc_steps(spec, optimizer, steps=STEPS, clip=None, lr_of=None) -> dict:
    """Run `steps` training steps of the compiled graph; lr_of(k) overrides the lr per step."""
    model = load_model(spec)
    opt = parse_optimizer(optimizer)
    sg = training_graph(model.graph, opt, clip)
    zero_state(model, sg.graph, sg.states)        # packed: the flat update runs
    model.store[LR] = np.zeros(())
    runner = Runner(sg.graph, model.store, {model.graph.loss, sg.guard}, forward=sg.forward)
    for k in range(steps):
        model.store[LR][...] = lr_of(k) if lr_of else opt.lr
        runner.run({})
    return {p: model.store[p].copy() for p in W0}


def clipped(g: dict, max_norm) -> dict:
    """torch.nn.utils.clip_grad_norm_: scale by max_norm / (total_norm + 1e-6) when below 1."""
    if max_norm is None:
        return g
    total = math.sqrt(sum(float(np.sum(v * v)) for v in g.values()))
    coef = min(1.0, max_norm / (total + 1e-6))
    return {k: v * coef for k, v in g.items()}


def ref_sgd(lr, momentum=0.0, nesterov=False, weight_decay=0.0, clip=None, steps=STEPS):
    w, b = {k: v.copy() for k, v in W0.items()}, {}
    for t in range(1, steps + 1):
        g = clipped(grads(w), clip)
        for k in w:
            gk = g[k] + weight_decay * w[k]
            if momentum:
                b[k] = gk if t == 1 else momentum * b[k] + gk        # dampening 0
                gk = gk + momentum * b[k] if nesterov else b[k]
            w[k] = w[k] - lr * gk
    return w


def ref_rmsprop(lr, alpha=0.99, eps=1e-8, momentum=0.0, centered=False, weight_decay=0.0):
    w = {k: v.copy() for k, v in W0.items()}
    v = {k: np.zeros_like(x) for k, x in w.items()}
    gav = {k: np.zeros_like(x) for k, x in w.items()}
    b = {k: np.zeros_like(x) for k, x in w.items()}
    for _ in range(STEPS):
        g = grads(w)
        for k in w:
            gk = g[k] + weight_decay * w[k]
            v[k] = alpha * v[k] + (1 - alpha) * gk * gk
            vt = v[k]
            if centered:
                gav[k] = alpha * gav[k] + (1 - alpha) * gk
                vt = vt - gav[k] ** 2
            if momentum:
                b[k] = momentum * b[k] + gk / (np.sqrt(vt) + eps)
                w[k] = w[k] - lr * b[k]
            else:
                w[k] = w[k] - lr * gk / (np.sqrt(vt) + eps)
    return w


def ref_adagrad(lr, eps=1e-10, weight_decay=0.0):
    w = {k: v.copy() for k, v in W0.items()}
    s = {k: np.zeros_like(x) for k, x in w.items()}
    for _ in range(STEPS):
        g = grads(w)
        for k in w:
            gk = g[k] + weight_decay * w[k]
            s[k] = s[k] + gk * gk
            w[k] = w[k] - lr * gk / (np.sqrt(s[k]) + eps)
    return w


def ref_adam(lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False, clip=None):
    w = {k: v.copy() for k, v in W0.items()}
    m = {k: np.zeros_like(x) for k, x in w.items()}
    v = {k: np.zeros_like(x) for k, x in w.items()}
    b1, b2 = betas
    for t in range(1, STEPS + 1):
        g = clipped(grads(w), clip)
        for k in w:
            gk = g[k]
            if decoupled:
                w[k] = w[k] * (1 - lr * weight_decay)
            else:
                gk = gk + weight_decay * w[k]
            m[k] = b1 * m[k] + (1 - b1) * gk
            v[k] = b2 * v[k] + (1 - b2) * gk * gk
            m_hat, v_hat = m[k] / (1 - b1 ** t), v[k] / (1 - b2 ** t)
            w[k] = w[k] - lr * m_hat / (np.sqrt(v_hat) + eps)
    return w


def assert_close(got: dict, want: dict):
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-11, atol=1e-13, err_msg=k)
    assert any(not np.allclose(want[k], W0[k]) for k in want), "the reference did not move"


@pytest.mark.parametrize("settings", [
    {"lr": 0.1},
    {"lr": 0.1, "momentum": 0.9},
    {"lr": 0.05, "momentum": 0.8, "nesterov": True},
    {"lr": 0.1, "momentum": 0.5, "weight_decay": 0.01},
])
def test_sgd_matches_torch_rule(spec, settings):
    assert_close(graphc_steps(spec, {"sgd": settings}), ref_sgd(**settings))


@pytest.mark.parametrize("settings", [
    {"lr": 0.01},
    {"lr": 0.01, "alpha": 0.9, "weight_decay": 0.1},
    {"lr": 0.01, "momentum": 0.9},
    {"lr": 0.01, "centered": True},
    {"lr": 0.01, "centered": True, "momentum": 0.5, "eps": 1e-3},
])
def test_rmsprop_matches_torch_rule(spec, settings):
    assert_close(graphc_steps(spec, {"rmsprop": settings}), ref_rmsprop(**settings))


@pytest.mark.parametrize("settings", [{"lr": 0.1}, {"lr": 0.5, "weight_decay": 0.1}])
def test_adagrad_matches_torch_rule(spec, settings):
    assert_close(graphc_steps(spec, {"adagrad": settings}), ref_adagrad(**settings))


@pytest.mark.parametrize("settings", [
    {"lr": 0.1},
    {"lr": 0.05, "betas": [0.8, 0.99], "eps": 1e-6},
    {"lr": 0.1, "weight_decay": 0.1},
])
def test_adam_matches_torch_rule(spec, settings):
    ref = ref_adam(**{**settings, "betas": tuple(settings.get("betas", (0.9, 0.999)))})
    assert_close(graphc_steps(spec, {"adam": settings}), ref)


@pytest.mark.parametrize("settings", [{"lr": 0.1}, {"lr": 0.1, "weight_decay": 0.5}])
def test_adamw_decouples_weight_decay(spec, settings):
    want = ref_adam(**{"weight_decay": 0.01, **settings}, decoupled=True)
    assert_close(graphc_steps(spec, {"adamw": settings}), want)
    if settings.get("weight_decay"):     # and differs from Adam's L2 form
        l2 = ref_adam(**settings)
        assert not np.allclose(want["w1"], l2["w1"])


@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_grad_norm_is_global_over_all_params(spec, max_norm):
    got = graphc_steps(spec, {"sgd": {"lr": 0.1, "momentum": 0.9}}, clip=max_norm)
    assert_close(got, ref_sgd(0.1, 0.9, clip=max_norm))
    got = graphc_steps(spec, {"adam": {"lr": 0.1}}, clip=max_norm)
    assert_close(got, ref_adam(0.1, clip=max_norm))


def test_clipping_changes_the_result_when_the_norm_exceeds_the_limit():
    g = grads(W0)
    assert math.sqrt(sum(float(np.sum(v * v)) for v in g.values())) > 0.5
    assert not np.allclose(ref_sgd(0.1, clip=0.5)["w1"], ref_sgd(0.1)["w1"])


def test_by_hand_momentum_and_adam_first_steps(tmp_path):
    """loss = w^2 / 2, w0 = 1: SGD(0.1, momentum 0.9) gives 0.9 then 0.9 - 0.1 * 1.8 = 0.72;
    Adam's first step moves by lr * g / (|g| + eps), i.e. almost exactly lr."""
    path = tmp_path / "w.yaml"
    path.write_text("dtype: float64\nparams:\n  w: {value: 1.0}\nnodes:\n  loss: 0.5 * w * w\n")
    assert _single(path, {"sgd": {"lr": 0.1, "momentum": 0.9}}, 2) == \
        pytest.approx([0.9, 0.72], abs=1e-15)
    assert _single(path, {"adam": {"lr": 0.01}}, 1)[0] == pytest.approx(1 - 0.01, abs=1e-9)


def _single(path, optimizer, steps) -> list:
    model = load_model(path)
    sg = training_graph(model.graph, parse_optimizer(optimizer))
    for n in sg.graph.leaves("state"):
        model.store[n.name] = np.zeros(n.shape, n.dtype)
    model.store[LR] = np.asarray(parse_optimizer(optimizer).lr)
    runner = Runner(sg.graph, model.store, {model.graph.loss, sg.guard}, forward=sg.forward)
    out = []
    for _ in range(steps):
        runner.run({})
        out.append(float(model.store["w"]))
    return out


def test_changing_lr_between_steps_needs_no_recompile(spec):
    lrs = [0.1, 0.05, 0.2, 0.0, 0.1, 0.01]
    w = {k: v.copy() for k, v in W0.items()}
    for lr in lrs:
        g = grads(w)
        w = {k: w[k] - lr * g[k] for k in w}
    assert_close(graphc_steps(spec, {"sgd": {"lr": 1.0}}, lr_of=lrs.__getitem__), w)


def test_every_update_runs_after_every_gradient(spec):
    model = load_model(spec)
    sg = training_graph(model.graph, parse_optimizer({"adam": {}}), clip_grad_norm=1.0)
    plan = compile_plan(sg.graph, {}, {model.graph.loss, NORM}, sg.forward)
    order = [s.node for s in plan.steps]
    updates = [i for i, s in enumerate(plan.steps) if s.phase == "update" and s.op != "grad_norm"]
    assert len(updates) == 2 and min(updates) > order.index(NORM)
    assert all(order.index(g) < order.index(NORM) for g in sg.grads.values() if g in order)
    assert [n.name for n in sg.graph.leaves("state")] == \
        ["w1.m", "w1.v", "w1.step", "w2.m", "w2.v", "w2.step"]


def test_a_non_finite_gradient_skips_the_update(tmp_path):
    """pow(w, 0.5) at w = 0 has an infinite derivative: the step must leave w and state alone."""
    path = tmp_path / "s.yaml"
    path.write_text("dtype: float64\nparams:\n  w: {value: [0.0, 1.0]}\n"
                    "nodes:\n  loss: sum(pow(w, exponent=0.5))\n")
    model = load_model(path)
    sg = training_graph(model.graph, parse_optimizer({"sgd": {"lr": 0.1, "momentum": 0.9}}))
    for n in sg.graph.leaves("state"):
        model.store[n.name] = np.zeros(n.shape, n.dtype)
    model.store[LR] = np.asarray(0.1)
    ex = Runner(sg.graph, model.store, {model.graph.loss, sg.guard}, forward=sg.forward).run({})
    assert not math.isfinite(float(ex[sg.guard]))
    assert model.store["w"].tolist() == [0.0, 1.0] and not model.store["w.velocity"].any()


@pytest.mark.parametrize("raw, fragment", [
    ({"sgdd": {}}, "did you mean 'sgd'"),
    ({"adam": {"lr": 0.1, "beta": [0.9, 0.99]}}, "did you mean 'betas'"),
    ({"adam": {"betas": [0.9]}}, "pair"),
    ({"adam": {"betas": [0.9, 1.0]}}, "[0, 1)"),
    ({"sgd": {"lr": -1}}, ">= 0"),
    ({"sgd": {"nesterov": True}}, "nesterov needs a momentum"),
    ({"rmsprop": {"centered": 1}}, "true or false"),
    ({"sgd": 0.1}, "mapping of settings"),
])
def test_bad_optimizer_settings_are_located_errors(raw, fragment):
    with pytest.raises(SpecError) as err:
        parse_optimizer(raw)
    assert fragment in str(err.value)


SETTINGS = [{"sgd": {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1}},
            {"rmsprop": {"lr": 0.01, "momentum": 0.5, "centered": True}},
            {"adagrad": {"lr": 0.1}}, {"adam": {"lr": 0.1, "weight_decay": 0.1}},
            {"adamw": {"lr": 0.1}}]


def _stepped(spec, optimizer, code: str, clip=None, before=None):
    """(the store after STEPS steps under step code `code`, the executor's runs); `before`
    edits the store first."""
    with using_step_code(code):
        model = load_model(spec)
        sg = training_graph(model.graph, parse_optimizer(optimizer), clip)
        zero_state(model, sg.graph, sg.states)
        model.store[LR] = np.asarray(0.1)
        (before or (lambda store: None))(model.store)
        runner = Runner(sg.graph, model.store, {model.graph.loss, sg.guard}, sg.forward)
        for _ in range(STEPS):
            ex = runner.run({})
        return model.store, ex.backend.runs


PLAIN_FLAT = ("if math.isfinite(g.dot(g)):\n    np.subtract(w, g, out=w)\nelse:\n"
              "    for update in each:\n        update()")


def flat_calls(runs) -> dict:
    """update step -> what its generated call does, in plan order: its gradient's copy to
    the stash, or that and then the flat update of every param (flat.flat_updates)."""
    kinds = {"np.copyto(stashed, g)": "copy",
             "copy()\nflat_update()": "copy, then the flat update",
             "pass": "nothing", PLAIN_FLAT: "the flat update",
             "flat_update()": "the flat update"}
    return {steps[0].node: kinds.get(getattr(call, "text", None), "per param")
            for steps, call in runs if steps[0].node.startswith("update:")}


@pytest.mark.parametrize("optimizer", SETTINGS)
@pytest.mark.parametrize("clip", [None, 0.5])
def test_the_updates_run_as_one_flat_update_bit_for_bit(spec, optimizer, clip):
    """Generated step code: the last update updates both params over flat views (w1 has
    3 floats, padded to 8: the gap stays 0), with every bit of the per-param reference's
    numbers. Each gradient is computed into a stash laid out as the params, where only
    its update reads it (flat.stash_gradients); with clipping the global norm reads it
    too, so each update copies its gradient into the stash instead."""
    flat, runs = _stepped(spec, optimizer, "generated", clip)
    per_param, _ = _stepped(spec, optimizer, "reference", clip)
    assert list(flat_calls(runs).values()) == (["nothing", "the flat update"] if clip is None
                                               else ["copy", "copy, then the flat update"])
    assert flat.keys() == per_param.keys()
    for name in flat:
        assert np.array_equal(flat[name], per_param[name]), name
    whole = flat["w1"].base
    assert whole is flat["w2"].base and whole.size == 16
    assert not any(flat["w1" + kind].base[3:8].any() for kind in ("", ".m", ".v", ".velocity",
                                                                  ".square_avg", ".sum_sq")
                   if "w1" + kind in flat)


def test_plain_sgd_checks_and_updates_every_param_at_once_bit_for_bit(spec):
    """Plain SGD (lr folded into the gradients): the gradients are computed into a stash
    laid out as the params, so the last update checks all of them with one dot and
    subtracts them with one call; the numbers are the per-param reference's."""
    flat, runs = _stepped(spec, {"sgd": {"lr": 0.1}}, "generated")
    per_param, _ = _stepped(spec, {"sgd": {"lr": 0.1}}, "reference")
    assert list(flat_calls(runs).values()) == ["nothing", "the flat update"]
    for name in flat:
        assert np.array_equal(flat[name], per_param[name]), name
    (last,) = [c for _, c in runs if getattr(c, "text", None) == PLAIN_FLAT]
    stash, params = last.names["g"], last.names["w"]
    assert stash.size == params.size == 16 and not stash[3:8].any()     # w1's gap stays 0


def test_params_and_each_state_lie_side_by_side_in_param_order(spec):
    model = load_model(spec)
    sg = training_graph(model.graph, parse_optimizer("adam"))
    zero_state(model, sg.graph, sg.states)
    store = model.store
    for kind in ("", ".m", ".v"):           # w1 (24 bytes) padded to 64, as the planner pads
        a, b = store["w1" + kind], store["w2" + kind]
        assert a.base is b.base and b.ctypes.data - a.ctypes.data == 64
    assert store["w2.step"].ctypes.data - store["w1.step"].ctypes.data == 8


def test_unequal_adam_step_counts_update_each_param_with_its_own(spec):
    """A store whose step counts differ (each param's bias correction its own) is updated
    per param: the flat update uses one count for all."""
    def counts(store):
        store["w1.step"][...] = 5
    flat, _ = _stepped(spec, "adam", "generated", before=counts)
    per_param, _ = _stepped(spec, "adam", "reference", before=counts)
    assert flat["w1.step"] == 5 + STEPS and flat["w2.step"] == STEPS
    for name in flat:
        assert np.array_equal(flat[name], per_param[name]), name


@pytest.mark.parametrize("optimizer, calls", [
    ({"sgd": {"lr": 0.1, "momentum": 0.9}}, ["nothing", "the flat update"]),
    ({"sgd": {"lr": 0.1}}, ["nothing", "the flat update"])])
def test_a_non_finite_gradient_of_one_param_skips_that_param_alone(tmp_path, optimizer, calls):
    """u's gradient is finite, w's is not (pow(w, 0.5) at 0): as per param, u takes its
    step (SGD's first, with or without momentum: u - 0.1 * 2u = 0.8u), w and its
    velocity stay."""
    path = tmp_path / "s.yaml"
    path.write_text("dtype: float64\nparams:\n  u: {value: [1.0, 2.0]}\n"
                    "  w: {value: [0.0, 1.0]}\n"
                    "nodes:\n  loss: sum(u * u) + sum(pow(w, exponent=0.5))\n")
    with using_step_code("generated"):
        model = load_model(path)
        sg = training_graph(model.graph, parse_optimizer(optimizer))
        zero_state(model, sg.graph, sg.states)
        model.store[LR] = np.asarray(0.1)
        ex = Runner(sg.graph, model.store, {model.graph.loss, sg.guard}, sg.forward).run({})
    assert sorted(flat_calls(ex.backend.runs).values()) == calls
    assert not math.isfinite(float(ex[sg.guard]))
    assert model.store["u"].tolist() == [0.8, 1.6]
    assert model.store["w"].tolist() == [0.0, 1.0]
    assert not model.store.get("w.velocity", np.zeros(1)).any()
