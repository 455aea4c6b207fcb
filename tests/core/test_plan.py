"""The GPU memory plan: parameter counts, a measured CPU peak, and the dry run's verdict."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen3Config

from opd.core.plan import (GIB, PlanError, Shape, activation_bytes, check, loss_bytes,
                           model_shape, plan)

QWEN3 = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
             head_dim=64, intermediate_size=768, vocab_size=32000, tie_word_embeddings=False)


def _count(config) -> int:
    model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_match_the_models():
    assert Shape.of(QWEN3).params == _count(Qwen3Config(**QWEN3))
    tied = {**QWEN3, "tie_word_embeddings": True}
    assert Shape.of(tied).params == _count(Qwen3Config(**tied))
    qwen2 = dict(hidden_size=192, num_hidden_layers=3, num_attention_heads=6,
                 num_key_value_heads=2, intermediate_size=512, vocab_size=5000)
    # Qwen2 has q/k/v biases where Qwen3 has q/k norms: a small difference either way
    assert Shape.of(qwen2).params == pytest.approx(_count(Qwen2Config(**qwen2)), rel=1e-3)


@pytest.mark.parametrize("tokens", [2048, 4096])
def test_activation_and_loss_estimate_is_within_20_percent_of_the_measured_peak(tokens):
    probe = Path(__file__).with_name("plan_probe.py")
    # large blocks straight from mmap, returned when freed: the peak is what was alive at once
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, str(probe), json.dumps(QWEN3), str(tokens), "256"],
                         capture_output=True, text=True, check=True, env=env)
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    shape = Shape.of(QWEN3)
    # on CPU everything is float32 and no layer is recomputed; the peak is at the loss, when
    # every activation is alive and the parameter gradients do not exist yet
    estimate = (activation_bytes(shape, tokens, 4, checkpointing=False)
                + loss_bytes(shape, shape, tokens, 256))
    assert estimate == pytest.approx(measured["peak"], rel=0.2)


def test_checkpointing_keeps_one_hidden_state_per_layer_and_one_layer():
    shape = Shape.of(QWEN3)
    full = activation_bytes(shape, 1000, 2, checkpointing=False)
    ckpt = activation_bytes(shape, 1000, 2, checkpointing=True)
    assert ckpt == shape.layers * 1000 * shape.hidden * 2 + full // shape.layers


def _paper():
    import yaml

    from opd.core.config import validate

    return validate(yaml.safe_load(Path("config/paper.yaml").read_text()))


def test_every_paper_gpu_job_is_planned_and_fits():
    cfg = _paper()
    estimates = check(cfg)
    jobs = [e.job.split()[0] for e in estimates]
    assert jobs.count("opd_train") == len(cfg["experiments"])
    assert {"diagnose_pair", "cold_start_sft", "evaluate", "teacher_rollouts",
            "select_prompts"} <= set(jobs)
    opd = [e for e in estimates if e.job.startswith("opd_train")]
    assert all(e.gpus == 8 for e in opd)


def test_a_job_that_cannot_fit_is_named_with_its_largest_terms():
    cfg = copy.deepcopy(_paper())
    cfg["resources"]["default"]["gpu_memory_gb"] = 40
    with pytest.raises(PlanError, match=r"opd_train r1_7b_to_r1_1p5b: .* of 40 GiB .*DOES NOT "
                                        r"FIT.*teacher weights bf16"):
        check(cfg)


def test_a_model_without_a_shape_is_named():
    cfg = copy.deepcopy(_paper())
    del cfg["models"]["r1_distill_7b"]["shape"]
    with pytest.raises(PlanError, match="DeepSeek-R1-Distill-Qwen-7B"):
        plan(cfg)


def test_a_local_model_is_read_from_its_config_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(QWEN3))
    assert model_shape({"path": str(tmp_path)}) == Shape.of(QWEN3)


def test_cpu_only_configs_plan_nothing():
    import yaml

    from opd.core.config import validate

    tiny = validate(yaml.safe_load(Path("config/config.yaml").read_text()))
    assert plan(tiny) == []
    assert GIB == 2**30
