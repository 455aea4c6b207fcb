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
        evaluate.main(["--model", model, "--benchmark", json.dumps(bench),
                       "--out", str(tmp_path / "e.parquet"), "--summary", str(tmp_path / "e.json"),
                       "--params", json.dumps(params)])
        assert all(("<think>" in p) is (not thinking) for p in seen), seen[0]
