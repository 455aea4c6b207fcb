"""Benchmark: the tiny pipeline end to end from a clean copy, and a no-op rerun.

Copies the workflow (Snakefile, rules, schema, configs, envs) into a scratch directory, runs
``snakemake --cores all`` there (every stage, nothing cached), then runs it again with
everything up to date. Targets: <= 10 minutes end to end and <= 5 seconds for the no-op.

    python benchmarks/pipeline_wall_time.py [--cores all]

Writes results/benchmarks/pipeline_wall_time.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(cmd: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    return time.perf_counter() - t0, proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cores", default="all")
    ap.add_argument("--out", type=Path, default=REPO / "results/benchmarks")
    ap.add_argument("--keep", type=Path, default=None,
                    help="run in this (new) directory and keep it, e.g. to compare two runs")
    args = ap.parse_args()
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.keep:
            args.keep.mkdir(parents=True)
            work = args.keep
        for item in ("Snakefile", "workflow", "config", "envs"):
            src = REPO / item
            (shutil.copytree if src.is_dir() else shutil.copy)(src, work / item)
        full, proc = run([snakemake, "--cores", args.cores], work)
        if proc.returncode != 0:
            raise SystemExit(f"pipeline failed:\n{proc.stderr[-3000:]}")
        noop, proc2 = run([snakemake, "--cores", args.cores], work)
        jobs = sum(1 for ln in proc.stderr.splitlines() if ln.startswith("Finished jobid"))
    result = {"cores": args.cores, "cpu_count": os.cpu_count(), "jobs": jobs,
              "end_to_end_seconds": round(full, 1), "noop_rerun_seconds": round(noop, 2),
              "noop_nothing_to_do": "Nothing to be done" in proc2.stdout + proc2.stderr,
              "targets": {"end_to_end_seconds": 600, "noop_rerun_seconds": 5}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pipeline_wall_time.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "pipeline_wall_time.md").write_text(
        "| benchmark | jobs | end to end | no-op rerun | targets |\n|---|---|---|---|---|\n"
        f"| tiny pipeline, {os.cpu_count()} cores | {jobs} | {full / 60:.1f} min | {noop:.1f} s | "
        "<= 10 min, <= 5 s |\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
