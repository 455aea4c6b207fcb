"""Prompt sets for OPD: DAPO flattening and teacher-aligned prompt selection."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from opd.stages.data import prepare_dapo, select_prompts
from opd.core.data import DataError
from opd.core.schemas import DAPO, DAPO_PREFIX, DAPO_SUFFIX


def dapo_row(problem: str, answer: str, index: int) -> dict:
    return {"data_source": "math_dapo", "ability": "MATH",
            "prompt": [{"role": "user", "content": DAPO_PREFIX + problem + DAPO_SUFFIX}],
            "reward_model": {"ground_truth": answer, "style": "rule-lighteval/MATH_v2"},
            "extra_info": {"index": str(index)}}


@pytest.fixture
def dapo_file(tmp_path):
    rows = [dapo_row("What is 1+1?", "2", 0), dapo_row("What is  1+1?", "2", 1),   # a repeat
            dapo_row("What is 2+3?", "5", 2), dapo_row("Find x if x-4=0.", "4", 3)]
    path = tmp_path / "dapo.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=DAPO), path)
    return path


def test_dapo_is_flattened_unwrapped_and_deduplicated(dapo_file, tmp_path):
    out, stats = tmp_path / "p.parquet", tmp_path / "p.json"
    prepare_dapo.main(["--source", json.dumps({"path": str(dapo_file)}), "--out", str(out),
                       "--stats", str(stats), "--params", json.dumps({"n": None, "seed": 0, "on_bad_row": "fail"})])
    df = pd.read_parquet(out)
    assert df["prompt"].tolist() == ["What is 1+1?", "What is 2+3?", "Find x if x-4=0."]
    assert df["answer"].tolist() == ["2", "5", "4"]
    assert df["row"].tolist() == [0, 2, 3]
    assert json.loads(stats.read_text()) == {"rows_in": 4, "bad_rows_skipped": 0,
                                             "repeats_dropped": 1, "prompts_out": 3}


def test_dapo_sample_is_seeded_and_keeps_file_order(dapo_file):
    spec = {"path": str(dapo_file)}
    a, _ = prepare_dapo.flatten(spec, {"n": 2, "seed": 3, "on_bad_row": "fail"})
    b, _ = prepare_dapo.flatten(spec, {"n": 2, "seed": 3, "on_bad_row": "fail"})
    assert a.equals(b) and a.num_rows == 2
    assert a.column("row").to_pylist() == sorted(a.column("row").to_pylist())


def test_dapo_bad_row_names_the_field(tmp_path):
    rows = [dapo_row("What is 1+1?", "2", 0), dapo_row("What is 2+2?", "4", 1)]
    rows[1]["prompt"] = []
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=DAPO), path)
    with pytest.raises(DataError, match=r"row 1: field 'prompt'"):
        prepare_dapo.flatten({"path": str(path)}, {"n": None, "seed": 0, "on_bad_row": "fail"})
    table, stats = prepare_dapo.flatten({"path": str(path)}, {"n": None, "seed": 0,
                                                              "on_bad_row": "skip"})
    assert table.num_rows == 1 and stats["bad_rows_skipped"] == 1


def test_rank_keeps_scores_at_threshold_best_first_stably():
    scored = pd.DataFrame({"prompt": list("abcde"), "score": [0.5, 0.25, 0.75, 0.5, 1.0]})
    kept = select_prompts.rank(scored, 0.5, None)
    # Plain re-derivation: filter, then order by score descending, ties in input order.
    ref = sorted([(s, i, p) for i, (p, s) in enumerate(zip(scored.prompt, scored.score)) if s >= 0.5],
                 key=lambda t: (-t[0], t[1]))
    assert kept["prompt"].tolist() == [p for _, _, p in ref] == ["e", "c", "a", "d"]
    assert select_prompts.rank(scored, 0.5, 2)["prompt"].tolist() == ["e", "c"]


class Oracle:
    """An engine stand-in: answers a prompt correctly on the first k of n samples."""

    name = "oracle"

    def __init__(self, right: dict[str, int]):
        self.right = right

    def generate(self, prompts, sampling, progress=True):
        from opd.train.generation import Completion

        out = []
        for p in prompts:
            key = next(k for k in self.right if k in p)
            k = self.right[key]
            out.append([Completion(text=f"\\boxed{{{'ok' if j < k else 'no'}}}", finish_reason="stop",
                                   prompt_tokens=1, response_tokens=1) for j in range(sampling.n)])
        return out


def test_select_scores_teacher_minus_student(tmp_path, monkeypatch):
    prompts = pd.DataFrame({"prompt": ["alpha", "beta", "gamma", "delta"],
                            "answer": ["ok", "ok", "ok", None]})
    path = tmp_path / "prompts.parquet"
    prompts.to_parquet(path)
    teacher = {"alpha": 4, "beta": 3, "gamma": 1, "delta": 4}
    student = {"alpha": 4, "beta": 0, "gamma": 0, "delta": 0}

    class Tok:
        def apply_chat_template(self, msgs, **kw):
            return msgs[0]["content"]

    def fake_engine(requested, model, **kw):
        return Oracle(teacher if model == "T" else student), Tok()

    monkeypatch.setattr(select_prompts, "make_engine", fake_engine)
    monkeypatch.setattr(select_prompts, "chat_prompt", lambda tok, text, thinking=False: text)
    cfg = {"engine": "transformers", "batch_size": 4, "tensor_parallel_size": 1, "seed": 0,
           "n": 4, "temperature": 0.7, "top_p": 0.95, "max_new_tokens": 8,
           "template": "{problem}", "min_score": 0.25, "max_prompts": None,
           "prompts": "p", "teacher": "T", "student": "S"}
    kept, stats = select_prompts.select({"path": str(path)}, "T", "S", cfg)
    # teacher - student: alpha 0, beta 0.75, gamma 0.25; delta has no answer.
    assert kept["prompt"].tolist() == ["beta", "gamma"]
    assert kept["score"].tolist() == [0.75, 0.25]
    assert stats["without_answer"] == 1 and stats["kept"] == 2
    only_teacher, _ = select_prompts.select({"path": str(path)}, "T", None,
                                            {**cfg, "min_score": 0.75})
    assert only_teacher["prompt"].tolist() == ["alpha", "beta"]
    with pytest.raises(DataError, match="lower select.min_score"):
        select_prompts.select({"path": str(path)}, "T", "S", {**cfg, "min_score": 0.9})
