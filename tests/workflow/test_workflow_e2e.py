"""The whole tiny pipeline through Snakemake, in a scratch copy of the workflow (slow)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import run_snakemake

pytestmark = pytest.mark.slow


def read_claims(run) -> dict:
    """The run's ``results/tables/claims.json``: its seeds and every claim with its verdict."""
    return json.loads((run / "results/tables/claims.json").read_text())


def test_every_model_has_a_card_and_the_table_exists(finished_run):
    cfg_models = ["base", "student", "teacher_strong", "teacher_long", "teacher_nonew",
                  "teacher_mismatch", "teacher_large", "teacher_template"]
    for m in cfg_models:
        card = json.loads((finished_run / f"results/models/tiny/{m}.card.json").read_text())
        assert set(card["benchmarks"]) == {"aime24", "aime25", "amc23"}
        assert 0.0 <= card["probe"]["accuracy"] <= 1.0
    table = pd.read_csv(finished_run / "results/tables/tiny_models.csv")
    assert sorted(table["model"]) == sorted(cfg_models)
    assert (finished_run / "results/tables/tiny_models.md").read_text().startswith("# Tiny models")


def test_dedup_recovers_the_planted_duplicates(finished_run):
    stats = json.loads((finished_run / "results/data/deepmath_dedup.stats.json").read_text())
    gt = stats["ground_truth"]
    assert gt["exact"]["recall"] == 1.0
    assert gt["semantic"]["precision"] >= 0.9 and gt["semantic"]["recall"] >= 0.9
    assert (finished_run / "results/tables/dedup.md").exists()


def test_intended_orderings_hold(finished_run):
    checks = json.loads((finished_run / "results/models/tiny/orderings.json").read_text())
    failing = [c["claim"] for c in checks["checks"] if not c["holds"]]
    assert checks["all_hold"], failing


def test_diagnosis_tells_compatible_from_mismatched_teacher(finished_run):
    strong = json.loads((finished_run / "results/diagnose/strong_teacher.json").read_text())
    mismatched = json.loads((finished_run / "results/diagnose/mismatched_teacher.json").read_text())
    assert mismatched["verdict"] == "thinking-pattern mismatch"
    assert strong["verdict"] != "thinking-pattern mismatch"
    assert strong["overlap_ratio"] > mismatched["overlap_ratio"] + 0.2
    # the paper's successful pairs hold 97-99% of the mass on shared tokens; how far below the
    # mismatched pair falls depends on the world's details (0.07 in the default tiny world), so
    # only the order is asserted
    assert strong["shared_mass_student"] > 0.97
    assert strong["shared_mass_student"] > mismatched["shared_mass_student"]
    # Whether the strong teacher also counts as bringing new capability is left out: it rests
    # on the few of 64 prompts the student fails (0.12 to 0.14 of them solved by the teacher,
    # against a threshold of 0.2), a noise-sized number on the tiny world.


def test_group_tables_figures_and_claims(finished_run):
    groups = ("thinking_pattern", "new_capability", "weak_to_strong", "objectives",
              "long_horizon", "rescue", "prompts", "template")
    for g in groups:
        df = pd.read_csv(finished_run / f"results/tables/{g}.csv")
        assert len(df) >= 2 and df["accuracy_final"].between(0, 1).all()
        assert (finished_run / f"results/tables/{g}.md").read_text().startswith("# ")
        png = (finished_run / f"results/figures/{g}.png").read_bytes()
        assert png[:4] == b"\x89PNG"
    for exp in ("strong_topk", "long_teacher"):
        assert (finished_run / f"results/figures/long_horizon_{exp}.png").exists()
    summary = (finished_run / "results/tables/README.md").read_text()
    claims = read_claims(finished_run)
    seeds = claims["seeds"]
    lines = [ln for ln in summary.splitlines() if ln.startswith("| [")]
    assert len(lines) == len(claims["claims"]) >= 10
    for line, claim in zip(lines, claims["claims"]):
        assert line.rstrip(" |").endswith((claim["verdict"], f"{claim['verdict']}**"))
        assert len(claim["values_a"]) == len(seeds)
    verdicts = {c["claim"]: c["verdict"] for c in claims["claims"]}
    # the robust findings hold with their intervals: the mechanism, and the outcomes whose
    # per-seed differences are several times their spread (a mismatched teacher collapses the
    # student; the cold start keeps it). Each one held on seeds 0-2 and 3-5 in the tiny worlds
    # of three machines (a CPU's arithmetic changes the built models; see docs/tiny-world.md),
    # and in the two worlds of a fourth built with the student that triples now and then,
    # where every assertion below held on a third seed set (6-8) too
    assert verdicts["the compatible teacher starts with higher overlap"] == "holds"
    assert verdicts["a successful run ends with shared mass >= 0.9"] == "holds"
    assert verdicts["the compatible teacher gives the better student"] == "holds"
    assert verdicts["the cold-started run gains more from OPD"] == "holds"
    assert verdicts["the cold start raises the initial overlap"] == "holds"
    # the strong teacher's tripling against a teacher that only saw the student's own data: a
    # gain several times its spread on every seed
    assert verdicts["the teacher with new capability gives the larger gain"] == "holds"
    # measured on the fixed panel, the rise holds on seeds 0-2 and 3-5 with its lower bound
    # well above 0
    assert verdicts["the successful run aligns on high-probability tokens (the teacher's "
                    "probability of the student's top shared token rises)"] == "holds"
    # in its own template the template teacher is compatible; in the default one, mismatched
    assert verdicts["the teacher-aligned template starts with higher overlap"] == "holds"
    # two teachers of one lineage, one grown larger, look alike to the strong student (the
    # difference is a tenth of the tolerance on two seed sets in one world, and within two
    # fifths of it, interval included, on both sets in another, and within a third of it in a
    # third)
    assert verdicts["the two teachers look alike to the strong student (initial overlap within "
                    "0.05)"] == "holds"
    # a teacher that knows what the student knows and continues chains past its three steps:
    # at the end of training the reverse KL after the first bucket of positions was 0.27 to
    # 0.56 above the first bucket's on every seed of 0-5 in one world and of 0-2 in a world
    # built from other seeds, the overlap-token advantage 0.02 to 0.04 below
    assert verdicts["at the end of training the reverse KL is higher at late response positions "
                    "than at early ones"] == "holds"
    assert verdicts["... and the overlap-token advantage lower"] == "holds"
    # a teacher trained further on the student's own data, tripling right as seldom as the
    # student: its runs gained -0.006 to +0.009 on every seed of 0-5 in two worlds, the second's
    # tokenizer trained on other texts
    assert verdicts["the teacher without new knowledge gives ~no gain (within 0.03)"] == "holds"
    pattern = pd.read_csv(finished_run / "results/tables/thinking_pattern.csv")
    assert sorted(set(pattern["seed"])) == seeds


def test_prompt_sets_for_the_prompt_group(finished_run):
    dapo = pd.read_parquet(finished_run / "results/data/dapo_prompts.parquet")
    assert len(dapo) == 400 and dapo["answer"].notna().all()
    assert not dapo["prompt"].str.contains("Answer:").any()       # DAPO's wrapper is stripped
    stats = json.loads((finished_run / "results/data/selected/strong_gain.stats.json").read_text())
    kept = pd.read_parquet(finished_run / "results/data/selected/strong_gain.parquet")
    assert 0 < len(kept) == stats["kept"] < stats["prompts_in"]
    assert (kept["teacher_accuracy"] - kept["student_accuracy"] >= 0.25).all()
    assert stats["teacher_accuracy_kept"] > stats["student_accuracy_kept"]


def test_opd_runs_log_every_step(finished_run):
    runs = sorted((finished_run / "results/opd/strong_teacher").glob("seed*"))
    assert len(runs) == len(read_claims(finished_run)["seeds"])
    experiments = yaml.safe_load((finished_run / "config/config.yaml").read_text())["experiments"]
    for exp in ("strong_teacher", "mismatched_teacher"):
        steps = experiments[exp]["steps"]
        for run in runs:
            lines = (finished_run / f"results/opd/{exp}/{run.name}/metrics.jsonl").read_text()
            assert [json.loads(ln)["step"] for ln in lines.splitlines()] == list(range(steps))
            assert (finished_run / f"results/opd/{exp}/{run.name}/final/model.safetensors").exists()
    # seeds draw different rollouts; the panel starts the same for every seed
    first = [json.loads((finished_run / f"results/opd/strong_teacher/{r.name}/metrics.jsonl")
                        .read_text().splitlines()[0]) for r in runs]
    assert len({json.dumps(ln, sort_keys=True) for ln in first}) == len(first)
    panels = [{k: v for k, v in ln.items() if k.startswith("panel/")} for ln in first]
    assert panels[0] and all(p == panels[0] for p in panels)


def test_mismatched_teacher_fails_while_compatible_teacher_stays_aligned(finished_run):
    def run(exp, seed):
        path = finished_run / f"results/opd/{exp}/{seed}/metrics.jsonl"
        return [json.loads(ln) for ln in path.read_text().splitlines()]

    mean = lambda lines, k: sum(ln[k] for ln in lines) / len(lines)  # noqa: E731
    # Only effects far outside one run's noise are asserted here, on every seed. The gains
    # and their differences are claims of the tables (results/tables/README.md), judged over
    # seeds with their intervals.
    table = pd.read_csv(finished_run / "results/tables/thinking_pattern.csv")
    seeds = read_claims(finished_run)["seeds"]
    for seed in [f"seed{s}" for s in seeds]:   # the seeds the tables were made from
        strong, mismatched = run("strong_teacher", seed), run("mismatched_teacher", seed)
        # the paper's successful runs hold 97-99% of the mass on shared tokens
        assert mean(strong, "shared_mass_student") > 0.97
        assert mean(strong, "shared_mass_student") > mean(mismatched, "shared_mass_student") + 0.05
        assert mean(strong, "overlap_ratio") > mean(mismatched, "overlap_ratio") + 0.1
        assert mean(strong[-5:], "reverse_kl") < mean(strong[:5], "reverse_kl")
        assert mean(strong[-5:], "reverse_kl") < mean(mismatched[-5:], "reverse_kl")
        # the mismatched teacher drives the student's accuracy down
        row = table[(table["experiment"] == "mismatched_teacher")
                    & (table["seed"] == int(seed.removeprefix("seed")))]
        assert row["accuracy_delta"].item() < -0.1


def test_cold_start_chain(finished_run):
    stats = json.loads((finished_run / "results/rollouts/mismatch_openthoughts/filter_stats.json")
                       .read_text())
    # how many responses a rule drops depends on the machine's numerics (a handful of 1,200);
    # every rule is pinned on planted responses in test_filters.py
    assert stats["sft_examples"] > 0
    assert stats["accepted"] + sum(stats["dropped"].values()) == stats["responses"]
    sft = pd.read_parquet(finished_run / "results/rollouts/mismatch_openthoughts/sft.parquet")
    assert len(sft) == stats["sft_examples"]
    assert [t["role"] for t in sft["messages"][0]] == ["user", "assistant"]
    check = json.loads((finished_run / "results/sft/base_sft/check.json").read_text())
    assert check["teacher_pattern"] == "tally"
    assert check["adopts_teacher_pattern"] and check["sft"]["teacher_pattern_share"] > 0.9
    assert 0.0 <= check["base"]["avg_at_n"] <= 1.0 and 0.0 <= check["sft"]["avg_at_n"] <= 1.0


def test_every_evaluation_has_a_summary(finished_run):
    n = yaml.safe_load((finished_run / "config/config.yaml").read_text())["evaluation"]["n"]
    for model in ("base", "student", "base_sft", "strong_teacher/seed0",
                  "cold_start_rescue/seed0"):
        for bench in ("aime24", "aime25", "amc23"):
            s = json.loads((finished_run / f"results/eval/{model}/{bench}.json").read_text())
            assert s["samples_per_problem"] == n and 0.0 <= s["avg_at_n"] <= s["pass_at_n"] <= 1.0
            rows = pd.read_parquet(finished_run / f"results/eval/{model}/{bench}.parquet")
            assert len(rows) == s["problems"] * n
            assert rows["correct"].mean() == pytest.approx(s["avg_at_n"])


def test_models_reload_offline_and_answer(finished_run):
    from opd.train.generation import Sampling, generate
    from opd.core.grading import is_correct
    from opd.core.prompts import EVAL_SUFFIX, chat_prompt

    path = finished_run / "results/models/tiny/teacher_strong"
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    from opd.tiny.problems import SCENARIOS, Problem, render

    problem = render(Problem(4, (("+", 3), ("*", 2))), SCENARIOS["contest"][1], 5)
    out = generate(model, tok, [chat_prompt(tok, problem + EVAL_SUFFIX)],
                   Sampling(max_new_tokens=40, temperature=0.0), progress=False)[0][0]
    assert is_correct(out.text, "14"), out.text


def test_report_collects_tables_and_figures(finished_run):
    proc = run_snakemake(["--report", "results/report.html"], finished_run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = (finished_run / "results/report.html").read_text(errors="replace")
    for name in ("thinking_pattern.md", "objectives.png", "tiny_models.md", "README.md"):
        assert name in html, name


def test_rerun_is_a_no_op(finished_run):
    proc = run_snakemake(["-n", "--quiet"], finished_run)
    assert proc.returncode == 0
    assert "Nothing to be done" in proc.stdout + proc.stderr
