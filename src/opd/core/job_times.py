"""Where a run's time went: every job's Snakemake benchmark file, summed by rule.

Each rule writes ``results/logs/<rule>/<wildcards>.benchmark.tsv`` (its ``benchmark:``
directive): one header line and one row per repeat, whose first column ``s`` is the job's
wall-clock seconds. A run on ``cores`` cores can take no less than its job-seconds over
``cores`` (every core busy all the time), and no less than its longest job; the rest of a
measured wall time is cores left idle while jobs wait on others.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SUFFIX = ".benchmark.tsv"


@dataclass(frozen=True)
class JobTime:
    rule: str
    job: str          # the wildcards part of the file name, e.g. strong_teacher/seed0
    seconds: float    # wall clock


@dataclass(frozen=True)
class RuleTime:
    rule: str
    jobs: int
    seconds: float
    mean_seconds: float
    max_seconds: float
    share: float      # of all job-seconds


def read_job(path: Path, logs: Path) -> JobTime:
    """One benchmark file (the mean over its rows, when a job was repeated)."""
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    if len(lines) < 2:
        raise ValueError(f"{path}: a benchmark file needs a header line and a row, "
                         f"found {len(lines)} line(s)")
    header = lines[0].split("\t")
    if header[0] != "s":
        raise ValueError(f"{path}: the first column is {header[0]!r}, expected 's' "
                         "(Snakemake's wall-clock seconds)")
    try:
        seconds = [float(ln.split("\t")[0]) for ln in lines[1:]]
    except ValueError:
        raise ValueError(f"{path}: column 's' holds a value that is not a number") from None
    rel = path.relative_to(logs).as_posix()[:-len(SUFFIX)]
    rule, _, job = rel.partition("/")
    return JobTime(rule=rule, job=job, seconds=sum(seconds) / len(seconds))


def read_jobs(logs: Path) -> list[JobTime]:
    """Every job's time under a run's log directory, in path order."""
    if not logs.is_dir():
        raise FileNotFoundError(f"{logs}: no such log directory (a finished run has "
                                "results/logs/<rule>/...benchmark.tsv)")
    return [read_job(p, logs) for p in sorted(logs.rglob(f"*{SUFFIX}"))]


def by_rule(jobs: list[JobTime]) -> list[RuleTime]:
    """Job-seconds per rule, most first."""
    total = sum(j.seconds for j in jobs)
    groups: dict[str, list[float]] = {}
    for j in jobs:
        groups.setdefault(j.rule, []).append(j.seconds)
    rows = [RuleTime(rule=r, jobs=len(s), seconds=sum(s), mean_seconds=sum(s) / len(s),
                     max_seconds=max(s), share=sum(s) / total if total else 0.0)
            for r, s in groups.items()]
    return sorted(rows, key=lambda r: (-r.seconds, r.rule))


def lower_bound(jobs: list[JobTime], cores: int) -> float:
    """The least wall time ``jobs`` could take on ``cores`` cores, each job on one core: all
    cores busy all the time, and never less than the longest job. A job that held several
    cores (a tiny build on two threads) counts its wall seconds once, so with such jobs the
    true least is somewhat higher."""
    if cores < 1:
        raise ValueError(f"cores must be at least 1, got {cores}")
    return max(sum(j.seconds for j in jobs) / cores, max((j.seconds for j in jobs), default=0.0))


def markdown(jobs: list[JobTime], cores: int, wall_seconds: float | None = None) -> str:
    """The per-rule table with the totals, and the wall time against its lower bound."""
    rows = by_rule(jobs)
    total = sum(r.seconds for r in rows)
    out = ["| rule | jobs | job-seconds | mean s | longest s | share |",
           "|---|---|---|---|---|---|"]
    out += [f"| {r.rule} | {r.jobs} | {r.seconds:.0f} | {r.mean_seconds:.1f} | "
            f"{r.max_seconds:.1f} | {100 * r.share:.0f}% |" for r in rows]
    out.append(f"| all | {len(jobs)} | {total:.0f} | | | 100% |")
    bound = lower_bound(jobs, cores)
    out.append("")
    out.append(f"Job-seconds over {cores} cores: {bound / 60:.1f} min, the least this run's "
               "jobs could take at their measured speed (a job on several threads counted "
               "once).")
    if wall_seconds is not None:
        out.append(f"Measured wall time: {wall_seconds / 60:.1f} min, of which "
                   f"{max(wall_seconds * cores - total, 0.0) / 60:.1f} core-minutes ran no job "
                   "(a job with several threads counts once).")
    return "\n".join(out) + "\n"
