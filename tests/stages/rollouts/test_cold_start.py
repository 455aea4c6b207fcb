"""Teacher rollouts and cold-start SFT: sharding, resume after kill -9, engine choice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.torch import load_file

from conftest import kill_when, tiny_recipe
from opd.stages.tiny.build_tiny_models import main as build_model
from opd.train.engine import EngineUnavailable, resolve
from opd.stages.rollouts.teacher_rollouts import shard_indices

ARCH = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1}
TEMPLATE = "{problem} Please reason step by step, and put your final answer within \\boxed{}."
ROLLOUT = {"template": TEMPLATE, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 16,
           "responses_per_prompt": 2, "chunk_prompts": 2, "retries": 1, "seed": 3,
           "engine": "transformers", "batch_size": 64, "tensor_parallel_size": 1,
           "filters": {}, "teacher": "t", "prompts": "p", "shards": 1, "keep_per_prompt": 1}
SFT = {"lr": 1e-3, "epochs": 2, "batch_size": 4, "grad_accum": 2, "warmup_ratio": 0.1,
       "max_length": 64, "checkpoint_every": 2, "seed": 0, "weight_decay": 0.0,
       "grad_clip": 1.0, "mixed_precision": "bf16", "holdout": 0.0}


@pytest.fixture(scope="module")
def setup(small_world, small_tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("cold")
    recipe = {"arch": ARCH, "pattern": "tally", "difficulty": [1, 2], "steps": 2,
              "batch_size": 4, "lr": 1e-3, "warmup_ratio": 0.0, "seed": 1}
    build_model(["--world", str(small_world), "--tokenizer", str(small_tokenizer),
                 "--out", str(root / "model"), "--params", json.dumps(tiny_recipe(recipe))])
    rows = [{"prompt": f"Start with {i % 20}. The changes are +1, +2. What is the result?",
             "answer": str(i % 20 + 3)} for i in range(160)]
    pq.write_table(pa.Table.from_pylist(rows), root / "prompts.parquet")
    return root


def _rollout_cmd(root, out, shard=0, shards=1):
    return [sys.executable, "-m", "opd.stages.rollouts.teacher_rollouts", "--model", str(root / "model"),
            "--prompts", json.dumps({"path": str(root / "prompts.parquet")}),
            "--shard", str(shard), "--num-shards", str(shards), "--out", str(out),
            "--params", json.dumps(ROLLOUT)]


def _sft_cmd(root, data, out, params=SFT, launcher=(sys.executable,)):
    """The cold-start SFT stage on ``data`` from the fixture's model."""
    return [*launcher, "-m", "opd.stages.rollouts.cold_start_sft", "--model", str(root / "model"),
            "--data", str(data), "--out", str(out), "--params", json.dumps(params),
            "--threads", "1"]


def write_sft_set(path, n):
    """An SFT set of n tally-pattern chats in the `messages` schema."""
    rows = [{"prompt_id": i, "messages": [
        {"role": "user", "content": f"Start with {i}. Add 2. What is the result?"},
        {"role": "assistant", "content": f"start: {i}\nadd 2 -> {i + 2}\nFinal: \\boxed{{{i + 2}}}"}]}
        for i in range(n)]
    pq.write_table(pa.Table.from_pylist(rows), path)


def test_shards_partition_the_prompt_set():
    parts = [shard_indices(11, s, 3) for s in range(3)]
    assert sorted(i for p in parts for i in p) == list(range(11))
    with pytest.raises(ValueError):
        shard_indices(11, 3, 3)


def test_vllm_request_without_vllm_is_a_clear_error():
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401
        pytest.skip("vLLM is installed here")
    except ImportError:
        pass
    with pytest.raises(EngineUnavailable, match="vLLM is not installed"):
        resolve("vllm")
    assert resolve("auto") == "transformers"
    with pytest.raises(EngineUnavailable, match="unknown generation engine"):
        resolve("tgi")


def test_rollout_shard_resumes_after_kill(setup, tmp_path):
    ref = subprocess.run(_rollout_cmd(setup, tmp_path / "ref.parquet"), capture_output=True,
                         text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    expected = pd.read_parquet(tmp_path / "ref.parquet")
    assert set(expected["prompt_id"]) == set(range(160))
    assert {"prompt", "response", "finish_reason", "prompt_tokens", "response_tokens",
            "seed", "attempt", "reject_reason"} <= set(expected.columns)

    out = tmp_path / "crash.parquet"
    partial = tmp_path / "crash.parquet.partial.jsonl"
    proc = subprocess.Popen(_rollout_cmd(setup, out), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    # the first line holds the run's identity, then one line per chunk
    kill_when(proc, lambda: partial.exists() and partial.read_text().count("\n") >= 4)
    written = partial.read_text().count("\n") - 1
    assert not out.exists() and 3 <= written < 80

    again = subprocess.run(_rollout_cmd(setup, out), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming shard 0: {written} of 80 chunks" in again.stdout
    pd.testing.assert_frame_equal(pd.read_parquet(out), expected)
    assert not partial.exists()

    # chunks left by another run (other settings, model or prompts) are never reused
    other = tmp_path / "other.parquet"
    stale = other.with_name(other.name + ".partial.jsonl")
    stale.write_text('{"identity": {"params": "another run"}}\n'
                     '{"chunk": 0, "rows": []}\n')
    proc = subprocess.run(_rollout_cmd(setup, other), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "chunks of another run" in proc.stdout and "resuming" not in proc.stdout
    pd.testing.assert_frame_equal(pd.read_parquet(other), expected)


def test_empty_filter_fails_and_sft_resumes_after_kill(setup, tmp_path):
    shards = []
    for s in range(2):
        shards.append(tmp_path / f"shard-{s}.parquet")
        proc = subprocess.run(_rollout_cmd(setup, shards[-1], s, 2), capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    data, stats = tmp_path / "sft.parquet", tmp_path / "stats.json"
    proc = subprocess.run([sys.executable, "-m", "opd.stages.rollouts.filter_rollouts", "--shards", *map(str, shards),
                           "--out", str(data), "--stats", str(stats), "--params",
                           json.dumps({"template": TEMPLATE, "keep_per_prompt": 2,
                                       "filters": {}})],
                          capture_output=True, text=True, timeout=600)
    # a 1-layer model trained for two steps never closes a box: everything is filtered out,
    # and the stage fails instead of writing an empty SFT set
    assert proc.returncode != 0 and "no response passed the filters" in proc.stderr
    assert not data.exists() and not stats.exists()
    write_sft_set(data, 40)

    def cmd(out):
        return _sft_cmd(setup, data, out)

    ref = subprocess.run(cmd(tmp_path / "ref"), capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    out = tmp_path / "crash"
    proc = subprocess.Popen(cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    state = out / "checkpoint/state.json"
    kill_when(proc, state.exists)
    killed_at = json.loads(state.read_text())["step"]
    again = subprocess.run(cmd(out), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from step {killed_at}" in again.stdout + again.stderr

    def lines(p):
        return [{k: v for k, v in json.loads(ln).items() if k != "seconds"}
                for ln in (p / "train_log.jsonl").read_text().splitlines()]
    assert lines(out) == lines(tmp_path / "ref")
    assert lines(out)[0]["lr"] > 0 and len(lines(out)) == json.loads(
        (out / "summary.json").read_text())["steps"]
    a, b = load_file(out / "final/model.safetensors"), load_file(tmp_path / "ref/final/model.safetensors")
    assert all((a[k] == b[k]).all() for k in b)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(out / "final")
    assert tok.chat_template and "assistant" in tok.chat_template


def test_sft_runs_data_parallel_over_two_processes(setup, tmp_path):
    """The multi-process path (as under `accelerate launch` on GPUs), here two CPU processes
    over gloo: each takes half of every epoch's batches, so there are half as many updates."""
    data = tmp_path / "sft.parquet"
    write_sft_set(data, 32)
    params = {**SFT, "epochs": 1, "grad_accum": 1, "checkpoint_every": 100}
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    proc = subprocess.run(_sft_cmd(setup, data, tmp_path / "out", params,
                                   launcher=(torchrun, "--nproc_per_node", "2")),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    assert summary["steps"] == 32 // SFT["batch_size"] // 2
    lines = (tmp_path / "out/train_log.jsonl").read_text().splitlines()
    assert len(lines) == summary["steps"]
    assert all(json.loads(ln)["tokens"] > 0 for ln in lines)
    assert (tmp_path / "out/final/model.safetensors").exists()


def test_sft_holds_out_examples_for_an_evaluation_loss(setup, tmp_path):
    """As LlamaFactory's val_size: a seeded share of the SFT set is never trained on; its
    token-mean loss is logged at every checkpoint and at the end."""
    import math

    data = tmp_path / "sft.parquet"
    write_sft_set(data, 40)
    params = {**SFT, "epochs": 1, "grad_accum": 1, "holdout": 0.1, "checkpoint_every": 3}
    proc = subprocess.run(_sft_cmd(setup, data, tmp_path / "out", params),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    assert summary["held_out"] == 4 and summary["examples"] == 36
    assert summary["steps"] == 36 // SFT["batch_size"]
    lines = [json.loads(ln) for ln in (tmp_path / "out/train_log.jsonl").read_text().splitlines()]
    assert [ln["step"] for ln in lines if "eval_loss" in ln] == [3, 6, 9]
    assert math.isfinite(summary["final_eval_loss"]) and summary["final_eval_loss"] > 0


def test_sft_trains_on_a_released_sft_set_as_fetched(setup, tmp_path):
    """cold_start.<name>.released: the released chat file (one JSON line per chat, as the
    official LlamaFactory dataset) goes through fetch_released, and the SFT stage trains on
    every chat of its output, the system turn included."""
    import hashlib

    from opd.stages.data.fetch_released import main as fetch_released

    chats = [[{"role": "user", "content": f"Start with {i}. Add 2. What is the result?"},
              {"role": "assistant", "content": f"start: {i}\nadd 2 -> {i + 2}\nFinal: \\boxed{{{i + 2}}}"}]
             for i in range(12)]
    chats[3] = [{"role": "system", "content": "Answer briefly."}] + chats[3]
    src = tmp_path / "train.jsonl"
    src.write_text("".join(json.dumps({"messages": c}) + "\n" for c in chats))
    data = tmp_path / "released.parquet"
    fetch_released(["--source", str(src), "--out", str(data), "--stats", str(tmp_path / "s.json"),
                    "--params", json.dumps({"url": "https://example.org/data/train.jsonl",
                                            "sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
                                            "format": "messages", "strip_template": None})])
    params = {**SFT, "epochs": 1, "grad_accum": 1, "checkpoint_every": 100}
    proc = subprocess.run(_sft_cmd(setup, data, tmp_path / "out", params),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    assert summary["examples"] == 12 and summary["steps"] == 12 // SFT["batch_size"]
    assert (tmp_path / "out/final/model.safetensors").exists()
