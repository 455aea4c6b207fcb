"""The vLLM code path, run for real with vLLM's CPU build (``.venv-vllm``, made by ``make test``).

vLLM lives in an environment of its own (it needs an older ``transformers``), so each check
runs a stage, or a probe, with that environment's Python; the references come from this
environment (the ``transformers`` engine) or from a plain forward pass.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import (REPO, copy_workflow, kill_when, schema_section, snakemake_command,
                      tiny_recipe)
from opd.stages.tiny.build_tiny_models import main as build_model

HERE = REPO / "tests" / "vllm_cpu"
TEMPLATE = "{problem} Please reason step by step, and put your final answer within \\boxed{}."
ARCH = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1}


@pytest.fixture(scope="session")
def vllm_python():
    """The vLLM environment's Python; CI must have it (``make test`` builds it)."""
    python = os.environ.get("OPD_VLLM_PYTHON") or str(REPO / ".venv-vllm/bin/python")
    if not os.path.exists(python):
        if os.environ.get("CI"):
            pytest.fail(f"{python} is missing: `make test` builds the vLLM environment")
        pytest.skip(f"no vLLM environment at {python} (make vllm-env)")
    return python


def run_in(python: str, args: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([python, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_asking_for_vllm_where_it_is_absent_stops_the_stage_with_a_clear_error(tmp_path):
    """This environment has no vLLM: a stage asked to use it fails before loading anything."""
    params = {"engine": "vllm", "tensor_parallel_size": 1, "batch_size": 8, "n": 1,
              "temperature": 0.0, "top_p": 1.0, "max_new_tokens": 8, "template": TEMPLATE,
              "seed": 0, "patterns": False}
    bench = tmp_path / "bench.parquet"
    pq.write_table(pa.Table.from_pylist([{"problem": "1+1?", "answer": "2"}]), bench)
    proc = subprocess.run(
        [sys.executable, "-m", "opd.stages.eval.evaluate", "--model", str(tmp_path / "none"),
         "--benchmarks", json.dumps({"o": {"path": str(bench), "problem_field": "problem",
                                           "answer_field": "answer"}}),
         "--out-dir", str(tmp_path), "--params", json.dumps(params)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "engine 'vllm' was requested but vLLM is not installed" in proc.stderr
    assert not (tmp_path / "o.parquet").exists()


@pytest.fixture(scope="module")
def small_pair(small_world, small_tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm_pair")
    for name, seed in (("student", 1), ("teacher", 2)):
        recipe = {"arch": ARCH, "pattern": "chain", "difficulty": [1, 2], "steps": 2,
                  "batch_size": 4, "lr": 1e-3, "warmup_ratio": 0.0, "seed": seed}
        build_model(["--world", str(small_world), "--tokenizer", str(small_tokenizer),
                     "--out", str(root / name), "--params", json.dumps(tiny_recipe(recipe))])
    rows = [{"prompt": f"Start with {i}. The changes are +1, +2. What is the result?",
             "answer": str(i + 3)} for i in range(6)]
    pq.write_table(pa.Table.from_pylist(rows), root / "prompts.parquet")
    return root


def test_colocated_generator_scores_like_the_trained_student_after_every_sync(
        vllm_python, small_pair, tmp_path):
    """opd.generator: vllm. After each of three optimizer steps the engine's log-probs of a
    fixed sequence equal (1e-3) those of the student's weights at that step, which moved."""
    params = {**schema_section(
        "opd", lr=3e-2, prompts_per_step=2, responses_per_prompt=2, max_response_tokens=12,
        max_prompt_tokens=128, weight_decay=0.0, variant="full", checkpoint_every=10,
        validation_every=100, activation_checkpointing=False, generator="vllm"),
        "seed": 0, "steps": 3, "template": TEMPLATE}
    checks = tmp_path / "checks.jsonl"
    proc = run_in(vllm_python, [
        str(HERE / "opd_sync_probe.py"), "--student", str(small_pair / "student"),
        "--teacher", str(small_pair / "teacher"), "--prompts", str(small_pair / "prompts.parquet"),
        "--run-dir", str(tmp_path / "run"), "--params", json.dumps(params), "--out", str(checks)])
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in checks.read_text().splitlines()]
    assert len(rows) == 3  # one sync per optimizer step
    assert all(r["tokens"] > 20 for r in rows)
    assert all(r["max_abs_diff"] < 1e-3 for r in rows), rows
    assert all(r["moved_since_start"] > 1e-2 for r in rows), rows  # the check is not vacuous
    lines = (tmp_path / "run/metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["step"] for ln in lines if "loss" in json.loads(ln)] == [0, 1, 2]


def _evaluate(python: str, engine: str, model, bench: dict, out, n: int, temperature: float):
    params = {"engine": engine, "tensor_parallel_size": 1, "batch_size": 64, "n": n,
              "temperature": temperature, "top_p": 1.0 if temperature == 0 else 0.95,
              "max_new_tokens": 96, "template": TEMPLATE, "seed": 0, "patterns": False}
    args = ["-m", "opd.stages.eval.evaluate", "--model", str(model),
            "--benchmarks", json.dumps({out.stem: bench}), "--out-dir", str(out.parent),
            "--params", json.dumps(params)]
    proc = run_in(python, args)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return pd.read_parquet(out)


@pytest.fixture(scope="module")
def trained(finished_run):
    """The tiny world's student and its benchmarks (from the end-to-end run)."""
    world = finished_run / "results/world/tiny"
    bench = {"path": str(world / "amc23.parquet"), "problem_field": "question",
             "answer_field": "answer"}
    return finished_run / "results/models/tiny/student", bench


@pytest.mark.slow
def test_vllm_evaluation_greedy_matches_transformers_and_sampled_accuracy_agrees(
        vllm_python, trained, tmp_path):
    model, bench = trained
    greedy = {e: _evaluate(py, e, model, bench, tmp_path / f"greedy_{e}.parquet", 1, 0.0)
              for e, py in (("transformers", sys.executable), ("vllm", vllm_python))}
    assert len(greedy["vllm"]) == len(greedy["transformers"]) >= 40
    assert greedy["vllm"]["response"].tolist() == greedy["transformers"]["response"].tolist()
    assert greedy["vllm"]["finish_reason"].tolist() == greedy["transformers"]["finish_reason"].tolist()

    # sampled (T 0.7, 16 per problem): the per-problem accuracy difference is within four
    # standard errors of zero
    sampled = {e: _evaluate(py, e, model, bench, tmp_path / f"sampled_{e}.parquet", 16, 0.7)
               for e, py in (("transformers", sys.executable), ("vllm", vllm_python))}
    acc = {e: df.groupby("problem")["correct"].mean() for e, df in sampled.items()}
    diff = acc["vllm"] - acc["transformers"]
    assert 0.1 < acc["transformers"].mean() < 0.9  # the comparison can tell a difference
    se = diff.std(ddof=1) / math.sqrt(len(diff))
    assert abs(diff.mean()) <= 4 * se + 1e-9, (diff.mean(), se)


@pytest.mark.slow
def test_sharded_rollouts_with_vllm_through_snakemake_resume_after_kill(
        vllm_python, finished_run, tmp_path):
    """A teacher_rollouts shard generated by vLLM under Snakemake, killed after two of its
    five chunks, resumes to the same rows as an uninterrupted run."""
    shard = "results/rollouts/mismatch_openthoughts/shard-0-of-2.parquet"
    override = ["--config", "generation={engine: vllm, batch_size: 128}"]

    def scratch(name):
        (tmp_path / name).mkdir()
        work = copy_workflow(tmp_path / name)
        shutil.copytree(finished_run / "results", work / "results")
        (work / shard).unlink()
        return work

    def command(work):
        cmd, env = snakemake_command([shard, "--cores", "1", "--rerun-incomplete",
                                      "--rerun-triggers", "mtime", *override])
        # rules run `python`: the vLLM environment's, which imports opd from this checkout
        env["PATH"] = f"{os.path.dirname(vllm_python)}{os.pathsep}{env['PATH']}"
        env["PYTHONPATH"] = str(REPO / "src")
        return dict(args=cmd, cwd=work, env=env)

    straight = scratch("straight")
    proc = subprocess.run(**command(straight), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = (straight / "results/logs/teacher_rollouts/mismatch_openthoughts/shard-0-of-2.log")
    assert "generation engine: vllm" in log.read_text()

    work = scratch("killed")
    partial = work / (shard + ".partial.jsonl")
    proc = subprocess.Popen(**command(work), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    kill_when(proc, lambda: partial.exists() and partial.read_text().count("\n") >= 3)
    assert not (work / shard).exists()
    # as after any kill -9: release Snakemake's lock, then run the same target again
    unlock = command(work)
    unlock["args"] = [*unlock["args"], "--unlock"]
    assert subprocess.run(**unlock, capture_output=True, timeout=300).returncode == 0
    again = subprocess.run(**command(work), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-4000:]
    log = (work / "results/logs/teacher_rollouts/mismatch_openthoughts/shard-0-of-2.log")
    assert "resuming shard 0:" in log.read_text()
    pd.testing.assert_frame_equal(pd.read_parquet(work / shard),
                                  pd.read_parquet(straight / shard))
