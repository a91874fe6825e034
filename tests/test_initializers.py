"""Initializers: shapes, dtypes, determinism, the statistics each formula promises, errors."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graphc.errors import Mark, SpecError
from graphc.initializers import INITIALIZERS, default_init, fans, initialize, parse_init
from graphc.model import load_model

BIG = (400, 600)  # fan_in 400, fan_out 600: 240k draws put sample stds within ~0.5%


def draw(init, shape=BIG, dtype="float64", seed=0):
    return initialize(init, shape, dtype, np.random.default_rng(seed))


# --- fans and defaults ---------------------------------------------------------------------

@pytest.mark.parametrize("shape, expected", [
    ((), (1, 1)),
    ((7,), (7, 7)),
    ((3, 4), (3, 4)),              # graphc weights are [in, out]
    # conv weights [out, in, *kernel] (PyTorch; contract §3): before, read as Keras's
    # [kh, kw, in, out], these gave (16*3 * 3, 16*3 * 3) = (144, 144) and (8 * 1, 8 * 5)
    ((16, 3, 3, 3), (27, 144)),    # conv2d: fan_in 3*3*3, fan_out 16*3*3
    ((8, 1, 5), (5, 40)),          # conv1d: fan_in 1*5, fan_out 8*5
])
def test_fans(shape, expected):
    assert fans(shape) == expected


@pytest.mark.parametrize("shape, expected", [
    ((), "zeros"), ((5,), "zeros"), ((2, 3), "glorot_uniform"), ((2, 3, 4), "glorot_uniform"),
])
def test_default_init(shape, expected):
    assert default_init(shape) == expected


def test_none_means_the_default():
    assert np.array_equal(draw(None, (4,)), np.zeros(4))
    assert np.array_equal(draw(None, (4, 5)), draw("glorot_uniform", (4, 5)))


# --- every initializer ----------------------------------------------------------------------

def spec_for(name):
    return {name: {"value": 0.5}} if name == "constant" else name


@pytest.mark.parametrize("name", sorted(INITIALIZERS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_shape_dtype_and_determinism(name, dtype):
    a = draw(spec_for(name), (5, 3), dtype, seed=1)
    b = draw(spec_for(name), (5, 3), dtype, seed=1)
    assert a.shape == (5, 3) and a.dtype == np.dtype(dtype)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("name", ["normal", "uniform", "glorot_uniform", "glorot_normal",
                                  "he_uniform", "he_normal", "lecun_uniform", "lecun_normal",
                                  "orthogonal"])
def test_random_initializers_depend_on_the_seed(name):
    assert not np.array_equal(draw(name, (5, 3), seed=1), draw(name, (5, 3), seed=2))


@pytest.mark.parametrize("alias, name", [
    ("xavier_uniform", "glorot_uniform"), ("xavier_normal", "glorot_normal"),
    ("kaiming_uniform", "he_uniform"), ("kaiming_normal", "he_normal"),
])
def test_aliases_draw_the_same(alias, name):
    assert np.array_equal(draw(alias, (6, 4)), draw(name, (6, 4)))


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(0, 5), max_size=4).map(tuple),
       name=st.sampled_from(sorted(INITIALIZERS)))
def test_any_shape_gives_finite_values(shape, name):
    if name == "orthogonal" and len(shape) < 2:
        with pytest.raises(SpecError, match="at least 2 dimensions"):
            draw(name, shape)
        return
    w = draw(spec_for(name), shape)
    assert w.shape == shape and np.isfinite(w).all()


# --- the statistics each formula promises ---------------------------------------------------

def test_constants():
    assert np.array_equal(draw("zeros", (2, 3)), np.zeros((2, 3)))
    assert np.array_equal(draw("ones", (2, 3)), np.ones((2, 3)))
    assert np.array_equal(draw({"constant": {"value": -1.5}}, (4,)), np.full(4, -1.5))


def test_normal_defaults_and_arguments():
    w = draw("normal")
    assert abs(w.mean()) < 0.01 and w.std() == pytest.approx(1.0, rel=0.01)
    w = draw({"normal": {"mean": 3, "std": 0.01}})
    assert w.mean() == pytest.approx(3.0, abs=1e-3) and w.std() == pytest.approx(0.01, rel=0.01)


def test_uniform_defaults_and_arguments():
    w = draw("uniform")
    assert w.min() >= 0.0 and w.max() < 1.0
    w = draw({"uniform": {"low": -0.1, "high": 0.1}})
    assert w.min() >= -0.1 and w.max() < 0.1
    assert w.std() == pytest.approx(0.2 / math.sqrt(12), rel=0.01)


@pytest.mark.parametrize("name, bound", [
    ("glorot_uniform", math.sqrt(6 / (400 + 600))),
    ("he_uniform", math.sqrt(6 / 400)),
    ("lecun_uniform", math.sqrt(3 / 400)),
])
def test_uniform_bounds_hold_and_fill_the_range(name, bound):
    w = draw(name)
    assert np.abs(w).max() <= bound
    assert np.abs(w).max() > 0.99 * bound
    assert w.std() == pytest.approx(bound / math.sqrt(3), rel=0.01)  # std of U[-a, a]


@pytest.mark.parametrize("init, std", [
    ("glorot_normal", math.sqrt(2 / (400 + 600))),
    ({"glorot_normal": {"gain": 2.0}}, 2 * math.sqrt(2 / (400 + 600))),
    ("he_normal", math.sqrt(2 / 400)),
    ({"he_normal": {"mode": "fan_out"}}, math.sqrt(2 / 600)),
    ({"he_normal": {"negative_slope": 1.0}}, math.sqrt(1 / 400)),
    ("lecun_normal", math.sqrt(1 / 400)),
])
def test_normal_stds(init, std):
    w = draw(init)
    assert abs(w.mean()) < 0.01 * std  # about 5 standard errors
    assert w.std() == pytest.approx(std, rel=0.01)


def test_glorot_uniform_on_a_conv_kernel_uses_the_receptive_field():
    w = draw("glorot_uniform", (32, 16, 3, 3))      # [out, in, kh, kw]
    assert np.abs(w).max() <= math.sqrt(6 / (144 + 288))
    assert np.abs(w).max() > 0.99 * math.sqrt(6 / (144 + 288))


@pytest.mark.parametrize("shape", [(50, 20), (20, 20)])
def test_orthogonal_tall_has_orthonormal_columns(shape):
    w = draw("orthogonal", shape)
    assert np.allclose(w.T @ w, np.eye(shape[1]), atol=1e-10)


def test_orthogonal_wide_has_orthonormal_rows():
    w = draw("orthogonal", (20, 50))
    assert np.allclose(w @ w.T, np.eye(20), atol=1e-10)


def test_orthogonal_gain_and_higher_rank():
    w = draw({"orthogonal": {"gain": 2.0}}, (3, 4, 5))
    flat = w.reshape(12, 5)
    assert np.allclose(flat.T @ flat, 4 * np.eye(5), atol=1e-10)


# --- errors ----------------------------------------------------------------------------------

def test_unknown_initializer_suggests_the_closest():
    with pytest.raises(SpecError, match="unknown initializer 'he_norml'.*did you mean 'he_normal"):
        draw("he_norml")


def test_unknown_argument_names_the_initializer_and_its_arguments():
    with pytest.raises(SpecError) as e:
        draw({"normal": {"stdev": 0.1}})
    msg = str(e.value)
    assert "initializer 'normal' has no argument 'stdev'" in msg
    assert "it accepts: mean, std" in msg and "did you mean 'std'" in msg


def test_initializer_without_arguments_says_so():
    with pytest.raises(SpecError, match="'zeros' has no argument 'value'; it accepts: no argum"):
        draw({"zeros": {"value": 1}})


@pytest.mark.parametrize("init, fragment", [
    ({"normal": {"std": "big"}}, "argument 'std' of initializer 'normal' must be a finite number"),
    ({"normal": {"std": True}}, "must be a finite number"),
    ({"normal": {"std": -1}}, "initializer 'normal': std must be >= 0"),
    ({"uniform": {"low": 1, "high": 0}}, "low must be <= high"),
    ({"he_normal": {"mode": "fan_avg"}}, "mode must be 'fan_in' or 'fan_out'"),
    ({"constant": {}}, "initializer 'constant' needs argument 'value'"),
    ({"constant": None}, "needs argument 'value'"),
    ({"normal": [0.1]}, "arguments of initializer 'normal' must be a mapping"),
    ({"normal": {}, "uniform": {}}, "one-key mapping"),
    (0.5, "constant: {value: 0.5}"),
])
def test_bad_values(init, fragment):
    with pytest.raises(SpecError) as e:
        draw(init, (3, 3))
    assert fragment in str(e.value)


def test_errors_carry_the_mark_and_node():
    with pytest.raises(SpecError) as e:
        initialize("glorot", (2, 2), "float32", np.random.default_rng(0),
                   mark=Mark("net.yaml", 7, 9), node="W1")
    assert str(e.value).startswith("net.yaml:7:9: node 'W1': unknown initializer 'glorot'")


def test_bad_shape_is_an_error():
    with pytest.raises(SpecError, match="dims must be non-negative integers"):
        draw("zeros", ("batch", 3))


def test_parse_init():
    assert parse_init("he_normal") == ("he_normal", {})
    assert parse_init({"normal": {"std": 0.01}}) == ("normal", {"std": 0.01})


def test_he_normal_on_a_declared_conv_weight_has_pytorchs_std(tmp_path):
    # W [64, 32, 3, 5] declared by hand: fan_in = 32 * 3 * 5 = 480, std sqrt(2 / 480) =
    # 0.0645 (torch.nn.init.kaiming_normal_). Before, read as Keras's [kh, kw, in, out]:
    # fan_in = 64 * 32 * 3 = 6144, std 0.018.
    spec = tmp_path / "conv.yaml"
    spec.write_text("graphc: 1\ninputs:\n  x: [batch, 32, 6, 6]\n"
                    "params:\n  W: {shape: [64, 32, 3, 5], init: he_normal}\n"
                    "nodes:\n  h: conv2d(x, W)\n  loss: sum(h)\nloss: loss\n")
    W = load_model(spec, seed=0).store["W"]
    assert W.std() == pytest.approx(math.sqrt(2 / 480), rel=0.02)    # 30720 draws: ~0.4%
