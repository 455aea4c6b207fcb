"""Grading: last boxed answer with balanced braces, math-verify equivalence, odd output."""

from __future__ import annotations

import pytest

from opd.core.grading import is_correct, last_boxed


@pytest.mark.parametrize("text, boxed", [
    ("so \\boxed{12}.", "12"),
    ("\\boxed{1} then \\boxed{2}", "2"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\fbox{7}", "7"),
    ("no box here", None),
    ("\\boxed{12", None),
    ("\\boxed", None),
])
def test_last_boxed(text, boxed):
    assert last_boxed(text) == boxed


@pytest.mark.parametrize("response, gold, ok", [
    ("The answer is \\boxed{16}.", "16", True),
    ("\\boxed{16.0}", "16", True),
    ("\\boxed{\\frac{1}{2}}", "0.5", True),
    ("\\boxed{\\dfrac{3}{6}}", "\\frac{1}{2}", True),
    ("\\boxed{15}", "16", False),
    ("16", "16", False),                 # no box: a format error, graded wrong
    ("\\boxed{}", "16", False),
    ("\\boxed{\\frac{", "16", False),    # cut off mid-answer
    ("\\boxed{)(*&^%$}", "16", False),   # garbage never raises
])
def test_is_correct(response, gold, ok):
    assert is_correct(response, gold) is ok
