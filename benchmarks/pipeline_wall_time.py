"""Benchmark: the tiny pipeline end to end from a clean copy, with one seed and with the default
three, and a no-op rerun.

Copies the workflow (Snakefile, rules, schema, configs, envs) into a scratch directory, runs
``snakemake --cores all`` there (every stage, nothing cached) with ``--config 'seeds=[0]'``,
then in a second clean copy with the default seeds, then again with everything up to date.
Targets: <= 10 minutes with one seed, <= 20 minutes with three, <= 5 seconds for the no-op.

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
TARGETS = {"one_seed_seconds": 600, "default_seeds_seconds": 1200, "noop_rerun_seconds": 5}


def run(cmd: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    return time.perf_counter() - t0, proc


def clean_run(work: Path, snakemake: str, cores: str, extra: list[str]
              ) -> tuple[float, int, subprocess.CompletedProcess]:
    """Every stage of the tiny pipeline in a fresh copy of the workflow: seconds and jobs."""
    work.mkdir(parents=True)
    for item in ("Snakefile", "workflow", "config", "envs"):
        src = REPO / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / item)
    seconds, proc = run([snakemake, "--cores", cores, *extra], work)
    if proc.returncode != 0:
        raise SystemExit(f"pipeline failed in {work}:\n{proc.stderr[-3000:]}")
    jobs = sum(1 for ln in proc.stderr.splitlines() if ln.startswith("Finished jobid"))
    return seconds, jobs, proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cores", default="all")
    ap.add_argument("--out", type=Path, default=REPO / "results/benchmarks")
    ap.add_argument("--keep", type=Path, default=None,
                    help="run in this (new) directory and keep the runs, e.g. to compare them")
    args = ap.parse_args()
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        one, one_jobs, _ = clean_run(root / "one_seed", snakemake, args.cores,
                                     ["--config", "seeds=[0]"])
        full, jobs, _ = clean_run(root / "default_seeds", snakemake, args.cores, [])
        noop, proc = run([snakemake, "--cores", args.cores], root / "default_seeds")
    result = {"cores": args.cores, "cpu_count": os.cpu_count(),
              "one_seed_jobs": one_jobs, "one_seed_seconds": round(one, 1),
              "default_seeds_jobs": jobs, "default_seeds_seconds": round(full, 1),
              "noop_rerun_seconds": round(noop, 2),
              "noop_nothing_to_do": "Nothing to be done" in proc.stdout + proc.stderr,
              "targets": TARGETS,
              "met": {k: result_s <= TARGETS[k] for k, result_s in
                      (("one_seed_seconds", one), ("default_seeds_seconds", full),
                       ("noop_rerun_seconds", noop))}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pipeline_wall_time.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "pipeline_wall_time.md").write_text(
        "| tiny pipeline, clean | jobs | wall time | target |\n|---|---|---|---|\n"
        f"| one seed | {one_jobs} | {one / 60:.1f} min | <= 10 min |\n"
        f"| default seeds (3) | {jobs} | {full / 60:.1f} min | <= 20 min |\n"
        f"| no-op rerun | 0 | {noop:.1f} s | <= 5 s |\n\n"
        f"{os.cpu_count()} cores, snakemake --cores {args.cores}.\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
