"""One claim checker for every table: a measured value compared with another or a threshold.

Operators: ``>``, ``<``, ``>=``, ``<=`` and ``~`` (``|a - b| <= tol``). The tolerance rule is
the same everywhere: ``~`` needs an explicit ``tol``, and no other operator takes one.

A single measurement gets a yes/no answer (``checked``). A claim measured over seeds gets a
verdict from the 95% interval of the per-seed difference a - b (``judged``): "holds" when the
whole interval lies on the claimed side, "does not hold" when it lies wholly on the other,
"inconclusive" otherwise (one seed is always inconclusive: it has no interval).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

OPERATORS = (">", "<", ">=", "<=", "~")


def tolerance_error(op: str, tol: float | None) -> str | None:
    """Why ``op`` with ``tol`` is not a valid comparison, or None when it is."""
    if op not in OPERATORS:
        return f"unknown operator {op!r} (known: {' '.join(OPERATORS)})"
    if op == "~" and tol is None:
        return "'~' needs a tolerance (tol)"
    if op != "~" and tol is not None:
        return f"tol applies to '~' only, not to {op!r}"
    return None


def compare(a: float, op: str, b: float, tol: float | None = None) -> bool:
    error = tolerance_error(op, tol)
    if error:
        raise ValueError(error)
    if op == "~":
        return abs(a - b) <= tol
    return {">": a > b, "<": a < b, ">=": a >= b, "<=": a <= b}[op]


def checked(claim: dict[str, Any], a: float, b: float) -> dict[str, Any]:
    """The claim with its measured values and verdict."""
    holds = compare(a, claim["op"], b, claim.get("tol"))
    return {**claim, "measured_a": a, "measured_b": b, "holds": bool(holds)}


CONFIDENCE = 0.95
HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` values with its two-sided Student-t interval at ``CONFIDENCE``."""

    mean: float
    low: float
    high: float
    n: int


def interval(values: list[float]) -> Interval:
    """The mean and its t interval; infinite bounds with fewer than two values."""
    n = len(values)
    if n == 0:
        raise ValueError("an interval needs at least one value")
    mean = sum(values) / n
    if n == 1:
        return Interval(mean, -math.inf, math.inf, 1)
    # imported here: the config checks import this module in every job's environment, and
    # only the report stage judges claims
    from scipy import stats

    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def verdict(op: str, diff: Interval, tol: float | None = None) -> str:
    """The verdict on "a op b" from the interval of a - b."""
    error = tolerance_error(op, tol)
    if error:
        raise ValueError(error)
    lo, hi = diff.low, diff.high
    if op == "~":
        if -tol <= lo and hi <= tol:
            return HOLDS
        return FAILS if lo > tol or hi < -tol else INCONCLUSIVE
    if op in (">", ">="):
        holds, fails = (lo > 0, hi < 0) if op == ">" else (lo >= 0, hi < 0)
    else:
        holds, fails = (hi < 0, lo > 0) if op == "<" else (hi <= 0, lo > 0)
    return HOLDS if holds else FAILS if fails else INCONCLUSIVE


def judged(claim: dict[str, Any], a: list[float], b: list[float]) -> dict[str, Any]:
    """The claim with the per-seed values of both sides, the interval of their difference
    (paired by seed: ``a[i]`` and ``b[i]`` come from the same seed) and its verdict."""
    if len(a) != len(b) or not a:
        raise ValueError(f"claim {claim.get('claim')!r}: {len(a)} values against {len(b)}")
    diff = interval([x - y for x, y in zip(a, b)])
    return {**claim, "values_a": list(a), "values_b": list(b),
            "mean_a": sum(a) / len(a), "mean_b": sum(b) / len(b),
            "difference": asdict(diff), "verdict": verdict(claim["op"], diff, claim.get("tol"))}
