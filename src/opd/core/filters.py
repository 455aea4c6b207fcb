"""Rules that reject a teacher rollout before it becomes cold-start SFT data.

A response is *incomplete* when generation hit the length limit or it has no final
``\\boxed{}`` answer, and *degenerate* when it repeats itself (the official rules):
- a line of at least 20 characters occurs 5 or more times;
- a 100-character window occurs 3 or more times (windows taken every 10 characters);
- in a response longer than 5,000 characters, a 50-character block occurs 3 times in a row.
All numbers come from config (``filters``); these are the schema's defaults.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from opd.core.config import section, typed
from opd.core.grading import last_boxed

REASONS = ("truncated", "no_boxed_answer", "repeated_line", "repeated_window", "repeated_block")


@dataclass(frozen=True)
class FilterRules:
    """The thresholds (config ``filters``; defaults, the official ones, in the schema)."""
    min_line_chars: int
    line_repeats: int
    window_chars: int
    window_stride: int
    window_repeats: int
    long_response_chars: int
    block_chars: int
    block_repeats: int

    @classmethod
    def from_config(cls, cfg: dict[str, Any] | None = None) -> "FilterRules":
        """Rules from (part of) a ``filters`` section, the rest at the schema's defaults."""
        return typed(cls, section("filters", cfg), "filters")


def repeated_line(text: str, rules: FilterRules) -> bool:
    """A line (trailing whitespace ignored) of >= min_line_chars repeated >= line_repeats times."""
    lines = (ln.rstrip() for ln in text.splitlines())
    counts = Counter(ln for ln in lines if len(ln) >= rules.min_line_chars)
    return any(c >= rules.line_repeats for c in counts.values())


def repeated_window(text: str, rules: FilterRules) -> bool:
    """A window of window_chars, sampled every window_stride characters, seen >= window_repeats times."""
    w = rules.window_chars
    counts = Counter(text[i:i + w] for i in range(0, len(text) - w + 1, rules.window_stride))
    return any(c >= rules.window_repeats for c in counts.values())


def repeated_block(text: str, rules: FilterRules) -> bool:
    """In a long response, one block of block_chars repeated block_repeats times back to back."""
    if len(text) <= rules.long_response_chars:
        return False
    pattern = re.compile("(.{%d})\\1{%d}" % (rules.block_chars, rules.block_repeats - 1), re.DOTALL)
    return pattern.search(text) is not None


def reject_reason(text: str, finish_reason: str, rules: FilterRules) -> str | None:
    """Why a response is dropped (the first rule that fires), or None to keep it."""
    if finish_reason == "length":
        return "truncated"
    if last_boxed(text) is None:
        return "no_boxed_answer"
    if repeated_line(text, rules):
        return "repeated_line"
    if repeated_window(text, rules):
        return "repeated_window"
    if repeated_block(text, rules):
        return "repeated_block"
    return None
