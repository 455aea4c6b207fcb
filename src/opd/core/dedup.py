"""Text normalisation for deduplicating DeepMath-103K against DAPO-Math-17k.

DAPO wraps each problem in an instruction ("Solve the following math problem step by step.
The last line of your response should be of the form Answer: $Answer ..." + "Remember to put
your answer on its own line after "Answer:"."); re-packaged copies use boxed-answer suffixes
instead ("Please output the final answer within \\boxed{}.", sometimes with the unformatted
template braces "\\boxed{{}}"). DeepMath questions can carry "Problem:" labels or the same
boxed-answer instructions. Both sides are stripped of these wrappers and their whitespace is
collapsed, so that only the problem statement is compared.
"""

from __future__ import annotations

import re

_BOXED = r"\\boxed\{\{?\}\}?"
DAPO_PREFIX_RE = re.compile(
    r"^\s*Solve the following math problem step by step\.\s*The last line of your response "
    r"should be of the form Answer:\s*\$Answer \(without quotes\) where \$Answer is the answer "
    r"to the problem\.\s*")
PREFIX_RES = [
    DAPO_PREFIX_RE,
    re.compile(r"^\s*(?:Problem|Question)\s*:\s*", re.IGNORECASE),
]
SUFFIX_RES = [
    re.compile(r"\s*Remember to put your answer on its own line after \"Answer:\"\.?\s*$"),
    re.compile(r"\s*Please (?:output|put) (?:the|your) final answer within " + _BOXED
               + r"\.?\s*$"),
    re.compile(r"\s*Let's think step by step and output the final answer within " + _BOXED
               + r"\.?\s*$"),
    re.compile(r"\s*Please reason step by step, and put your final answer within " + _BOXED
               + r"\.?\s*$"),
]
_SPACE = re.compile(r"\s+")


def strip_wrappers(text: str) -> str:
    """Remove every known instruction prefix and suffix (repeatedly, for stacked wrappers)."""
    previous = None
    while previous != text:
        previous = text
        for rx in PREFIX_RES:
            text = rx.sub("", text, count=1)
        for rx in SUFFIX_RES:
            text = rx.sub("", text, count=1)
    return text


def normalise(text: str) -> str:
    """Problem statement only: wrappers stripped, whitespace collapsed to single spaces."""
    return _SPACE.sub(" ", strip_wrappers(text)).strip()


def dapo_problem(row: dict) -> str:
    """The user turn of a DAPO row (its ``prompt`` is a chat list)."""
    users = [m["content"] for m in row["prompt"] if m["role"] == "user"]
    return users[0] if users else row["prompt"][0]["content"]
