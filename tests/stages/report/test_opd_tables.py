"""Group tables, claims and figures from fixture metrics (numbers worked out by hand)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from opd.stages.report.opd_figures import main as figures_main
from opd.stages.report.opd_tables import check_claim, main as tables_main, pooled_accuracy

EXPERIMENTS = {"good": {"student": "s", "teacher": "t1", "opd": {"variant": "full"}},
               "bad": {"student": "s", "teacher": "t2", "opd": {}}}


def _metrics(overlaps, shared, acc):
    lines = []
    for step, (o, m) in enumerate(zip(overlaps, shared)):
        lines.append({"step": step, "overlap_ratio": o, "shared_mass_student": m,
                      "entropy_gap": -0.1, "overlap_advantage": -0.5, "reverse_kl": 1.0 - o,
                      "accuracy": acc, "buckets": [
                          {"bucket": 0, "start": 0, "tokens": 10, "overlap_ratio": o,
                           "shared_mass_student": m, "entropy_gap": -0.1,
                           "overlap_advantage": -0.5, "reverse_kl": 1.0 - o},
                          {"bucket": 1, "start": 16, "tokens": 4, "overlap_ratio": o / 2,
                           "shared_mass_student": m, "entropy_gap": -0.2,
                           "overlap_advantage": float("nan"), "reverse_kl": 1.0}]})
    return lines


def _summary(problems, n, avg, pas):
    return {"problems": problems, "samples_per_problem": n, "avg_at_n": avg, "pass_at_n": pas}


@pytest.fixture()
def results(tmp_path):
    root = tmp_path / "results"
    runs = {"good": _metrics([0.6, 0.6, 0.7, 0.8, 0.9, 0.9], [0.95] * 6, 0.5),
            "bad": _metrics([0.3, 0.2, 0.1, 0.1, 0.1, 0.1], [0.5] * 6, 0.1)}
    for name, lines in runs.items():
        (root / "opd" / name).mkdir(parents=True)
        (root / "opd" / name / "metrics.jsonl").write_text(
            "".join(json.dumps(ln) + "\n" for ln in lines))
    evals = {"s": {"b1": _summary(10, 4, 0.25, 0.5), "b2": _summary(30, 4, 0.5, 0.8)},
             "good": {"b1": _summary(10, 4, 0.5, 0.6), "b2": _summary(30, 4, 0.5, 0.9)},
             "bad": {"b1": _summary(10, 4, 0.0, 0.0), "b2": _summary(30, 4, 0.1, 0.2)}}
    paths = {"metrics": {name: str(root / "opd" / name / "metrics.jsonl") for name in runs},
             "evals": {}}
    for model, per in evals.items():
        (root / "eval" / model).mkdir(parents=True)
        for bench, s in per.items():
            (root / "eval" / model / f"{bench}.json").write_text(json.dumps(s))
            paths["evals"].setdefault(model, {})[bench] = str(root / "eval" / model / f"{bench}.json")
        # a file the rule does not declare is never read
        (root / "eval" / model / "stray.json").write_text("not json")
    return paths


GROUPS = {"pattern": {"title": "Pattern", "description": "d", "experiments": ["good", "bad"],
                      "per_position": True, "claims": [
    {"claim": "good starts higher", "a": "good", "b": "bad", "metric": "overlap_ratio_initial",
     "op": ">"},
    {"claim": "bad gains", "a": "bad", "b": None, "value": 0.0, "metric": "accuracy_delta",
     "op": ">"},
    {"claim": "good shared mass", "a": "good", "b": None, "value": 0.9,
     "metric": "shared_mass_student_final", "op": ">="}]}}


def test_pooled_accuracy_weights_by_samples():
    s = {"b1": _summary(10, 4, 0.25, 0.5), "b2": _summary(30, 4, 0.5, 0.8)}
    assert pooled_accuracy(s) == pytest.approx((40 * 0.25 + 120 * 0.5) / 160)
    assert pooled_accuracy(s, "pass_at_n") == pytest.approx((40 * 0.5 + 120 * 0.8) / 160)


def test_claims_of_a_table():
    rows = {"x": {"m": 0.5}, "y": {"m": 0.52}}
    assert check_claim({"a": "x", "b": "y", "metric": "m", "op": "~", "tol": 0.05}, rows)["holds"]
    assert not check_claim({"a": "x", "b": "y", "metric": "m", "op": ">"}, rows)["holds"]
    assert check_claim({"a": "x", "b": None, "value": 0.5, "metric": "m", "op": ">="},
                       rows)["holds"]


def test_tables_from_fixture_metrics(results, tmp_path):
    out = tmp_path / "tables"
    tables_main(["--groups", json.dumps(GROUPS), "--experiments", json.dumps(EXPERIMENTS),
                 "--metrics", json.dumps(results["metrics"]), "--evals",
                 json.dumps(results["evals"]), "--out", str(out), "--window", "2"])
    df = pd.read_csv(out / "pattern.csv").set_index("experiment")
    assert df.loc["good", "overlap_ratio_initial"] == pytest.approx(0.6)
    assert df.loc["good", "overlap_ratio_final"] == pytest.approx(0.9)
    assert df.loc["good", "overlap_change"] == pytest.approx(0.3)
    # every mechanism metric has its change, end minus start (reverse KL here is 1 - overlap)
    assert df.loc["good", "reverse_kl_change"] == pytest.approx(-0.3)
    assert df.loc["good", "entropy_gap_change"] == pytest.approx(0.0)
    assert df.loc["bad", "overlap_ratio_initial"] == pytest.approx(0.25)
    student = (40 * 0.25 + 120 * 0.5) / 160
    assert df.loc["good", "accuracy_student"] == pytest.approx(student)
    assert df.loc["good", "accuracy_final"] == pytest.approx(0.5)
    assert df.loc["bad", "accuracy_delta"] == pytest.approx((40 * 0 + 120 * 0.1) / 160 - student)
    assert df.loc["good", "b2_pass"] == pytest.approx(0.9)
    assert df.loc["good", "variant"] == "full"
    assert not any(c.startswith("stray") for c in df.columns)
    md = (out / "pattern.md").read_text()
    assert md.startswith("# Pattern") and "| good starts higher |" in md
    summary = (out / "README.md").read_text()
    rows = [ln for ln in summary.splitlines() if ln.startswith("| [Pattern]")]
    assert [r.rsplit("|", 2)[-2].strip() for r in rows] == ["yes", "**no**", "yes"]


def test_figures_are_written_and_reproducible(results, tmp_path):
    args = ["--groups", json.dumps(GROUPS), "--metrics", json.dumps(results["metrics"]), "--out",
            str(tmp_path / "a"), "--long-horizon", "good", "--window", "2"]
    figures_main(args)
    first = (tmp_path / "a/pattern.png").read_bytes()
    assert first[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "a/long_horizon_good.png").stat().st_size > 1000
    figures_main(args)
    assert (tmp_path / "a/pattern.png").read_bytes() == first
