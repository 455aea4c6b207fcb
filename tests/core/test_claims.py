"""The one claim checker: every operator against a plain comparison, one tolerance rule, and
the verdict over seeds against the t interval written out by hand."""

from __future__ import annotations

import itertools
import math

import pytest

from opd.core.claims import (FAILS, HOLDS, INCONCLUSIVE, OPERATORS, Interval, checked, compare,
                             interval, judged, verdict)


def test_operators_match_plain_comparisons():
    values = (0.0, 0.25, 0.5)
    for a, b in itertools.product(values, values):
        assert compare(a, ">", b) is (a > b)
        assert compare(a, "<", b) is (a < b)
        assert compare(a, ">=", b) is (a >= b)
        assert compare(a, "<=", b) is (a <= b)
        assert compare(a, "~", b, tol=0.25) is (abs(a - b) <= 0.25)
    assert set(OPERATORS) == {">", "<", ">=", "<=", "~"}


@pytest.mark.parametrize("op, tol, message", [
    ("~", None, "needs a tolerance"), (">", 0.1, "applies to '~' only"), ("!=", None, "unknown")])
def test_one_tolerance_rule(op, tol, message):
    with pytest.raises(ValueError, match=message):
        compare(1.0, op, 1.0, tol)


def test_checked_claim_carries_its_measurements():
    out = checked({"claim": "c", "op": "~", "tol": 0.1}, 0.5, 0.55)
    assert out == {"claim": "c", "op": "~", "tol": 0.1, "measured_a": 0.5, "measured_b": 0.55,
                   "holds": True}


def _t975(df: int) -> float:
    """The 97.5% quantile of Student's t in closed form (df 1: Cauchy; df 2: algebraic)."""
    p = 0.975
    return {1: math.tan(math.pi * (p - 0.5)), 2: (2 * p - 1) / math.sqrt(2 * p * (1 - p))}[df]


@pytest.mark.parametrize("values", [[0.1, 0.3], [1.0, 2.0, 4.0], [0.5, 0.5, 0.5]])
def test_interval_is_the_t_interval_of_the_mean(values):
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = _t975(n - 1) * sd / math.sqrt(n)
    iv = interval(values)
    assert iv.n == n and iv.mean == pytest.approx(mean)
    assert iv.low == pytest.approx(mean - half) and iv.high == pytest.approx(mean + half)


def test_one_value_has_no_interval():
    iv = interval([0.3])
    assert iv.mean == 0.3 and iv.low == -math.inf and iv.high == math.inf
    assert verdict(">", iv) == INCONCLUSIVE


@pytest.mark.parametrize("op, low, high, tol, expected", [
    (">", 0.01, 0.2, None, HOLDS), (">", -0.01, 0.2, None, INCONCLUSIVE),
    (">", -0.3, -0.01, None, FAILS), (">", 0.0, 0.2, None, INCONCLUSIVE),
    (">=", 0.0, 0.2, None, HOLDS), ("<", -0.2, -0.01, None, HOLDS),
    ("<", 0.01, 0.2, None, FAILS), ("<=", -0.2, 0.0, None, HOLDS),
    ("~", -0.04, 0.05, 0.05, HOLDS), ("~", -0.04, 0.06, 0.05, INCONCLUSIVE),
    ("~", 0.06, 0.2, 0.05, FAILS), ("~", -0.2, -0.051, 0.05, FAILS)])
def test_verdict_from_the_interval(op, low, high, tol, expected):
    assert verdict(op, Interval((low + high) / 2, low, high, 3), tol) == expected


def test_judged_claim_pairs_the_sides_by_seed():
    # a - b per seed: 0.2, 0.25, 0.3 -> mean 0.25, sd 0.05; unpaired, the seeds' spread of
    # 0.25 to 0.5 would hide the difference
    out = judged({"claim": "c", "op": ">"}, [0.7, 0.95, 1.3], [0.5, 0.7, 1.0])
    half = _t975(2) * 0.05 / math.sqrt(3)
    assert out["difference"]["mean"] == pytest.approx(0.25)
    assert out["difference"]["low"] == pytest.approx(0.25 - half)
    assert out["verdict"] == HOLDS and out["mean_a"] == pytest.approx(2.95 / 3)
    with pytest.raises(ValueError, match="3 values against 2"):
        judged({"claim": "c", "op": ">"}, [1, 2, 3], [1, 2])
