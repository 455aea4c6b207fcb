"""Grading of model responses: the last \\boxed{...} answer, checked with math-verify."""

from __future__ import annotations

import logging
from functools import lru_cache

from math_verify import parse, verify
from math_verify.parser import ExprExtractionConfig, LatexExtractionConfig

logging.getLogger("math_verify").setLevel(logging.ERROR)


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}) in ``text``, braces balanced."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j]
    return None  # unbalanced: the answer was cut off


def is_correct(response: str, gold: str, timeout_seconds: int = 5) -> bool:
    """True when the last boxed answer of ``response`` equals ``gold`` mathematically.

    Never raises: unparsable or odd output (and math-verify time-outs) grade as wrong.
    """
    boxed = last_boxed(response)
    if boxed is None or not boxed.strip():
        return False
    return _equal(boxed, gold, timeout_seconds)


@lru_cache(maxsize=65536)
def _equal(boxed: str, gold: str, timeout_seconds: int) -> bool:
    """math-verify's verdict on two answer strings; it depends on the strings alone, and a
    batch of rollouts repeats the same few answers many times."""
    try:
        pred = _parsed(boxed, timeout_seconds)
        target = _parsed(gold, timeout_seconds)
        return bool(pred) and bool(target) and bool(verify(list(target), list(pred),
                                                            timeout_seconds=timeout_seconds))
    except Exception:  # math-verify raises on pathological input; that answer is wrong
        return False


@lru_cache(maxsize=65536)
def _parsed(answer: str, timeout_seconds: int) -> tuple:
    """math-verify's parse of one answer string: a gold answer is met with many different
    responses, and a response's answer with many golds, so each string is parsed once."""
    return tuple(parse("$" + answer + "$",
                       extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()],
                       parsing_timeout=timeout_seconds))
