"""Group tables, claims over seeds and figures from fixture metrics (numbers worked out by
hand)."""

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


SEEDS = (0, 1, 2)


@pytest.fixture()
def results(tmp_path):
    """Three seeds of two experiments; good's overlap is 0.01 x seed higher in every step."""
    root = tmp_path / "results"
    paths = {"metrics": {}, "evals": {}}
    for seed in SEEDS:
        runs = {"good": _metrics([o + 0.01 * seed for o in (0.6, 0.6, 0.7, 0.8, 0.9, 0.9)],
                                 [0.95] * 6, 0.5),
                "bad": _metrics([0.3, 0.2, 0.1, 0.1, 0.1, 0.1], [0.5] * 6, 0.1)}
        for name, lines in runs.items():
            path = root / "opd" / name / f"seed{seed}" / "metrics.jsonl"
            path.parent.mkdir(parents=True)
            path.write_text("".join(json.dumps(ln) + "\n" for ln in lines))
            paths["metrics"].setdefault(name, {})[str(seed)] = str(path)
    evals = {"s": {"b1": _summary(10, 4, 0.25, 0.5), "b2": _summary(30, 4, 0.5, 0.8)}}
    for seed in SEEDS:
        evals[f"good/seed{seed}"] = {"b1": _summary(10, 4, 0.5, 0.6), "b2": _summary(30, 4, 0.5, 0.9)}
        evals[f"bad/seed{seed}"] = {"b1": _summary(10, 4, 0.0, 0.0), "b2": _summary(30, 4, 0.1, 0.2)}
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
     "metric": "shared_mass_student_final", "op": ">="},
    {"claim": "good ends at 0.9", "a": "good", "b": None, "value": 0.9,
     "metric": "overlap_ratio_final", "op": "~", "tol": 0.005}]}}


def test_pooled_accuracy_weights_by_samples():
    s = {"b1": _summary(10, 4, 0.25, 0.5), "b2": _summary(30, 4, 0.5, 0.8)}
    assert pooled_accuracy(s) == pytest.approx((40 * 0.25 + 120 * 0.5) / 160)
    assert pooled_accuracy(s, "pass_at_n") == pytest.approx((40 * 0.5 + 120 * 0.8) / 160)


def test_claims_pair_seeds_of_both_experiments():
    rows = {"x": {"0": {"m": 0.5}, "1": {"m": 0.7}, "2": {"m": 0.9}},
            "y": {"1": {"m": 0.5}, "2": {"m": 0.8}, "3": {"m": 0.0}}}
    out = check_claim({"claim": "c", "a": "x", "b": "y", "metric": "m", "op": ">"}, rows)
    # the seeds both ran: 1 and 2
    assert out["seeds"] == [1, 2]
    assert out["values_a"] == [0.7, 0.9] and out["values_b"] == [0.5, 0.8]
    fixed = check_claim({"claim": "c", "a": "y", "b": None, "value": 0.5, "metric": "m",
                         "op": ">="}, rows)
    assert fixed["values_b"] == [0.5, 0.5, 0.5]


def test_tables_from_fixture_metrics(results, tmp_path):
    out = tmp_path / "tables"
    tables_main(["--groups", json.dumps(GROUPS), "--experiments", json.dumps(EXPERIMENTS),
                 "--metrics", json.dumps(results["metrics"]), "--evals",
                 json.dumps(results["evals"]), "--out", str(out), "--window", "2"])
    df = pd.read_csv(out / "pattern.csv").set_index(["experiment", "seed"])
    assert len(df) == 6
    assert df.loc[("good", 0), "overlap_ratio_initial"] == pytest.approx(0.6)
    assert df.loc[("good", 2), "overlap_ratio_initial"] == pytest.approx(0.62)
    assert df.loc[("good", 0), "overlap_ratio_final"] == pytest.approx(0.9)
    assert df.loc[("good", 0), "overlap_change"] == pytest.approx(0.3)
    # every mechanism metric has its change, end minus start (reverse KL here is 1 - overlap)
    assert df.loc[("good", 1), "reverse_kl_change"] == pytest.approx(-0.3)
    assert df.loc[("good", 0), "entropy_gap_change"] == pytest.approx(0.0)
    assert df.loc[("bad", 0), "overlap_ratio_initial"] == pytest.approx(0.25)
    student = (40 * 0.25 + 120 * 0.5) / 160
    assert df.loc[("good", 0), "accuracy_student"] == pytest.approx(student)
    assert df.loc[("good", 0), "accuracy_final"] == pytest.approx(0.5)
    assert df.loc[("bad", 2), "accuracy_delta"] == pytest.approx((40 * 0 + 120 * 0.1) / 160 - student)
    assert df.loc[("good", 0), "b2_pass"] == pytest.approx(0.9)
    assert df.loc[("good", 0), "variant"] == "full"
    assert not any(c.startswith("stray") for c in df.columns)
    md = (out / "pattern.md").read_text()
    assert md.startswith("# Pattern") and "| good starts higher |" in md
    # good's start overlap over seeds: 0.60, 0.61, 0.62 -> 0.610 ± t(0.975, 2) x 0.01 / sqrt(3)
    assert "0.610 ± 0.025" in md
    claims = json.loads((out / "claims.json").read_text())
    assert claims["seeds"] == [0, 1, 2]
    verdicts = [c["verdict"] for c in claims["claims"]]
    # differences per seed: 0.35/0.36/0.37 > 0; bad's delta < 0 on every seed; 0.05 above 0.9
    # on every seed; 0.00/0.01/0.02 from 0.9, whose interval (+-0.025) reaches past tol 0.005
    assert verdicts == ["holds", "does not hold", "holds", "inconclusive"]
    assert claims["claims"][0]["difference"]["mean"] == pytest.approx(0.36)
    summary = (out / "README.md").read_text()
    rows = [ln for ln in summary.splitlines() if ln.startswith("| [Pattern]")]
    assert [r.rsplit("|", 2)[-2].strip(" *") for r in rows] == verdicts
    # each seed's own difference next to the verdict: good's start (0.6 + 0.01 x seed) minus
    # bad's (mean of 0.3 and 0.2 over the first two steps)
    assert rows[0].rsplit("|", 3)[-3].strip() == "0: +0.350; 1: +0.360; 2: +0.370"
    assert "| 0: +0.350; 1: +0.360; 2: +0.370 | holds |" in md
    assert "Verdicts: 2 holds, 1 does not hold, 1 inconclusive." in summary


def test_figures_are_written_and_reproducible(results, tmp_path):
    args = ["--groups", json.dumps(GROUPS), "--metrics", json.dumps(results["metrics"]), "--out",
            str(tmp_path / "a"), "--long-horizon", "good", "--window", "2"]
    figures_main(args)
    first = (tmp_path / "a/pattern.png").read_bytes()
    assert first[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "a/long_horizon_good.png").stat().st_size > 1000
    figures_main(args)
    assert (tmp_path / "a/pattern.png").read_bytes() == first


def test_panel_metrics_come_from_the_first_and_last_panel_lines(tmp_path):
    from opd.stages.report.opd_tables import experiment_row

    lines = _metrics([0.6, 0.7, 0.8, 0.9], [0.95] * 4, 0.5)
    lines[0].update({"panel/overlap_ratio": 0.5, "panel/teacher_p_at_max_student": 0.90})
    lines[-1].update({"panel/overlap_ratio": 0.75, "panel/teacher_p_at_max_student": 0.93})
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(ln) + "\n" for ln in lines))
    summary = {"b1": _summary(10, 4, 0.5, 0.5)}
    for model in ("s", "run"):
        (tmp_path / model).mkdir()
        (tmp_path / model / "b1.json").write_text(json.dumps(summary["b1"]))
    evals = {m: {"b1": str(tmp_path / m / "b1.json")} for m in ("s", "run")}
    row = experiment_row("run", EXPERIMENTS["good"], path, evals, window=2)
    assert row["panel_overlap_ratio_initial"] == pytest.approx(0.5)
    assert row["panel_overlap_change"] == pytest.approx(0.25)
    assert row["panel_teacher_p_at_max_student_change"] == pytest.approx(0.03)
    # the window metrics are unaffected: first two steps 0.6, 0.7
    assert row["overlap_ratio_initial"] == pytest.approx(0.65)
    # a metric the panel did not log, and a run without a panel: undefined
    assert row["panel_entropy_gap_change"] != row["panel_entropy_gap_change"]
    path.write_text("".join(json.dumps(ln) + "\n" for ln in _metrics([0.6] * 4, [0.9] * 4, 0.5)))
    bare = experiment_row("run", EXPERIMENTS["good"], path, evals, window=2)
    assert bare["panel_overlap_change"] != bare["panel_overlap_change"]


def test_claim_on_a_missing_metric_names_it():
    rows = {"x": {"0": {"panel_overlap_change": float("nan")},
                  "1": {"panel_overlap_change": 0.1}}}
    claim = {"claim": "rises", "a": "x", "b": None, "value": 0.0,
             "metric": "panel_overlap_change", "op": ">"}
    with pytest.raises(SystemExit, match=r"panel_overlap_change of x is missing .*seed\(s\) 0.*"
                                         r"panel_prompts"):
        check_claim(claim, rows)
