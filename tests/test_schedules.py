"""Learning-rate schedules against their closed forms (PyTorch's per-epoch schedulers)."""
from __future__ import annotations

import math

import pytest

from graphc.errors import SpecError
from graphc.schedules import parse_schedule

BASE = 0.4
EPOCHS = range(0, 25)


def lrs(raw, epochs=20) -> list:
    schedule = parse_schedule(raw, epochs=epochs)
    return [schedule.lr(BASE, e) for e in EPOCHS]


def test_constant_and_none():
    assert lrs(None) == lrs("constant") == [BASE] * len(EPOCHS)


def test_step_halves_every_five_epochs():
    want = [BASE * 0.5 ** (e // 5) for e in EPOCHS]
    assert lrs({"step": {"every": 5, "gamma": 0.5}}) == pytest.approx(want, rel=1e-15)
    assert lrs({"step": {"every": 5, "gamma": 0.5}})[4:6] == pytest.approx([0.4, 0.2])


def test_multistep_counts_milestones_passed():
    got = lrs({"multistep": {"milestones": [3, 10], "gamma": 0.1}})
    assert got[:3] == pytest.approx([0.4] * 3)
    assert got[3:10] == pytest.approx([0.04] * 7)
    assert got[10:] == pytest.approx([0.004] * (len(EPOCHS) - 10))


def test_exponential():
    assert lrs({"exponential": {"gamma": 0.9}}) == pytest.approx(
        [BASE * 0.9 ** e for e in EPOCHS], rel=1e-14)


def test_cosine_closed_form_and_endpoints():
    got = lrs({"cosine": {"T_max": 10, "eta_min": 0.1}})
    want = [0.1 + (BASE - 0.1) * (1 + math.cos(math.pi * e / 10)) / 2 for e in EPOCHS]
    assert got == pytest.approx(want, rel=1e-14)
    assert got[0] == pytest.approx(BASE) and got[5] == pytest.approx(0.25)
    assert got[10] == pytest.approx(0.1)


def test_cosine_T_max_defaults_to_the_specs_epochs():
    assert lrs("cosine", epochs=8) == lrs({"cosine": {"T_max": 8}})
    assert lrs("cosine", epochs=8)[8] == pytest.approx(0.0, abs=1e-16)


def test_warmup_alone_ramps_linearly_from_lr_over_n():
    got = lrs({"warmup": {"epochs": 4}})
    assert got[:5] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.4])


@pytest.mark.parametrize("main", [
    {"step": {"every": 2, "gamma": 0.5}},
    {"cosine": {"T_max": 12}},
    {"exponential": {"gamma": 0.8}},
    {"multistep": {"milestones": [1, 6]}},
])
def test_warmup_multiplies_any_schedule(main):
    plain = lrs(main)
    warm = lrs({**main, "warmup": {"epochs": 3}})
    factors = [(e + 1) / 3 if e < 3 else 1.0 for e in EPOCHS]
    assert warm == pytest.approx([p * f for p, f in zip(plain, factors)], rel=1e-14)


@pytest.mark.parametrize("raw, fragment", [
    ({"stepp": {"every": 2}}, "did you mean 'step'"),
    ({"step": {"evry": 2}}, "did you mean 'every'"),
    ({"step": {"gamma": 0.5}}, "needs 'every'"),
    ({"step": {"every": 0}}, "positive integer"),
    ({"multistep": {"milestones": [5, 3]}}, "increasing"),
    ({"exponential": {"gamma": 0}}, "> 0"),
    ({"cosine": {"eta_min": -1}}, ">= 0"),
    ({"warmup": {"epoch": 3}}, "warmup must be {epochs: N}"),
    ({"step": {"every": 2}, "cosine": {}}, "give one"),
    ({"constant": {"lr": 1}}, "takes no settings"),
])
def test_bad_schedules_are_errors(raw, fragment):
    with pytest.raises(SpecError) as err:
        parse_schedule(raw)
    assert fragment in str(err.value)
