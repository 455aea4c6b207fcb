"""Tiny world: compare a cold-started (SFT) student with its base on the benchmarks.

Reads the evaluation summaries of both models (one per benchmark, written with ``patterns``)
and reports, pooled over the benchmarks with each weighted by its number of samples, the
accuracy (avg@n) and the share of responses in the teacher's thinking pattern. The cold start
did what it should when both are higher for the SFT student.

    python -m opd.stages.rollouts.cold_start_check --base a.json b.json --sft c.json d.json --pattern tally \
        --out results/sft/NAME/check.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from opd.core.io import write_json


def pooled(paths: list[Path], pattern: str) -> dict[str, Any]:
    samples = accuracy = share = 0.0
    per_benchmark = {}
    for path in paths:
        s = json.loads(path.read_text())
        n = s["problems"] * s["samples_per_problem"]
        if "pattern_share" not in s:
            raise SystemExit(f"{path}: no pattern_share (evaluate with evaluation.patterns: true)")
        p = s["pattern_share"].get(pattern, 0.0)
        per_benchmark[path.stem] = {"avg_at_n": s["avg_at_n"], "teacher_pattern_share": p}
        samples += n
        accuracy += s["avg_at_n"] * n
        share += p * n
    return {"model": json.loads(paths[0].read_text())["model"], "samples": int(samples),
            "avg_at_n": accuracy / samples, "teacher_pattern_share": share / samples,
            "benchmarks": per_benchmark}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, nargs="+", required=True)
    ap.add_argument("--sft", type=Path, nargs="+", required=True)
    ap.add_argument("--pattern", required=True, help="the teacher's thinking pattern")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    base, sft = pooled(args.base, args.pattern), pooled(args.sft, args.pattern)
    report = {
        "teacher_pattern": args.pattern, "base": base, "sft": sft,
        "adopts_teacher_pattern": sft["teacher_pattern_share"] > base["teacher_pattern_share"],
        "more_accurate": sft["avg_at_n"] > base["avg_at_n"],
    }
    write_json(args.out, report)
    print(json.dumps({k: v for k, v in report.items() if k not in ("base", "sft")}))


if __name__ == "__main__":
    main()
