"""One claim checker for every table: a measured value compared with another or a threshold.

Operators: ``>``, ``<``, ``>=``, ``<=`` and ``~`` (``|a - b| <= tol``). The tolerance rule is
the same everywhere: ``~`` needs an explicit ``tol``, and no other operator takes one.
"""

from __future__ import annotations

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
