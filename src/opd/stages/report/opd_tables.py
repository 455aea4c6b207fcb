"""Result tables of the OPD experiments: one CSV and one Markdown file per group, and a
summary (``README.md``, ``claims.json``) that judges each paper claim over seeds.

Per run (an experiment trained with one seed) the row holds the pair, the variant, the
mechanism metrics at the start and the end of training (each the mean over the first / last
``window`` steps, to smooth step noise; with ``panel_`` in front: on the run's fixed panel,
before the first update and after the last, NaN for a run without one), and avg@n / pass@n
per benchmark of the final student with the change against the student it started from; the
positional metrics (reverse KL, overlap-token advantage) also at early (the first position
bucket) and late (every later bucket) response positions at the end of training. The Markdown tables show each column's
mean over seeds with its 95% interval; the CSV has one row per run. Claims are data (config
``groups.<g>.claims``): a metric of experiment ``a`` compared with experiment ``b`` (paired by
seed) or with a fixed ``value``, judged by ``opd.core.claims.judged``. The stage reads only the
files the rule declares: ``--metrics`` maps each experiment and seed to its ``metrics.jsonl``,
``--evals`` each evaluated model (runs ``<experiment>/seed<s>`` and their students) to its
summary per benchmark.

    python -m opd.stages.report.opd_tables --groups '{...}' --experiments '{...}' \
        --metrics '{"exp": {"0": "results/opd/exp/seed0/metrics.jsonl"}}' \
        --evals '{"exp/seed0": {"aime24": "results/eval/exp/seed0/aime24.json"}}' \
        --out results/tables
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pandas as pd

from opd.core.claims import FAILS, HOLDS, INCONCLUSIVE, interval, judged
from opd.core.io import atomic_path, write_text
from opd.core.logging import read_jsonl

NAN = float("nan")
MECHANISM = ("overlap_ratio", "shared_mass_student", "entropy_gap", "overlap_advantage",
             "teacher_p_at_max_student", "reverse_kl", "shared_mass_at_disagreement")
# metrics compared by response position (the long-horizon claims)
POSITIONAL = ("reverse_kl", "overlap_advantage")


def pooled_accuracy(summaries: dict[str, dict[str, Any]], key: str = "avg_at_n") -> float:
    """A benchmark-pooled score, each benchmark weighted by its number of samples."""
    n = {b: s["problems"] * s["samples_per_problem"] for b, s in summaries.items()}
    return sum(s[key] * n[b] for b, s in summaries.items()) / max(1, sum(n.values()))


def window_mean(lines: list[dict[str, Any]], key: str) -> float:
    values = [ln[key] for ln in lines if ln.get(key) is not None]
    return sum(values) / len(values) if values else float("nan")


def by_position(lines: list[dict[str, Any]], key: str) -> tuple[float, float]:
    """A metric at early and late response positions over some steps: the first position
    bucket, and the token-weighted mean of every later bucket (NaN where none has a value)."""
    sums = {"early": [0.0, 0.0], "late": [0.0, 0.0]}
    for ln in lines:
        for b in ln.get("buckets", []):
            value, tokens = b.get(key), b.get("tokens", 0)
            if value is None or value != value or not tokens:
                continue
            acc = sums["early" if b["start"] == 0 else "late"]
            acc[0] += value * tokens
            acc[1] += tokens
    early, late = (s[0] / s[1] if s[1] else float("nan") for s in sums.values())
    return early, late


def read_summaries(paths: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Evaluation summaries by benchmark, in benchmark order."""
    return {b: json.loads(Path(paths[b]).read_text()) for b in sorted(paths)}


def experiment_row(name: str, exp: dict[str, Any], metrics: Path,
                   evals: dict[str, dict[str, str]], window: int) -> dict[str, Any]:
    lines = read_jsonl(metrics)
    first, last = lines[:window], lines[-window:]
    final, base = read_summaries(evals[name]), read_summaries(evals[exp["student"]])
    row: dict[str, Any] = {
        "experiment": name, "student": exp["student"], "teacher": exp["teacher"],
        "variant": exp.get("opd", {}).get("variant", exp.get("variant", "")),
        "steps": len(lines),
    }
    for key in MECHANISM:
        row[f"{key}_initial"] = window_mean(first, key)
        row[f"{key}_final"] = window_mean(last, key)
        row[f"{key.removesuffix('_ratio')}_change"] = row[f"{key}_final"] - row[f"{key}_initial"]
    panel = [ln for ln in lines if any(k.startswith("panel/") for k in ln)]
    for key in MECHANISM:
        start, end = ((panel[0].get(f"panel/{key}", NAN), panel[-1].get(f"panel/{key}", NAN))
                      if len(panel) >= 2 else (NAN, NAN))
        row[f"panel_{key}_initial"], row[f"panel_{key}_final"] = start, end
        row[f"panel_{key.removesuffix('_ratio')}_change"] = end - start
    for key in POSITIONAL:
        early, late = by_position(last, key)
        row[f"{key}_early_final"], row[f"{key}_late_final"] = early, late
        row[f"{key}_late_minus_early_final"] = late - early
    for b in final:
        row[f"{b}_avg"] = final[b]["avg_at_n"]
        row[f"{b}_pass"] = final[b]["pass_at_n"]
    row["accuracy_student"] = pooled_accuracy(base)
    row["accuracy_final"] = pooled_accuracy(final)
    row["accuracy_delta"] = row["accuracy_final"] - row["accuracy_student"]
    row["pass_student"] = pooled_accuracy(base, "pass_at_n")
    row["pass_final"] = pooled_accuracy(final, "pass_at_n")
    return row


def run_rows(names: list[str], experiments: dict[str, Any], metrics: dict[str, dict[str, str]],
             evals: dict[str, dict[str, str]], window: int) -> dict[str, dict[str, dict[str, Any]]]:
    """Every run's row, by experiment and seed."""
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    for name in names:
        for seed, path in sorted(metrics[name].items(), key=lambda kv: int(kv[0])):
            run = f"{name}/seed{seed}"
            row = experiment_row(run, experiments[name], Path(path), evals, window)
            rows.setdefault(name, {})[seed] = {**row, "experiment": name, "seed": int(seed)}
    return rows


def claim_values(claim: dict[str, Any], rows: dict[str, dict[str, dict[str, Any]]]
                 ) -> tuple[list[str], list[float], list[float]]:
    """The seeds of a claim (those both experiments ran) and both sides, seed by seed (a fixed
    value stands on the right of every seed)."""
    a = rows[claim["a"]]
    seeds = sorted(set(a) & set(rows[claim["b"]]) if claim.get("b") else a, key=int)
    if not seeds:
        raise SystemExit(f"claim {claim['claim']!r}: {claim['a']} and {claim['b']} share no seed")
    left = [a[s][claim["metric"]] for s in seeds]
    right = [rows[claim["b"]][s][claim["metric"]] if claim.get("b") else claim["value"]
             for s in seeds]
    for side, values in (("a", left), ("b", right)):
        missing = [s for s, v in zip(seeds, values) if v != v]
        if missing:
            raise SystemExit(
                f"claim {claim['claim']!r}: {claim['metric']} of {claim[side]} is missing (NaN) "
                f"for seed(s) {', '.join(missing)}"
                + ("; panel_ metrics need opd.panel_prompts > 0 for the experiment"
                   if claim["metric"].startswith("panel_") else ""))
    return seeds, left, right


def check_claim(claim: dict[str, Any], rows: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """The judged claim (``opd.core.claims.judged``) with the seeds its values come from."""
    seeds, left, right = claim_values(claim, rows)
    return {**judged(claim, left, right), "seeds": [int(s) for s in seeds]}


def fmt(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def fmt_interval(values: list[float]) -> str:
    """``mean ± half-width`` of the 95% interval (just the mean for one value)."""
    if any(v != v for v in values):
        return "nan"
    iv = interval(values)
    return fmt(iv.mean) if iv.n == 1 else f"{iv.mean:.3f} ± {(iv.high - iv.low) / 2:.3f}"


def claim_cells(c: dict[str, Any]) -> str:
    """The "measured | difference | per seed | verdict" cells of a judged claim."""
    rhs = c["b"] if c.get("b") else "threshold"
    d = c["difference"]
    bounds = f"[{d['low']:+.3f}, {d['high']:+.3f}]" if d["n"] > 1 else "(one seed)"
    mark = c["verdict"] if c["verdict"] == HOLDS else f"**{c['verdict']}**"
    return (f"{c['metric']}: {c['a']} {fmt(c['mean_a'])} {c['op']} {rhs} {fmt(c['mean_b'])}"
            + (f" (tol {c['tol']})" if c.get("tol") is not None else "")
            + f" | {d['mean']:+.3f} {bounds} | {per_seed(c)} | {mark}")


def per_seed(c: dict[str, Any]) -> str:
    """Each seed's difference a - b, as ``seed: difference``."""
    return "; ".join(f"{s}: {a - b:+.3f}" for s, a, b in zip(c["seeds"], c["values_a"],
                                                              c["values_b"]))


TABLE = [("overlap_ratio_initial", "overlap start"), ("overlap_ratio_final", "overlap end"),
         ("shared_mass_student_final", "shared mass end"), ("entropy_gap_final", "entropy gap end"),
         ("reverse_kl_final", "reverse KL end"),
         ("shared_mass_at_disagreement_final", "shared mass where the argmaxes differ, end")]


def group_markdown(title: str, description: str, rows: dict[str, dict[str, dict[str, Any]]],
                   checks: list[dict[str, Any]], benches: list[str]) -> str:
    cols = list(TABLE) + [(f"{b}_{k}", f"{b} {k}@n") for b in benches for k in ("avg", "pass")]
    cols += [("accuracy_student", "student avg@n"), ("accuracy_final", "final avg@n"),
             ("accuracy_delta", "delta vs student")]
    head = ["experiment", "student", "teacher", "seeds"] + [h for _, h in cols]
    out = [f"# {title}", "", description, "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, per_seed in rows.items():
        first = next(iter(per_seed.values()))
        cells = [name, first["student"], first["teacher"], str(len(per_seed))]
        cells += [fmt_interval([r[c] for r in per_seed.values()]) for c, _ in cols]
        out.append("| " + " | ".join(cells) + " |")
    out += ["", "Each cell: the mean over seeds ± the half-width of its 95% interval (Student t). "
            "Start / end: mean over the first / last steps of training. avg@n and pass@n: the "
            "final student on each benchmark; student/final avg@n pool all benchmarks. "
            "One row per seed in the CSV file.", ""]
    if checks:
        out += ["| claim | measured (means) | difference a - b, 95% interval | a - b per seed "
                "| verdict |", "|---|---|---|---|---|"]
        out += [f"| {c['claim']} | {claim_cells(c)} |" for c in checks]
        out.append("")
    return "\n".join(out)


SUMMARY_HEAD = """# Paper claims, measured

Each claim of the paper, judged over {n} seed(s) ({seeds}). A claim compares a metric of
experiment a with experiment b (paired by seed) or with a fixed threshold. The verdict comes
from the 95% interval (Student t) of the per-seed difference a - b: **holds** when the whole
interval lies on the claimed side (for "~": within the tolerance), **does not hold** when it
lies wholly on the other side (outside the tolerance), **inconclusive** otherwise. Each seed's
own difference stands next to the interval: an inconclusive claim may still have every seed on
the claimed side, with too wide a spread for this many seeds. The table of each group holds its
runs.

Verdicts: {counts}.

| group | claim | measured (means) | difference a - b, 95% interval | a - b per seed | verdict |
|---|---|---|---|---|---|"""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", type=json.loads, required=True)
    ap.add_argument("--experiments", type=json.loads, required=True)
    ap.add_argument("--metrics", type=json.loads, required=True,
                    help="JSON: experiment -> {seed: its metrics.jsonl}")
    ap.add_argument("--evals", type=json.loads, required=True,
                    help="JSON: model -> {benchmark: evaluation summary}")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--window", type=int, default=5)
    args = ap.parse_args(argv)
    names = sorted({e for g in args.groups.values() for e in g["experiments"]})
    rows = run_rows(names, args.experiments, args.metrics, args.evals, args.window)
    all_checks, lines = [], []
    for gname, group in args.groups.items():
        group_rows = {e: rows[e] for e in group["experiments"]}
        df = pd.DataFrame([r for e in group_rows.values() for r in e.values()])
        df.insert(1, "seed", df.pop("seed"))
        benches = sorted({c[:-4] for c in df.columns if c.endswith("_avg")})
        checks = [check_claim(c, rows) for c in group["claims"]]
        with atomic_path(args.out / f"{gname}.csv") as tmp:
            df.to_csv(tmp, index=False, float_format="%.6g")
        write_text(args.out / f"{gname}.md",
                   group_markdown(group["title"], group["description"], group_rows, checks,
                                  benches))
        lines += [f"| [{group['title']}]({gname}.md) | {c['claim']} | {claim_cells(c)} |"
                  for c in checks]
        all_checks += [{"group": gname, **c} for c in checks]
    seeds = sorted({s for per in rows.values() for s in per}, key=int)
    counts = ", ".join(f"{sum(c['verdict'] == v for c in all_checks)} {v}"
                       for v in (HOLDS, FAILS, INCONCLUSIVE))
    head = SUMMARY_HEAD.format(n=len(seeds), seeds=", ".join(seeds), counts=counts)
    write_text(args.out / "README.md", "\n".join([head, *lines, ""]))
    write_text(args.out / "claims.json", json.dumps(
        {"seeds": [int(s) for s in seeds], "claims": all_checks}, indent=1, allow_nan=True) + "\n")
    print(f"{len(all_checks)} claims over {len(seeds)} seed(s): {counts}")


if __name__ == "__main__":
    main()
