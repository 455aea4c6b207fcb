"""The one claim checker: every operator against a plain comparison, one tolerance rule."""

from __future__ import annotations

import itertools

import pytest

from opd.core.claims import OPERATORS, checked, compare


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
