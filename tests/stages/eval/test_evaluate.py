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
