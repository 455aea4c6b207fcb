"""Tiny-models table and orderings check, from fixture model cards."""

from __future__ import annotations

import json

import pytest

from opd.stages.tiny.tiny_models_table import main, run_checks


def card(name, probe, easy, hard, chain=1.0, seconds=12.3):
    return {"model": name,
            "recipe": {"role": name, "pattern": "chain" if chain else "tally",
                       "difficulty": [1, 3], "parameters": 1000, "train_seconds": seconds},
            "probe": {"accuracy": probe, "easy_accuracy": easy, "hard_accuracy": hard,
                      "triple_accuracy": hard,
                      "by_difficulty": {"1": easy, "5": hard}},
            "patterns": {"chain": chain, "tally": 1 - chain, "none": 0.0},
            "benchmarks": {"aime24": {"accuracy": hard}}}


CARDS = {"s": card("s", 0.4, 0.6, 0.1), "t": card("t", 0.6, 0.7, 0.5, chain=0.0)}


@pytest.mark.parametrize("check, holds", [
    ({"a": "t", "b": "s", "metric": "probe_hard", "op": ">"}, True),
    ({"a": "t", "b": "s", "metric": "probe_all", "op": "<"}, False),
    ({"a": "t", "b": "s", "metric": "probe_easy", "op": "~", "tol": 0.1}, True),
    ({"a": "t", "b": "s", "metric": "probe_easy", "op": "~", "tol": 0.05}, False),
    ({"a": "t", "b": "s", "metric": "pattern_tally", "op": ">"}, True),
])
def test_checks(check, holds):
    (result,) = run_checks(CARDS, [{"claim": "c", **check}])
    assert result["holds"] is holds


def test_unknown_model_in_a_check():
    with pytest.raises(KeyError, match="unknown model"):
        run_checks(CARDS, [{"claim": "c", "a": "x", "b": "s", "metric": "probe_all", "op": ">"}])


def test_tables_are_identical_whatever_the_timings(tmp_path):
    outs = []
    for k, seconds in enumerate((1.0, 99.0)):
        paths = []
        for name, c in CARDS.items():
            p = tmp_path / f"{k}_{name}.json"
            p.write_text(json.dumps({**c, "recipe": {**c["recipe"], "train_seconds": seconds}}))
            paths.append(str(p))
        md, csv, chk = (tmp_path / f"{k}.md", tmp_path / f"{k}.csv", tmp_path / f"{k}.json")
        main(["--cards", *paths, "--md", str(md), "--csv", str(csv), "--checks", str(chk),
              "--params", json.dumps([{"claim": "c", "a": "t", "b": "s",
                                       "metric": "probe_hard", "op": ">"}])])
        outs.append((md.read_bytes(), csv.read_bytes()))
    assert outs[0] == outs[1]
    assert b"| t | t | tally | 1-3 | 1000 | 0.600 |" in outs[0][0]
    assert json.loads(chk.read_text())["all_hold"] is True
