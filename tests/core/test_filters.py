"""Rollout filters: each official rule on planted responses, at and just past its threshold."""

from __future__ import annotations

import random
import string

import pandas as pd
import pytest

from opd.stages.rollouts.filter_rollouts import filter_rows
from opd.core.filters import (FilterRules, reject_reason, repeated_block, repeated_line,
                         repeated_window)

OFFICIAL = FilterRules.from_config()  # the schema's defaults: the official thresholds

BOX = "The answer is \\boxed{7}."


def _distinct_lines(n: int) -> str:
    return "\n".join(f"line number {i:04d} says {i * 37 % 1000:03d}" for i in range(n))


def test_repeated_line_needs_twenty_chars_and_five_copies():
    line = "a" * 20
    assert repeated_line("\n".join([line] * 5), OFFICIAL)
    assert not repeated_line("\n".join([line] * 4), OFFICIAL)
    assert not repeated_line("\n".join(["b" * 19] * 10), OFFICIAL)     # too short to count
    assert repeated_line("\n".join([line + "  "] * 3 + [line] * 2), OFFICIAL)  # trailing space ignored
    spread = "\n".join(f"{line}\nfiller {i}" for i in range(5))  # copies need not be adjacent
    assert repeated_line(spread, OFFICIAL)


def test_repeated_window_counts_windows_every_ten_chars():
    rng = random.Random(0)
    unit = "".join(rng.choice(string.ascii_letters) for _ in range(100))
    assert not repeated_window(unit * 2, OFFICIAL)                           # two copies: below three
    assert repeated_window(unit * 3, OFFICIAL)
    # windows are sampled every 10 chars: a loop that starts off that grid is caught once it
    # runs one copy longer (every window inside the loop recurs with the loop's period)
    assert not repeated_window("xyz" + unit * 3, OFFICIAL)
    assert repeated_window("xyz" + unit * 4, OFFICIAL)
    # a 30-char loop: each 100-char window inside it recurs every 30 chars
    assert repeated_window("intro " + unit[:30] * 12, OFFICIAL)
    assert not repeated_window(_distinct_lines(40), OFFICIAL)


def test_repeated_block_only_in_long_responses():
    block = "".join(chr(97 + (i * 5) % 26) for i in range(50))
    filler = _distinct_lines(200)
    assert len(filler) > 5000
    long_text = filler + block * 3
    assert repeated_block(long_text, OFFICIAL)
    assert not repeated_block(filler + block * 2 + "#" + block, OFFICIAL)  # not three in a row
    short = _distinct_lines(10) + block * 3
    assert len(short) <= 5000 and not repeated_block(short, OFFICIAL)
    assert repeated_block(short, FilterRules.from_config({"long_response_chars": 100}))


def test_rules_take_config_thresholds():
    rules = FilterRules.from_config({"min_line_chars": 4, "line_repeats": 2})
    assert repeated_line("abcd\nabcd", rules) and not repeated_line("abcd\nabcd", OFFICIAL)


@pytest.mark.parametrize("text, finish, reason", [
    ("1 + 2 = 3\n" + BOX, "stop", None),
    ("1 + 2 = 3\n" + BOX, "length", "truncated"),
    ("1 + 2 = 3\nThe answer is 3.", "stop", "no_boxed_answer"),
    ("The answer is \\boxed{3", "stop", "no_boxed_answer"),           # cut-off box
    ("\n".join(["this line is long enough"] * 5) + "\n" + BOX, "stop", "repeated_line"),
])
def test_reject_reason(text, finish, reason):
    assert reject_reason(text, finish, OFFICIAL) == reason


def test_filter_rows_counts_and_keeps_in_order():
    rows = [
        # prompt 0: first sample truncated, second fine, third fine (keep_per_prompt 1)
        (0, 0, 0, "2 + 2 = 4\n\\boxed{4", "length"),
        (0, 0, 1, "2 + 2 = 4\n\\boxed{4}", "stop"),
        (0, 0, 2, "2 + 2 = 4 again\n\\boxed{4}", "stop"),
        # prompt 1: no box on attempt 0, accepted on the retry
        (1, 0, 0, "no answer here", "stop"),
        (1, 1, 0, "3 + 3 = 6\n\\boxed{6}", "stop"),
        # prompt 2: only a degenerate response
        (2, 0, 0, "\n".join(["repeat repeat repeat!"] * 6) + "\n\\boxed{1}", "stop"),
    ]
    df = pd.DataFrame(rows, columns=["prompt_id", "attempt", "sample", "response", "finish_reason"])
    df["prompt"] = [f"problem {p}" for p in df["prompt_id"]]
    df["response_tokens"] = 5
    kept, stats = filter_rows(df.iloc[::-1], {"template": "{problem} Q", "keep_per_prompt": 1,
                                              "filters": {}})
    assert [k["prompt_id"] for k in kept] == [0, 1]
    assert kept[0]["messages"] == [{"role": "user", "content": "problem 0 Q"},
                                   {"role": "assistant", "content": "2 + 2 = 4\n\\boxed{4}"}]
    assert stats["responses"] == 6 and stats["accepted"] == 3 and stats["sft_examples"] == 2
    assert stats["dropped"] == {"truncated": 1, "no_boxed_answer": 1, "repeated_line": 1,
                                "repeated_window": 0, "repeated_block": 0}
    assert stats["prompts_without_data"] == 1 and stats["prompts_retried"] == 1
