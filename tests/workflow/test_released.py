"""Rule fetch_released: a URL through Snakemake's HTTP storage, or the offline cache."""

from __future__ import annotations

import hashlib
import json

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


def test_a_cold_start_on_a_released_sft_set_trains_on_the_fetched_file(tmp_path):
    """cold_start.<name>.released: the SFT job reads results/released/<set>.parquet, which
    fetch_released builds from the (here cached) chat file; no teacher rollouts are planned."""
    work = copy_workflow(tmp_path)
    chats = [[{"role": "user", "content": f"What is {i}+1?"},
              {"role": "assistant", "content": f"\\boxed{{{i + 1}}}"}] for i in range(3)]
    (work / "released").mkdir()
    cached = work / "released/sftprobe.jsonl"
    cached.write_text("".join(json.dumps({"messages": c}) + "\n" for c in chats))
    cfg_path = work / "config/config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["released"] = {"sftprobe": {"url": "https://released.invalid/data/train.jsonl",
                                    "sha256": hashlib.sha256(cached.read_bytes()).hexdigest(),
                                    "format": "messages"}}
    cfg["cold_start"]["probe_sft"] = {**cfg["cold_start"]["base_sft"], "released": "sftprobe"}
    del cfg["cold_start"]["probe_sft"]["rollouts"]
    cfg["models"]["probe_sft"] = {"path": "results/sft/probe_sft/final"}
    cfg_path.write_text(yaml.safe_dump(cfg))

    proc = run_snakemake(["--cores", "1", "results/released/sftprobe.parquet"], work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = pq.read_table(work / "results/released/sftprobe.parquet").to_pylist()
    assert [r["messages"] for r in rows] == chats

    plan = run_snakemake(["-n", "-p", "results/sft/probe_sft/summary.json"], work)
    assert plan.returncode == 0, plan.stderr[-3000:]
    sft = [ln for ln in plan.stdout.splitlines() if "opd.stages.rollouts.cold_start_sft" in ln]
    assert len(sft) == 1 and "--data results/released/sftprobe.parquet" in sft[0], plan.stdout[-3000:]
    assert "teacher_rollouts" not in plan.stdout and "filter_rollouts" not in plan.stdout


def test_a_cold_start_names_a_released_sft_set_not_a_prompt_file(tmp_path):
    work = _workflow(tmp_path)
    cfg_path = work / "config/config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["cold_start"]["base_sft"]["released"] = "probe"
    del cfg["cold_start"]["base_sft"]["rollouts"]
    cfg_path.write_text(yaml.safe_dump(cfg))
    proc = run_snakemake(["-n", "results/released/probe.parquet"], work)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "cold_start.base_sft.released: released.probe is not an SFT set" in out, out[-3000:]
