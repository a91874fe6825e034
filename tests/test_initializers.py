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
