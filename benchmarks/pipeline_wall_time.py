"""Benchmark: the tiny pipeline end to end from a clean copy, with one seed and with the default
three, and a no-op rerun.

Copies the workflow (Snakefile, rules, schema, configs, envs) into a scratch directory, runs
``snakemake --cores all`` there (every stage, nothing cached) with ``--config 'seeds=[0]'``,
then in a second clean copy with the default seeds, then again with everything up to date.
Targets: <= 10 minutes with one seed, <= 20 minutes with three, <= 5 seconds for the no-op.
Each clean run's time is also taken apart by rule from its jobs' benchmark files
(``opd.core.job_times``): job-seconds per rule, and the least wall time those jobs allow on
the cores used.

    python benchmarks/pipeline_wall_time.py [--cores all]
    python benchmarks/pipeline_wall_time.py --breakdown RUN_DIR [--cores 2]   # a finished run

Writes results/benchmarks/pipeline_wall_time.json and .md (``--breakdown``:
pipeline_breakdown.md, nothing run).
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

from opd.core.job_times import by_rule, lower_bound, markdown, read_jobs

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


def core_count(cores: str) -> int:
    return (os.cpu_count() or 1) if cores == "all" else int(cores)


def startup_seconds(repeats: int = 3) -> float:
    """The median time a fresh Python takes to import a model stage (torch, transformers and
    the Qwen3 model code): what every job pays before it starts working."""
    times = [run([sys.executable, "-c", "import opd.stages.eval.evaluate"], REPO)[0]
             for _ in range(repeats)]
    return sorted(times)[len(times) // 2]


def startup_line(jobs: int, startup: float, cores: int) -> str:
    return (f"A model stage's Python start-up (torch, transformers, the Qwen3 code) takes "
            f"{startup:.1f} s; if all {jobs} jobs paid it, that would be "
            f"{jobs * startup / 60:.1f} job-minutes, {jobs * startup / cores / 60:.1f} min of "
            f"wall time on {cores} cores.\n")


def breakdown(run: Path, cores: int, wall: float | None) -> tuple[dict, str]:
    """Job-seconds per rule of the finished run in ``run`` and their lower bound on
    ``cores``: as JSON and as the Markdown table."""
    jobs = read_jobs(run / "results/logs")
    parts = {"job_seconds": round(sum(j.seconds for j in jobs), 1),
             "lower_bound_seconds": round(lower_bound(jobs, cores), 1),
             "by_rule": {r.rule: {"jobs": r.jobs, "seconds": round(r.seconds, 1)}
                         for r in by_rule(jobs)}}
    return parts, markdown(jobs, cores, wall)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cores", default="all")
    ap.add_argument("--breakdown", type=Path, default=None, metavar="RUN_DIR",
                    help="only take apart the time of a finished run in RUN_DIR (its "
                         "results/logs), with --cores the cores it ran on; runs nothing")
    ap.add_argument("--out", type=Path, default=REPO / "results/benchmarks")
    ap.add_argument("--keep", type=Path, default=None,
                    help="run in this (new) directory and keep the runs, e.g. to compare them")
    args = ap.parse_args()
    cores = core_count(args.cores)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.breakdown is not None:
        parts, table = breakdown(args.breakdown, cores, None)
        jobs = sum(r["jobs"] for r in parts["by_rule"].values())
        text = (f"Job times of the run in {args.breakdown}, by rule.\n\n{table}\n"
                + startup_line(jobs, startup_seconds(), cores))
        (args.out / "pipeline_breakdown.md").write_text(text)
        print(text)
        return
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        one, one_jobs, _ = clean_run(root / "one_seed", snakemake, args.cores,
                                     ["--config", "seeds=[0]"])
        one_parts, one_table = breakdown(root / "one_seed", cores, one)
        full, jobs, _ = clean_run(root / "default_seeds", snakemake, args.cores, [])
        full_parts, full_table = breakdown(root / "default_seeds", cores, full)
        noop, proc = run([snakemake, "--cores", args.cores], root / "default_seeds")
    startup = startup_seconds()
    result = {"cores": args.cores, "cpu_count": os.cpu_count(),
              "one_seed_jobs": one_jobs, "one_seed_seconds": round(one, 1),
              "default_seeds_jobs": jobs, "default_seeds_seconds": round(full, 1),
              "noop_rerun_seconds": round(noop, 2),
              "noop_nothing_to_do": "Nothing to be done" in proc.stdout + proc.stderr,
              "one_seed_breakdown": one_parts, "default_seeds_breakdown": full_parts,
              "job_startup_seconds": round(startup, 2),
              "targets": TARGETS,
              "met": {k: result_s <= TARGETS[k] for k, result_s in
                      (("one_seed_seconds", one), ("default_seeds_seconds", full),
                       ("noop_rerun_seconds", noop))}}
    (args.out / "pipeline_wall_time.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "pipeline_wall_time.md").write_text(
        "| tiny pipeline, clean | jobs | wall time | target |\n|---|---|---|---|\n"
        f"| one seed | {one_jobs} | {one / 60:.1f} min | <= 10 min |\n"
        f"| default seeds (3) | {jobs} | {full / 60:.1f} min | <= 20 min |\n"
        f"| no-op rerun | 0 | {noop:.1f} s | <= 5 s |\n\n"
        f"{os.cpu_count()} cores, snakemake --cores {args.cores}.\n\n"
        f"## Where the time went: one seed\n\n{one_table}\n"
        + startup_line(one_jobs, startup, cores)
        + f"\n## Where the time went: default seeds\n\n{full_table}\n"
        + startup_line(jobs, startup, cores))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
