"""Sweep grammar, trial generation and the early-stopping rules, checked on hand-made cases."""

from __future__ import annotations

import math
import random

import pytest

from mldeck.core import protocol
from mldeck.core import sweep as sw
from mldeck.core.errors import Invalid


def test_grid_and_random_grammar() -> None:
    assert sw.parse_grid(["lr=1e-3,1e-2", "opt=adam,sgd", "bs=32"]) == {
        "lr": [0.001, 0.01], "opt": ["adam", "sgd"], "bs": [32],
    }
    rand = sw.parse_random(["wd=loguniform(1e-5,1e-2)", "d=uniform(0, 0.5)", "n=int(1,4)", "a=choice(x,y)"])
    assert rand["wd"] == sw.Dist("loguniform", (1e-5, 1e-2)) and rand["n"].args == (1, 4)
    assert rand["a"] == sw.Dist("choice", ("x", "y"))


@pytest.mark.parametrize(
    ("grid", "rand", "message"),
    [
        (["lr"], [], "name=values"),
        (["lr="], [], "name=values"),
        (["lr=1,,2"], [], "empty value"),
        (["1lr=1"], [], "not a parameter name"),
        (["lr=1", "lr=2"], [], "given twice"),
        ([], ["wd=normal(0,1)"], r"loguniform\(a,b\)"),
        ([], ["wd=loguniform(0,1)"], "low > 0"),
        ([], ["wd=uniform(2,1)"], "low must be below high"),
        ([], ["wd=uniform(a,1)"], "two numbers"),
        ([], ["n=int(1.5,3)"], "whole numbers"),
        ([], ["c=choice()"], "at least one value"),
    ],
)
def test_grammar_errors(grid: list[str], rand: list[str], message: str) -> None:
    with pytest.raises(Invalid, match=message):
        sw.trials(sw.parse_grid(grid), sw.parse_random(rand), 2)


@pytest.mark.parametrize(
    ("field", "bad"),
    [("mode", "best"), ("early_stop", "pbt"), ("trials", 0), ("trials", sw.MAX_TRIALS + 1),
     ("min_trials", 0), ("warmup_steps", -1), ("min_steps", 0), ("reduction_factor", 1), ("max_steps", 0)],
)
def test_sweep_params_declare_their_ranges(field: str, bad: object) -> None:
    good = {"script": "train.py", "grid": ["lr=1,2"], "metric": "loss"}
    assert protocol.validate(good, sw.SweepCreateParams).mode == "min"
    with pytest.raises(Invalid, match=rf"\$\.{field}"):
        protocol.validate({**good, field: bad}, sw.SweepCreateParams)


def test_trials_cross_grid_and_draw_random() -> None:
    grid = sw.parse_grid(["lr=1,2", "bs=8,16"])
    assert sw.trials(grid, {}) == [
        {"lr": 1, "bs": 8}, {"lr": 1, "bs": 16}, {"lr": 2, "bs": 8}, {"lr": 2, "bs": 16},
    ]
    out = sw.trials(grid, sw.parse_random(["wd=loguniform(1e-5,1e-2)"]), 10, seed=1)
    assert len(out) == 10 and all(1e-5 <= t["wd"] <= 1e-2 for t in out)
    assert out == sw.trials(grid, sw.parse_random(["wd=loguniform(1e-5,1e-2)"]), 10, seed=1)
    logs = [math.log10(t["wd"]) for t in sw.trials({}, sw.parse_random(["wd=loguniform(1e-5,1e-2)"]), 2000)]
    assert -3.7 < sum(logs) / len(logs) < -3.3  # uniform in log space: mean exponent -3.5
    with pytest.raises(Invalid, match="both grid and random"):
        sw.trials({"a": [1]}, {"a": sw.Dist("uniform", (0, 1))})
    with pytest.raises(Invalid, match="at least one"):
        sw.trials({}, {})


def test_median_rule_stops_the_trial_worse_than_the_median() -> None:
    good = [(s, 1.0 / (s + 1)) for s in range(10)]
    ok = [(s, 1.2 / (s + 1)) for s in range(10)]
    bad = [(s, 5.0 + 1.0 / (s + 1)) for s in range(5)]
    decision = sw.median_rule(bad, [good, ok], "min", warmup_steps=2, min_trials=2)
    assert decision.stop and "median rule" in decision.reason
    assert not sw.median_rule(ok[:5], [good, bad], "min").stop
    assert not sw.median_rule(bad[:2], [good, ok], "min", warmup_steps=2).stop  # still warming up
    assert not sw.median_rule(bad, [good], "min", min_trials=2).stop  # too few others
    # in max mode, the low one is the worse
    up = [(s, float(s)) for s in range(6)]
    flat = [(s, 0.1) for s in range(6)]
    assert sw.median_rule(flat, [up, up], "max").stop


def test_asha_rule_matches_successive_halving() -> None:
    # Optuna's SuccessiveHalvingPruner: keep if within the top len//η (at least the best)
    assert sw.asha_rule(0.5, [], "min", 3)
    assert not sw.asha_rule(0.9, [0.5], "min", 3)
    assert sw.asha_rule(0.4, [0.5, 0.6], "min", 3)
    assert not sw.asha_rule(0.55, [0.5, 0.6], "min", 3)
    assert sw.asha_rule(0.55, [0.5, 0.6, 0.7, 0.8, 0.9], "min", 3)  # 6 values: top 2 continue
    assert sw.asha_rule(0.9, [0.5], "max", 3)
    assert sw.asha_rungs(1, 3, 100) == [1, 3, 9, 27, 81]


def test_asha_state_stops_about_two_thirds_at_the_first_rung() -> None:
    rng = random.Random(0)
    state = sw.AshaState.new(min_steps=1, reduction_factor=3, max_steps=10, mode="min")
    values = [rng.random() for _ in range(30)]
    stopped = sum(state.report(f"t{i}", 1, v).stop for i, v in enumerate(values))
    assert 15 <= stopped <= 25
    assert not state.report("t0", 1, 0.0).stop  # a rung counts a trial once
