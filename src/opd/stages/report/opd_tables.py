"""Result tables of the OPD experiments: one CSV and one Markdown file per group, and a
summary (``README.md``) that states each paper claim next to the measured numbers.

Per experiment the row holds the pair, the variant, the mechanism metrics at the start and the
end of training (each the mean over the first / last ``window`` steps, to smooth step noise),
and avg@n / pass@n per benchmark of the final student with the change against the student it
started from. Claims are data (config ``groups.<g>.claims``): a metric of experiment ``a``
compared with experiment ``b`` or with a fixed ``value``. The stage reads only the files the
rule declares: ``--metrics`` maps each experiment to its ``metrics.jsonl``, ``--evals`` each
evaluated model (experiments and their students) to its summary per benchmark.

    python -m opd.stages.report.opd_tables --groups '{...}' --experiments '{...}' \
        --metrics '{"exp": "results/opd/exp/metrics.jsonl"}' \
        --evals '{"exp": {"aime24": "results/eval/exp/aime24.json"}}' --out results/tables
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pandas as pd

from opd.core.claims import checked
from opd.core.io import atomic_path, write_text
from opd.core.logging import read_jsonl

MECHANISM = ("overlap_ratio", "shared_mass_student", "entropy_gap", "overlap_advantage",
             "teacher_p_at_max_student", "reverse_kl")


def pooled_accuracy(summaries: dict[str, dict[str, Any]], key: str = "avg_at_n") -> float:
    """A benchmark-pooled score, each benchmark weighted by its number of samples."""
    n = {b: s["problems"] * s["samples_per_problem"] for b, s in summaries.items()}
    return sum(s[key] * n[b] for b, s in summaries.items()) / max(1, sum(n.values()))


def window_mean(lines: list[dict[str, Any]], key: str) -> float:
    values = [ln[key] for ln in lines if ln.get(key) is not None]
    return sum(values) / len(values) if values else float("nan")


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
    for b in final:
        row[f"{b}_avg"] = final[b]["avg_at_n"]
        row[f"{b}_pass"] = final[b]["pass_at_n"]
    row["accuracy_student"] = pooled_accuracy(base)
    row["accuracy_final"] = pooled_accuracy(final)
    row["accuracy_delta"] = row["accuracy_final"] - row["accuracy_student"]
    row["pass_student"] = pooled_accuracy(base, "pass_at_n")
    row["pass_final"] = pooled_accuracy(final, "pass_at_n")
    return row


def check_claim(claim: dict[str, Any], rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    a = rows[claim["a"]][claim["metric"]]
    b = rows[claim["b"]][claim["metric"]] if claim.get("b") else claim["value"]
    return checked(claim, a, b)


def fmt(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def claim_cells(c: dict[str, Any]) -> str:
    """The "measured | holds" cells of a checked claim."""
    rhs = c["b"] if c.get("b") else "threshold"
    return (f"{c['metric']}: {c['a']} {fmt(c['measured_a'])} {c['op']} {rhs} "
            f"{fmt(c['measured_b'])} | {'yes' if c['holds'] else '**no**'}")


def group_markdown(title: str, description: str, df: pd.DataFrame,
                   checks: list[dict[str, Any]], benches: list[str]) -> str:
    cols = ["experiment", "student", "teacher", "overlap_ratio_initial", "overlap_ratio_final",
            "shared_mass_student_final", "entropy_gap_final", "reverse_kl_final"]
    cols += [c for b in benches for c in (f"{b}_avg", f"{b}_pass")]
    cols += ["accuracy_student", "accuracy_final", "accuracy_delta"]
    head = ["experiment", "student", "teacher", "overlap start", "overlap end",
            "shared mass end", "entropy gap end", "reverse KL end"]
    head += [h for b in benches for h in (f"{b} avg@n", f"{b} pass@n")]
    head += ["student avg@n", "final avg@n", "delta vs student"]
    out = [f"# {title}", "", description, "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in df.iterrows():
        out.append("| " + " | ".join(fmt(r[c]) for c in cols) + " |")
    out += ["", "Start / end: mean over the first / last steps of training. avg@n and pass@n: "
            "the final student on each benchmark; student/final avg@n pool all benchmarks.", ""]
    if checks:
        out += ["| claim | measured | holds |", "|---|---|---|"]
        out += [f"| {c['claim']} | {claim_cells(c)} |" for c in checks]
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", type=json.loads, required=True)
    ap.add_argument("--experiments", type=json.loads, required=True)
    ap.add_argument("--metrics", type=json.loads, required=True,
                    help="JSON: experiment -> its metrics.jsonl")
    ap.add_argument("--evals", type=json.loads, required=True,
                    help="JSON: model -> {benchmark: evaluation summary}")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--window", type=int, default=5)
    args = ap.parse_args(argv)
    names = sorted({e for g in args.groups.values() for e in g["experiments"]})
    rows = {n: experiment_row(n, args.experiments[n], Path(args.metrics[n]), args.evals,
                              args.window) for n in names}
    summary = ["# Paper claims, measured", "",
               "Each claim of the paper next to the measured numbers of this run. The tables of "
               "each group hold the full rows.", "",
               "| group | claim | measured | holds |", "|---|---|---|---|"]
    for gname, group in args.groups.items():
        df = pd.DataFrame([rows[e] for e in group["experiments"]])
        benches = sorted({c[:-4] for c in df.columns if c.endswith("_avg")})
        checks = [check_claim(c, rows) for c in group["claims"]]
        with atomic_path(args.out / f"{gname}.csv") as tmp:
            df.to_csv(tmp, index=False, float_format="%.6g")
        write_text(args.out / f"{gname}.md",
                   group_markdown(group["title"], group["description"], df, checks, benches))
        summary += [f"| [{group['title']}]({gname}.md) | {c['claim']} | {claim_cells(c)} |"
                    for c in checks]
    summary.append("")
    write_text(args.out / "README.md", "\n".join(summary))


if __name__ == "__main__":
    main()
