"""Evaluation arithmetic (avg@n, pass@n and the summary) against hand counts."""

from __future__ import annotations

import pytest

from opd.stages.eval.evaluate import avg_at_n, pass_at_n, summarise
from opd.train.generation import Completion


def test_avg_and_pass_at_n():
    correct = [[True, False, False, False], [False] * 4, [True] * 4]
    assert avg_at_n(correct) == pytest.approx(5 / 12)
    assert pass_at_n(correct) == pytest.approx(2 / 3)
    assert avg_at_n([]) == 0.0 and pass_at_n([]) == 0.0


def test_summary_counts():
    texts = [["\\boxed{1}", "no answer"], ["\\boxed{2}", "\\boxed{3"]]
    finish = [["stop", "stop"], ["stop", "length"]]
    comps = [[Completion(t, f, 10, 4 + i) for i, (t, f) in enumerate(zip(ts, fs))]
             for ts, fs in zip(texts, finish)]
    correct = [[True, False], [False, False]]
    patterns = [["chain", None], ["tally", "chain"]]
    s = summarise(correct, comps, patterns)
    assert s["problems"] == 2 and s["samples_per_problem"] == 2
    assert s["avg_at_n"] == 0.25 and s["pass_at_n"] == 0.5
    assert s["solved_by_none"] == 1 and s["solved_by_all"] == 0
    assert s["mean_response_tokens"] == 4.5
    assert s["format_error_rate"] == 0.5      # "no answer" and the cut-off box
    assert s["truncated_rate"] == 0.25
    assert s["pattern_share"] == {"chain": 0.5, "other": 0.25, "tally": 0.25}


def test_a_thinking_model_is_prompted_in_thinking_mode(small_world, small_tokenizer, tmp_path,
                                                      monkeypatch):
    """models.<name>.thinking reaches the prompt: the chat template's thinking mode."""
    import json

    from transformers import AutoTokenizer

    from opd.stages.eval import evaluate
    from opd.train.generation import Completion

    tok = AutoTokenizer.from_pretrained(small_tokenizer)
    seen = []

    class Engine:
        name = "fake"

        def generate(self, prompts, sampling):
            seen.extend(prompts)
            return [[Completion("\\boxed{0}", "stop", 1, 1)] * sampling.n for _ in prompts]

    monkeypatch.setattr(evaluate, "make_engine", lambda *a, **k: (Engine(), tok))
    params = {"n": 1, "temperature": 0.7, "top_p": 0.95, "max_new_tokens": 4, "seed": 0,
              "template": "{problem}", "engine": "transformers", "batch_size": 8,
              "tensor_parallel_size": 1, "patterns": False}
    bench = {"path": str(small_world / "aime24.parquet"), "problem_field": "problem",
             "answer_field": "answer"}
    for thinking in (False, True):
        seen.clear()
        model = json.dumps({"name": "m", "path": str(small_tokenizer), "thinking": thinking})
        evaluate.main(["--model", model, "--benchmarks", json.dumps({"aime24": bench}),
                       "--out-dir", str(tmp_path), "--params", json.dumps(params)])
        assert all(("<think>" in p) is (not thinking) for p in seen), seen[0]


def test_benchmarks_sampled_in_one_pass_are_written_each_to_its_own_files(
        small_world, small_tokenizer, tmp_path, monkeypatch):
    """One generate call for every benchmark; each file holds its own problems, in order."""
    import json

    import pandas as pd
    from transformers import AutoTokenizer

    from opd.stages.eval import evaluate

    tok = AutoTokenizer.from_pretrained(small_tokenizer)
    fields = {"aime24": "problem", "amc23": "question"}
    frames = {b: pd.read_parquet(small_world / f"{b}.parquet") for b in fields}
    # the fake model answers every aime24 problem right and every amc23 problem wrong
    truth = {}
    for b, df in frames.items():
        for q, a in zip(df[fields[b]], df["answer"]):
            truth[q] = a if b == "aime24" else str(int(a) + 1)
    calls = []

    class Engine:
        name = "fake"

        def generate(self, prompts, sampling):
            calls.append(len(prompts))
            answer = [next(v for q, v in truth.items() if q in p) for p in prompts]
            return [[Completion(f"\\boxed{{{a}}}", "stop", 1, 1)] * sampling.n for a in answer]

    monkeypatch.setattr(evaluate, "make_engine", lambda *a, **k: (Engine(), tok))
    params = {"n": 3, "temperature": 0.7, "top_p": 0.95, "max_new_tokens": 4, "seed": 0,
              "template": "{problem}", "engine": "transformers", "batch_size": 8,
              "tensor_parallel_size": 1, "patterns": False}
    specs = {b: {"path": str(small_world / f"{b}.parquet"), "problem_field": f,
                 "answer_field": "answer"} for b, f in fields.items()}
    evaluate.main(["--model", str(small_tokenizer), "--benchmarks", json.dumps(specs),
                   "--out-dir", str(tmp_path), "--params", json.dumps(params)])
    assert calls == [sum(len(df) for df in frames.values())]
    for b, df in frames.items():
        rows = pd.read_parquet(tmp_path / f"{b}.parquet")
        summary = json.loads((tmp_path / f"{b}.json").read_text())
        assert len(rows) == 3 * len(df) and summary["problems"] == len(df)
        assert rows["gold"].tolist() == [a for a in df["answer"] for _ in range(3)]
        assert summary["benchmark"] == b
        assert summary["avg_at_n"] == (1.0 if b == "aime24" else 0.0)
