"""Problem generator and the two thinking patterns, checked by independent arithmetic."""

from __future__ import annotations

import random
import re

import pytest

from opd.tiny.problems import (
    MAX_VALUE, PATTERNS, SCENARIOS, FRAME_POOLS, detect_pattern, paraphrase, render,
    sample_problem, solution,
)


@pytest.mark.parametrize("difficulty", [1, 2, 3, 4, 5])
def test_values_stay_in_range_and_difficulty_is_chain_length(difficulty):
    rng = random.Random(difficulty)
    for _ in range(300):
        p = sample_problem(rng, difficulty)
        assert len(p.ops) == difficulty
        assert all(0 <= v <= MAX_VALUE for v in p.values())


def test_bad_difficulty():
    with pytest.raises(ValueError, match="difficulty"):
        sample_problem(random.Random(0), 6)


def test_chain_solution_lines_are_true_equations():
    rng = random.Random(1)
    for _ in range(200):
        p = sample_problem(rng, rng.randint(1, 5))
        lines = solution(p, "chain").splitlines()
        assert len(lines) == p.difficulty + 1
        for line in lines[:-1]:
            a, op, b, eq, c = line.split()
            assert eq == "=" and eval(f"{a}{op}{b}") == int(c)  # noqa: S307 - digits only
        assert lines[-1] == f"The answer is \\boxed{{{p.answer}}}."


def test_tally_solution_tracks_the_same_values():
    rng = random.Random(2)
    words = {"add": "+", "sub": "-", "times": "*"}
    for _ in range(200):
        p = sample_problem(rng, rng.randint(1, 5))
        lines = solution(p, "tally").splitlines()
        value = int(lines[0].removeprefix("start: "))
        for line in lines[1:-1]:
            word, b, arrow, c = line.split()
            value = eval(f"{value}{words[word]}{b}")  # noqa: S307 - digits only
            assert arrow == "->" and value == int(c)
        assert lines[-1] == f"Final: \\boxed{{{value}}}" and value == p.answer


def test_patterns_are_told_apart():
    p = sample_problem(random.Random(3), 3)
    assert [detect_pattern(solution(p, pat)) for pat in PATTERNS] == list(PATTERNS)
    assert detect_pattern("I think it is 4") is None


def test_every_frame_states_the_start_and_the_ops():
    rng = random.Random(4)
    p = sample_problem(rng, 4)
    for pool, frames in FRAME_POOLS.items():
        for frame in frames:
            text = render(p, SCENARIOS[pool][0], frame)
            assert p.ops_text() in text and str(p.start) in text
    for frame in FRAME_POOLS["story"]:
        para = paraphrase(p, SCENARIOS["story"][0], frame)
        assert p.ops_text() in para and para != render(p, SCENARIOS["story"][0], frame)
    ops = re.findall(r"[+\-*]\d", p.ops_text())
    assert len(ops) == 4


def test_allowed_steps_restrict_the_operations():
    rng = random.Random(5)
    seen = set()
    for _ in range(400):
        p = sample_problem(rng, rng.randint(1, 5), ("+", "-", "*2"))
        for op, b in p.ops:
            seen.add(f"{op}{b}" if op == "*" else op)
        assert all(0 <= v <= MAX_VALUE for v in p.values())
    assert seen == {"+", "-", "*2"}          # doubling occurs, tripling never


def test_all_operations_allowed_is_the_default_stream():
    a = [sample_problem(random.Random(9), d) for d in range(1, 6)]
    b = [sample_problem(random.Random(9), d, ("+", "-", "*")) for d in range(1, 6)]
    assert a == b


def test_one_fact_allows_a_step_from_one_value_only():
    rng = random.Random(11)
    tripled_from = []
    for _ in range(2000):
        p = sample_problem(rng, rng.randint(1, 5), ("+", "-", "*2", "1*3"))
        vals = p.values()
        tripled_from += [a for (op, b), a in zip(p.ops, vals) if (op, b) == ("*", 3)]
        assert all(0 <= v <= MAX_VALUE for v in vals)
    assert tripled_from and set(tripled_from) == {1}


@pytest.mark.parametrize("allowed", [("+",), ("+", "-", "/"), ("*",), ("+", "-", "1*"),
                                     ("+", "-", "*3x"), ("+", "-", "x*3")])
def test_bad_allowed_steps(allowed):
    with pytest.raises(ValueError, match="allowed steps"):
        sample_problem(random.Random(0), 2, allowed)


def test_doubled_triples_keep_every_other_step_and_stay_in_range():
    from opd.tiny.problems import doubled_triples

    rng = random.Random(7)
    seen = {0.0: 0, 1.0: 0}
    for _ in range(300):
        p = sample_problem(rng, rng.randint(1, 4))
        for share in (0.0, 1.0):
            values = doubled_triples(p, random.Random(1), share)
            if share == 1.0:
                assert values == p.values()
            if values is None:
                continue
            seen[share] += 1
            value = p.start
            for (op, b), got in zip(p.ops, values[1:]):
                value = value * 2 if (op, b) == ("*", 3) and share == 0.0 else \
                    eval(f"{value}{op}{b}")  # noqa: S307 - digits only
                assert got == value
            lines = solution(p, "chain", values).splitlines()
            assert lines[-1] == f"The answer is \\boxed{{{values[-1]}}}."
    assert seen[0.0] > 100 and seen[1.0] == 300
    with pytest.raises(ValueError, match="one value per step"):
        solution(sample_problem(rng, 2), "chain", [1, 2])
