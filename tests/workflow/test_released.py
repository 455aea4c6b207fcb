"""Rule fetch_released: a URL through Snakemake's HTTP storage, or the offline cache."""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from conftest import copy_workflow, run_snakemake

URL = "https://released.invalid/datasets/test_data/probe/test.parquet"  # never resolves
TEMPLATE = "{problem} Please reason step by step, and put your final answer within \\boxed{}."


def _workflow(tmp_path, sha=None):
    work = copy_workflow(tmp_path)
    rows = [{"prompt": [{"role": "user", "content": TEMPLATE.replace("{problem}", f"What is {i}+1?")}],
             "reward_model": {"ground_truth": str(i + 1), "style": "rule"}} for i in range(4)]
    (work / "released").mkdir()
    cached = work / "released/probe.parquet"  # <name> + the URL's suffix
    pq.write_table(pa.Table.from_pylist(rows), cached)
    cfg_path = work / "config/config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["released"] = {"probe": {"url": URL, "strip_template": "default",
                                 "sha256": sha or hashlib.sha256(cached.read_bytes()).hexdigest()}}
    cfg_path.write_text(yaml.safe_dump(cfg))
    return work


def test_offline_the_cached_copy_is_checked_and_flattened(tmp_path):
    work = _workflow(tmp_path)
    proc = run_snakemake(["--cores", "1", "results/released/probe.parquet"], work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = pq.read_table(work / "results/released/probe.parquet").to_pylist()
    assert [(r["prompt"], r["answer"]) for r in out] == [(f"What is {i}+1?", str(i + 1))
                                                          for i in range(4)]


def test_offline_a_changed_copy_fails_the_job_naming_the_url(tmp_path):
    work = _workflow(tmp_path, sha="a" * 64)
    proc = run_snakemake(["--cores", "1", "results/released/probe.parquet"], work)
    assert proc.returncode != 0
    assert not (work / "results/released/probe.parquet").exists()
    log = (work / "results/logs/fetch_released/probe.log").read_text()
    assert URL in log and "does not match" in log


def test_online_the_url_goes_through_the_http_storage_plugin(tmp_path):
    work = _workflow(tmp_path)
    proc = run_snakemake(["-n", "--config", "offline=false", "--",
                          "results/released/probe.parquet"], work)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    # the DAG asks the HTTP storage whether the URL exists (here it cannot resolve the host)
    assert "released.invalid" in out and "/datasets/test_data/probe/test.parquet" in out, \
        out[-3000:]
    assert "storage" in out.lower(), out[-3000:]
