"""Job times by rule: sums, means and the lower bound against a plain loop over hand-written
benchmark files, and clear errors for a file that is not one."""

from __future__ import annotations

from pathlib import Path

import pytest

from opd.core.job_times import by_rule, lower_bound, markdown, read_jobs

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
JOBS = {  # path under results/logs -> wall seconds of each repeat
    "opd_train/strong_teacher/seed0": [60.0],
    "opd_train/strong_teacher/seed1": [70.0],
    "opd_train/nonew_teacher/seed0": [50.0, 54.0],  # a repeated job: its mean
    "evaluate/student": [12.0],
    "build_tiny_models/base": [100.0],
}


def write_logs(root: Path) -> Path:
    logs = root / "results/logs"
    for stem, seconds in JOBS.items():
        path = logs / f"{stem}.benchmark.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = "".join(f"{s}\t0:01:00\t1\t1\t1\t1\t0\t0\t90\t{s / 2}\n" for s in seconds)
        path.write_text(HEADER + rows)
    (logs / "opd_train/strong_teacher/seed0.log").write_text("not a benchmark file\n")
    return logs


def test_jobs_and_rules_match_a_plain_sum(tmp_path):
    jobs = read_jobs(write_logs(tmp_path))
    assert sorted((j.rule, j.job) for j in jobs) == sorted(
        (stem.split("/")[0], stem.split("/", 1)[1]) for stem in JOBS)
    nonew = next(j for j in jobs if j.job == "nonew_teacher/seed0")
    assert nonew.seconds == pytest.approx(52.0)

    expected: dict[str, list[float]] = {}
    for stem, seconds in JOBS.items():
        expected.setdefault(stem.split("/")[0], []).append(sum(seconds) / len(seconds))
    total = sum(sum(v) for v in expected.values())
    rows = by_rule(jobs)
    assert [r.rule for r in rows] == sorted(expected, key=lambda r: -sum(expected[r]))
    for r in rows:
        assert r.jobs == len(expected[r.rule])
        assert r.seconds == pytest.approx(sum(expected[r.rule]))
        assert r.mean_seconds == pytest.approx(sum(expected[r.rule]) / len(expected[r.rule]))
        assert r.max_seconds == pytest.approx(max(expected[r.rule]))
        assert r.share == pytest.approx(sum(expected[r.rule]) / total)


def test_lower_bound_is_all_cores_busy_or_the_longest_job(tmp_path):
    jobs = read_jobs(write_logs(tmp_path))
    total = 60 + 70 + 52 + 12 + 100
    assert lower_bound(jobs, 2) == pytest.approx(total / 2)
    assert lower_bound(jobs, 1) == pytest.approx(total)
    assert lower_bound(jobs, 8) == pytest.approx(100.0)   # the longest job
    with pytest.raises(ValueError, match="at least 1"):
        lower_bound(jobs, 0)


def test_markdown_lists_every_rule_and_the_idle_core_time(tmp_path):
    jobs = read_jobs(write_logs(tmp_path))
    text = markdown(jobs, 2, wall_seconds=200.0)
    assert [ln.split(" | ")[0].lstrip("| ") for ln in text.splitlines()[2:6]] == [
        "opd_train", "build_tiny_models", "evaluate", "all"]
    total = 60 + 70 + 52 + 12 + 100
    assert f"{total / 2 / 60:.1f} min" in text
    assert f"{(200 * 2 - total) / 60:.1f} core-minutes ran no job" in text


def test_a_file_that_is_no_benchmark_is_named(tmp_path):
    logs = tmp_path / "logs"
    bad = logs / "evaluate" / "student.benchmark.tsv"
    bad.parent.mkdir(parents=True)
    bad.write_text("seconds\tcpu\n1\t1\n")
    with pytest.raises(ValueError, match=r"student\.benchmark\.tsv.*first column"):
        read_jobs(logs)
    bad.write_text(HEADER)
    with pytest.raises(ValueError, match=r"student\.benchmark\.tsv.*header line and a row"):
        read_jobs(logs)
    bad.write_text(HEADER + "n/a\t0\t0\t0\t0\t0\t0\t0\t0\t0\n")
    with pytest.raises(ValueError, match="not a number"):
        read_jobs(logs)
    with pytest.raises(FileNotFoundError, match="no such log directory"):
        read_jobs(tmp_path / "missing")
