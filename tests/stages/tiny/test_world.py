"""The tiny world: real HF column types, planted duplicates, answers, determinism."""

from __future__ import annotations

import json
import re

import datasets
import pyarrow.parquet as pq
import pytest
from datasets import Features, List, Value

from opd.stages.tiny.build_tiny_world import build
from opd.core.grading import is_correct, last_boxed

from conftest import SMALL_WORLD

# Feature types as published on the datasets' hub cards (written out here independently of
# opd.core.schemas, so a drift in either shows up).
TURN = {"from": Value("string"), "value": Value("string")}
EXPECTED = {
    "openthoughts": Features({"difficulty": Value("int64"), "source": Value("string"),
                              "domain": Value("string"), "conversations": List(TURN)}),
    "dapo": Features({"data_source": Value("string"),
                      "prompt": List({"content": Value("string"), "role": Value("string")}),
                      "ability": Value("string"),
                      "reward_model": {"ground_truth": Value("string"), "style": Value("string")},
                      "extra_info": {"index": Value("string")}}),
    "deepmath": Features({"question": Value("string"), "final_answer": Value("string"),
                          "difficulty": Value("float64"), "topic": Value("string"),
                          "r1_solution_1": Value("string"), "r1_solution_2": Value("string"),
                          "r1_solution_3": Value("string")}),
    "aime24": Features({"id": Value("int64"), "problem": Value("string"),
                        "solution": Value("string"), "answer": Value("string"),
                        "url": Value("string"), "year": Value("string")}),
    "aime25": Features({"problem": Value("string"), "answer": Value("string"),
                        "id": Value("string")}),
    "amc23": Features({"id": Value("int64"), "question": Value("string"),
                       "answer": Value("string")}),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_schema_round_trip(small_world, name):
    ds = datasets.Dataset.from_parquet(str(small_world / f"{name}.parquet"))
    assert ds.features == EXPECTED[name]
    # and back: the rows re-encode under the published features without loss
    again = datasets.Dataset.from_list(ds.to_list(), features=EXPECTED[name])
    assert again.to_list() == ds.to_list()


def test_row_counts(small_world):
    manifest = json.loads((small_world / "manifest.json").read_text())["rows"]
    w = SMALL_WORLD
    assert manifest["openthoughts"] == (w["openthoughts_math"] + w["openthoughts_nonmath"]
                                        + w["openthoughts_duplicates"])
    assert manifest["dapo"] == w["dapo"]
    assert manifest["deepmath"] == (w["deepmath"] + w["deepmath_exact_dups"]
                                    + w["deepmath_paraphrase_dups"])
    assert manifest["aime24"] == w["benchmarks"]["aime24"]


def test_openthoughts_has_math_and_other_domains(small_world):
    t = pq.read_table(small_world / "openthoughts.parquet").to_pandas()
    assert set(t["domain"]) == {"math", "code", "science"}
    convs = t["conversations"]
    assert all([turn["from"] for turn in c] == ["human", "gpt"] for c in convs)


def test_dapo_carries_real_instruction_wrapper(small_world):
    t = pq.read_table(small_world / "dapo.parquet").to_pylist()
    for row in t:
        content = row["prompt"][0]["content"]
        assert content.startswith("Solve the following math problem step by step. The last line")
        assert content.endswith('Remember to put your answer on its own line after "Answer:".')
        assert row["prompt"][0]["role"] == "user"
        assert row["reward_model"]["style"] == "rule-lang"


def _steps(question: str) -> list[tuple[str, str]]:
    """The (operation, operand) steps written in a problem's text, e.g. ("*", "3")."""
    return re.findall(r"([+\-*])(\d+)", question)


def _evaluate(question: str) -> int:
    """Independent solver: the start number, then the ops list (+a, -b, *c) in order."""
    ops = _steps(question)
    start = int(re.search(r"\d+", question).group())
    value = start
    for op, b in ops:
        value = {"+": value + int(b), "-": value - int(b), "*": value * int(b)}[op]
    return value


def test_answers_are_correct_and_math_verify_checkable(small_world):
    for name, q, a in [("aime24", "problem", "answer"), ("amc23", "question", "answer")]:
        for row in pq.read_table(small_world / f"{name}.parquet").to_pylist():
            assert int(row[a]) == _evaluate(row[q])
            assert is_correct(f"so \\boxed{{{row[a]}}}", row[a])
    for row in pq.read_table(small_world / "deepmath.parquet").to_pylist():
        for k in (1, 2, 3):
            assert last_boxed(row[f"r1_solution_{k}"]) == row["final_answer"]


def test_planted_duplicates_recorded_outside_the_data(small_world):
    deep = pq.read_table(small_world / "deepmath.parquet").to_pylist()
    dapo = pq.read_table(small_world / "dapo.parquet").to_pylist()
    planted = pq.read_table(small_world / "deepmath_planted.parquet").to_pylist()
    assert {"kind", "dapo_row"}.isdisjoint(deep[0])
    kinds = [p["kind"] for p in planted]
    assert kinds.count("exact") == SMALL_WORLD["deepmath_exact_dups"]
    assert kinds.count("paraphrase") == SMALL_WORLD["deepmath_paraphrase_dups"]
    for p in planted:
        q = deep[p["deepmath_row"]]["question"]
        content = dapo[p["dapo_row"]]["prompt"][0]["content"]
        inner = content.split("\n\n")[1]  # DAPO prefix \n\n problem \n\n suffix
        assert deep[p["deepmath_row"]]["final_answer"] == dapo[p["dapo_row"]]["reward_model"]["ground_truth"]
        if p["kind"] == "exact":
            assert inner in q
        else:
            assert inner not in q and _evaluate(q) == _evaluate(inner)


def test_deterministic_bytes(small_world, tmp_path):
    build(tmp_path, SMALL_WORLD)
    for f in sorted(small_world.iterdir()):
        assert (tmp_path / f.name).read_bytes() == f.read_bytes(), f.name


def test_seed_changes_the_world(small_world, tmp_path):
    build(tmp_path, {**SMALL_WORLD, "seed": SMALL_WORLD["seed"] + 1})
    assert (tmp_path / "dapo.parquet").read_bytes() != (small_world / "dapo.parquet").read_bytes()


def _benchmark_questions(world) -> dict[str, list[str]]:
    fields = {"aime24": "problem", "aime25": "problem", "amc23": "question"}
    return {name: [row[f] for row in pq.read_table(world / f"{name}.parquet").to_pylist()]
            for name, f in fields.items()}


def test_benchmarks_span_the_trained_levels(small_world):
    spans = {name: {len(_steps(q)) for q in qs}
             for name, qs in _benchmark_questions(small_world).items()}
    assert spans == {"aime24": {2, 3}, "aime25": {2, 3}, "amc23": {1, 2, 3}}


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_triple_share_of_multi_step_problems(tmp_path, share):
    build(tmp_path, {**SMALL_WORLD, "triple_share": share,
                     "benchmarks": {"aime24": 120, "aime25": 120, "amc23": 120}})
    questions = [q for qs in _benchmark_questions(tmp_path).values() for q in qs]
    deepmath = pq.read_table(tmp_path / "deepmath.parquet").to_pylist()
    questions += [row["question"] for row in deepmath]
    multi = [q for q in questions if len(_steps(q)) >= 2]
    with_triple = sum(("*", "3") in _steps(q) for q in multi) / len(multi)
    # drawn among the *3 problems with probability `share`, by chance otherwise (about 1 in 8)
    chance = 0.125
    expected = share + (1 - share) * chance
    assert abs(with_triple - expected) < 0.08, (with_triple, expected)
    if share == 1.0:
        assert with_triple == 1.0
