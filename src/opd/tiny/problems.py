"""The tiny synthetic math world: problems, phrasings and the two thinking patterns.

A problem is a start value followed by a chain of integer operations, e.g. 7 then +5, -4, *2.
Its difficulty is the number of operations. Values stay in [0, MAX_VALUE] so a tiny model can
learn every arithmetic fact it needs. Problems are framed as short word problems drawn from
disjoint pools of *scenarios* and *frames*, so that different datasets look different to a
sentence-embedding model, while a planted paraphrase of a problem stays close to its original.

Two thinking patterns solve the same problem with visibly different token sequences:
- ``chain``:  "7 + 5 = 12" lines, then "The answer is \\boxed{16}."
- ``tally``:  "start: 7", "add 5 -> 12", ..., then "Final: \\boxed{16}"
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

MAX_VALUE = 30
MAX_DIFFICULTY = 5
PATTERNS = ("chain", "tally")
OPS = ("+", "-", "*")
STEP = re.compile(r"\d+[-+*]\d|[-+*]\d?")   # "+", "*2", "1*3" (see sample_problem)

# (subject, unit, context) -- three pools so datasets draw from disjoint scenarios.
SCENARIOS: dict[str, list[tuple[str, str, str]]] = {
    "story": [
        ("a baker", "loaves", "over the morning"),
        ("a farmer", "sheep", "during the season"),
        ("a librarian", "books", "through the week"),
        ("a fisherman", "fish", "on the boat trip"),
        ("a gardener", "tulips", "across the spring"),
        ("a shopkeeper", "candles", "before the holiday"),
        ("a collector", "stamps", "at the fair"),
        ("a beekeeper", "hives", "over the summer"),
        ("a potter", "bowls", "in the workshop"),
        ("a courier", "parcels", "along the route"),
        ("a chef", "eggs", "during dinner service"),
        ("a teacher", "pencils", "in the classroom"),
        ("a zookeeper", "penguins", "at the enclosure"),
        ("a sailor", "ropes", "on the voyage"),
        ("a painter", "brushes", "in the studio"),
        ("a miner", "crystals", "inside the cave"),
    ],
    "abstract": [
        ("x", "", ""),
        ("n", "", ""),
        ("a_0", "", ""),
        ("t", "", ""),
        ("k", "", ""),
        ("m", "", ""),
    ],
    "contest": [
        ("a frog", "lily pads", "in the pond"),
        ("a robot", "coins", "on the grid"),
        ("a train", "passengers", "along the line"),
        ("a wizard", "potions", "in the tower"),
        ("a knight", "arrows", "on the quest"),
        ("an astronaut", "samples", "on the moon base"),
        ("a dragon", "gems", "in the lair"),
        ("a pirate", "doubloons", "on the island"),
    ],
}

OP_WORDS = {"+": "add", "-": "sub", "*": "times"}


@dataclass(frozen=True)
class Problem:
    """A start value and a chain of (op, operand) steps."""

    start: int
    ops: tuple[tuple[str, int], ...]

    @property
    def difficulty(self) -> int:
        return len(self.ops)

    def values(self) -> list[int]:
        """Running values: the start, then the value after each step."""
        out = [self.start]
        for op, b in self.ops:
            out.append(_apply(out[-1], op, b))
        return out

    @property
    def answer(self) -> int:
        return self.values()[-1]

    def ops_text(self) -> str:
        return ", ".join(f"{op}{b}" for op, b in self.ops)

    @property
    def triples(self) -> bool:
        """Whether a step multiplies by 3 (the new capability; the student gets it right one time
        in ten)."""
        return ("*", 3) in self.ops


def _apply(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    raise ValueError(f"unknown operation {op!r}")


def doubled_triples(problem: Problem, rng: random.Random, right_share: float
                    ) -> list[int] | None:
    """Running values of ``problem`` where each ``*3`` step is solved right with probability
    ``right_share`` and otherwise doubled (``x * 3 = 2x``, the later steps continuing from the
    wrong value); None when a later value leaves [0, MAX_VALUE]."""
    written = tuple(("*", 2) if step == ("*", 3) and rng.random() >= right_share else step
                    for step in problem.ops)
    out = Problem(problem.start, written).values()
    return out if all(0 <= v <= MAX_VALUE for v in out) else None


def _legal_steps(value: int, allowed: tuple[str, ...] = OPS) -> list[tuple[str, int]]:
    steps = [("+", b) for b in range(1, 10) if value + b <= MAX_VALUE]
    steps += [("-", b) for b in range(1, 10) if value - b >= 0]
    steps += [("*", b) for b in (2, 3) if value * b <= MAX_VALUE and value > 0]
    return [(op, b) for op, b in steps
            if op in allowed or f"{op}{b}" in allowed or f"{value}{op}{b}" in allowed]


def sample_problem(rng: random.Random, difficulty: int,
                   allowed: tuple[str, ...] = OPS) -> Problem:
    """A random problem with ``difficulty`` operations whose values stay in range, using only
    the ``allowed`` steps: an operation (``"*"``), one operation and operand (``"*2"``) or one
    fact, an operation and operand from one value (``"1*3"``: tripling 1, no other tripling).
    ``+`` and ``-`` must be allowed, so that every value has a legal step."""
    if not 1 <= difficulty <= MAX_DIFFICULTY:
        raise ValueError(f"difficulty must be in 1..{MAX_DIFFICULTY}, got {difficulty}")
    if not {"+", "-"} <= set(allowed) or not all(STEP.fullmatch(a) for a in allowed):
        raise ValueError(f"allowed steps must include + and - and each be an operation of "
                         f"{OPS} with an optional operand and value (\"*\", \"*2\", \"1*3\"), "
                         f"got {allowed}")
    value = rng.randint(1, 9)
    start, ops = value, []
    for _ in range(difficulty):
        op, b = rng.choice(_legal_steps(value, allowed))
        ops.append((op, b))
        value = _apply(value, op, b)
    return Problem(start, tuple(ops))


# ---------------------------------------------------------------- problem text
def _noun(unit: str) -> str:
    return f" {unit}" if unit else ""


def render(problem: Problem, scenario: tuple[str, str, str], frame: int) -> str:
    """Word-problem text of ``problem`` in one of the frames (see FRAMES)."""
    subject, unit, context = scenario
    s, ops, n = problem.start, problem.ops_text(), _noun(unit)
    what = f"how many{n}" if unit else "what value"
    frames = [
        # story frames (DAPO / OpenThoughts)
        f"{subject.capitalize()} starts with {s}{n}. {context.capitalize()} the changes are {ops}. "
        f"At the end, {what} does {subject} have?",
        f"{subject.capitalize()} has {s}{n} at first, and {context} the following changes happen "
        f"in order: {ops}. Find {what} {subject} has at the end.",
        # abstract frames (DeepMath)
        f"Let {subject} = {s}. For each operation in the list [{ops}], replace {subject} by the "
        f"result of applying it. Compute the final integer {subject}.",
        f"Evaluate the integer obtained from {s} under the successive maps [{ops}] applied to "
        f"{subject}. Express the result as a single integer.",
        # contest frames (benchmarks)
        f"Initially {subject} {context} has {s}{n}. The moves {ops} are made one after another. "
        f"Compute the final {'number of' + n if unit else 'value'}.",
        f"{context.capitalize()}, {subject} begins with {s}{n}; then the steps {ops} occur. "
        f"What is the final {'count of' + n if unit else 'value'}?",
    ]
    return frames[frame]


def paraphrase(problem: Problem, scenario: tuple[str, str, str], frame: int) -> str:
    """A reworded version of ``render(problem, scenario, frame)`` for a story frame."""
    subject, unit, context = scenario
    s, ops, n = problem.start, problem.ops_text(), _noun(unit)
    what = f"how many{n}" if unit else "what value"
    if frame == 0:
        return (f"Beginning with {s}{n}, {subject} sees the changes {ops} {context}. "
                f"In the end, {what} does {subject} have?")
    return (f"At first {subject} has {s}{n}. {context.capitalize()} these changes happen in "
            f"order: {ops}. What is {what} {subject} has at the end?")


FRAME_POOLS = {"story": (0, 1), "abstract": (2, 3), "contest": (4, 5)}


# ---------------------------------------------------------------- solutions
def solution(problem: Problem, pattern: str, values: list[int] | None = None) -> str:
    """Step-by-step solution text in the given thinking pattern; ``values`` (the start, then
    the value after each step) replaces the right ones, to write a solution with mistakes."""
    vals = problem.values() if values is None else values
    if len(vals) != problem.difficulty + 1:
        raise ValueError(f"values must hold the start and one value per step "
                         f"({problem.difficulty + 1}), got {len(vals)}")
    if pattern == "chain":
        lines = [f"{a} {op} {b} = {c}" for (op, b), a, c in zip(problem.ops, vals, vals[1:])]
        lines.append(f"The answer is \\boxed{{{vals[-1]}}}.")
    elif pattern == "tally":
        lines = [f"start: {vals[0]}"]
        lines += [f"{OP_WORDS[op]} {b} -> {c}" for (op, b), c in zip(problem.ops, vals[1:])]
        lines.append(f"Final: \\boxed{{{vals[-1]}}}")
    else:
        raise ValueError(f"unknown thinking pattern {pattern!r}; expected one of {PATTERNS}")
    return "\n".join(lines)


def detect_pattern(response: str) -> str | None:
    """Which thinking pattern a response follows, judged by its first line."""
    first = response.lstrip().split("\n", 1)[0]
    if first.startswith("start:"):
        return "tally"
    if " = " in first or first.startswith("The answer is"):
        return "chain"
    return None
