"""OPD trainer: tokenizer check, a short run's log, and exact resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from opd.stages.tiny.build_tiny_models import main as build_model
from opd.stages.tiny.build_tiny_tokenizer import main as build_tokenizer
from opd.core.models import ModelRef
from opd.train.generation import RolloutBatch
from opd.train.pair import TokenizerMismatch, check_same_tokenizer
from conftest import kill_when, schema_section, tiny_recipe

ARCH = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1}
PARAMS = {**schema_section(
    "opd", lr=1e-3, prompts_per_step=2, responses_per_prompt=2, max_tokens_per_micro_batch=64,
    variant="topk", top_k=8, weight_decay=0.0, max_response_tokens=12, chunk_size=4,
    bucket_size=4, checkpoint_every=2, validation_every=2,
    validation={"n": 1, "temperature": 0.7, "top_p": 0.95, "max_new_tokens": 12,
                "template": "{problem} Put the final answer in \\boxed{}."}),
    "seed": 0, "steps": 4,
    "template": "{problem} Please reason step by step, and put your final answer within \\boxed{}."}


def _model(world, tok, out, seed):
    recipe = {"arch": ARCH, "pattern": "chain", "difficulty": [1, 2], "steps": 2,
              "batch_size": 4, "lr": 1e-3, "warmup_ratio": 0.0, "seed": seed}
    build_model(["--world", str(world), "--tokenizer", str(tok), "--out", str(out),
                 "--params", json.dumps(tiny_recipe(recipe))])
    return out


@pytest.fixture(scope="module")
def pair(small_world, small_tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    student = _model(small_world, small_tokenizer, root / "student", 1)
    teacher = _model(small_world, small_tokenizer, root / "teacher", 2)
    prompts = root / "prompts.parquet"
    rows = [{"prompt": f"Start with {i}. The changes are +1, +2. What is the result?",
             "answer": str(i + 3)} for i in range(5)]
    pq.write_table(pa.Table.from_pylist(rows), prompts)
    bench = {"probe": {"path": str(small_world / "probe.parquet"), "problem_field": "problem",
                       "answer_field": "answer"}}
    return student, teacher, prompts, bench


def _cmd(pair, out, params):
    student, teacher, prompts, bench = pair
    return [sys.executable, "-m", "opd.stages.opd.opd_train", "--student", str(student), "--teacher",
            str(teacher), "--prompts", json.dumps({"path": str(prompts)}), "--out", str(out), "--params",
            json.dumps(params), "--benchmarks", json.dumps(bench), "--threads", "1"]


def _lines(path):
    return [{k: v for k, v in json.loads(ln).items() if k != "seconds"}
            for ln in path.read_text().splitlines()]


def _train(pair, out, params, teacher=None):
    """One OPD run in this process (as the stage's command line would start it)."""
    import argparse

    from opd.stages.opd import opd_train

    student, own_teacher, prompts, _ = pair
    ns = argparse.Namespace(student=ModelRef.parse(str(student)),
                            teacher=ModelRef.parse(str(teacher or own_teacher)),
                            prompts={"path": str(prompts)}, out=out, params=params,
                            benchmarks=None)
    return opd_train.train(ns)


def _sampled(pair, n, seed, max_new_tokens, temperature):
    """(student, teacher, rollouts): n seeded student samples on simple prompts."""
    from opd.core.prompts import chat_prompt
    from opd.train.generation import Sampling, sample_batch
    from opd.train.pair import load_pair

    student_dir, teacher_dir, _, _ = pair
    tok, student, teacher = load_pair(str(student_dir), str(teacher_dir))
    torch.manual_seed(seed)
    texts = [chat_prompt(tok, f"Start with {i}. The changes are +1, +2.") for i in range(n)]
    batch = sample_batch(student, tok, texts,
                         Sampling(max_new_tokens=max_new_tokens, temperature=temperature))
    return student, teacher, batch


def test_different_tokenizers_are_refused(small_world, tmp_path):
    from transformers import AutoTokenizer

    build_tokenizer(["--world", str(small_world), "--out", str(tmp_path / "a"), "--params",
                     '{"vocab_size": 600}'])
    build_tokenizer(["--world", str(small_world), "--out", str(tmp_path / "b"), "--params",
                     '{"vocab_size": 640}'])
    a, b = (AutoTokenizer.from_pretrained(tmp_path / n) for n in "ab")
    check_same_tokenizer(a, a, "s", "t")
    with pytest.raises(TokenizerMismatch, match="do not share a tokenizer"):
        check_same_tokenizer(a, b, "s", "t")


def test_short_run_logs_every_step(pair, tmp_path):
    proc = subprocess.run(_cmd(pair, tmp_path / "run", PARAMS), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = _lines(tmp_path / "run/metrics.jsonl")
    assert [ln["step"] for ln in lines] == [0, 1, 2, 3]
    for ln in lines:
        for key in ("loss", "overlap_ratio", "overlap_advantage", "entropy_gap",
                    "shared_mass_student", "shared_mass_teacher", "reverse_kl", "grad_norm",
                    "lr", "response_length", "accuracy", "buckets"):
            assert key in ln
        assert 0.0 <= ln["overlap_ratio"] <= 1.0 and 0.0 <= ln["accuracy"] <= 1.0
        assert ln["buckets"] and ln["buckets"][0]["start"] == 0
    assert "val/probe" in lines[1] and "val/probe" in lines[3]
    assert (tmp_path / "run/final/model.safetensors").exists()
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["last"]["step"] == 3


def test_validation_does_not_change_the_training_run(pair, tmp_path):
    def run(out, every):
        params = {**PARAMS, "steps": 3, "validation_every": every}
        proc = subprocess.run(_cmd(pair, out, params), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return [{k: v for k, v in ln.items() if not k.startswith("val/")}
                for ln in _lines(out / "metrics.jsonl")]

    often, rarely = run(tmp_path / "often", 1), run(tmp_path / "rarely", 1000)
    assert often == rarely


def test_kill_and_resume_matches_uninterrupted(pair, tmp_path):
    params = {**PARAMS, "steps": 30, "checkpoint_every": 2, "validation_every": 1000}
    ref = subprocess.run(_cmd(pair, tmp_path / "ref", params), capture_output=True, text=True,
                         timeout=900)
    assert ref.returncode == 0, ref.stderr[-3000:]

    out = tmp_path / "crash"
    proc = subprocess.Popen(_cmd(pair, out, params), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    state = out / "checkpoint/state.json"
    kill_when(proc, state.exists)
    killed_at = json.loads(state.read_text())["step"]
    assert 0 < killed_at < params["steps"]

    again = subprocess.run(_cmd(pair, out, params), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from step" in again.stdout + again.stderr
    assert _lines(out / "metrics.jsonl") == _lines(tmp_path / "ref/metrics.jsonl")
    a = load_file(out / "final/model.safetensors")
    b = load_file(tmp_path / "ref/final/model.safetensors")
    assert all((a[k] == b[k]).all() for k in b)


def test_process_gradients_sum_to_the_full_batch_gradient(pair):
    """Data parallel: each process backpropagates its rollouts scaled by its share of the
    step's tokens; the sum over processes must be the gradient of the plain token mean."""
    from opd.train.losses import opd_loss
    from opd.stages.opd.opd_train import OPDParams, accumulate
    from opd.train.pair import response_logits

    student, teacher, batch = _sampled(pair, n=6, seed=0, max_new_tokens=10,
                                        temperature=1.0)
    cfg = OPDParams.from_config({**PARAMS, "variant": "full", "max_tokens_per_micro_batch": 48})
    total = int(batch.response_mask.sum())

    def grads():
        out = [p.grad.clone() for p in student.parameters()]
        student.zero_grad(set_to_none=True)
        return out

    # reference: one plain token-mean loss over every rollout
    loss, _ = opd_loss(response_logits(student, batch), response_logits(teacher, batch).detach(),
                       batch.response_ids, batch.response_mask, variant="full")
    loss.backward()
    ref = grads()
    summed = None
    for half in (slice(0, 3), slice(3, 6)):
        part = RolloutBatch(batch.input_ids[half], batch.attention_mask[half],
                            batch.response_mask[half], batch.prompt_width, [])
        accumulate(student, teacher, part, cfg, total)
        g = grads()
        summed = g if summed is None else [a + b for a, b in zip(summed, g)]
    for a, b in zip(summed, ref):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


def test_two_processes_train_data_parallel(pair, tmp_path):
    params = {**PARAMS, "steps": 3, "checkpoint_every": 2}
    proc = subprocess.run(_torchrun(_cmd(pair, tmp_path / "dp", params)[1:]),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = _lines(tmp_path / "dp/metrics.jsonl")
    assert [ln["step"] for ln in lines] == [0, 1, 2]
    # every line pools both processes' rollouts: 2 prompts x 2 responses
    assert all(ln["rollouts"] == 4 for ln in lines)
    assert "val/probe" in lines[0]
    summary = json.loads((tmp_path / "dp/summary.json").read_text())
    assert summary["processes"] == 2
    assert (tmp_path / "dp/final/model.safetensors").exists()
    assert not (tmp_path / "dp/checkpoint").exists()  # a finished run keeps no checkpoint


def _torchrun(args):
    """``args`` (a script or ``-m module`` and its arguments) on two CPU processes (gloo)."""
    return [os.path.join(os.path.dirname(sys.executable), "torchrun"), "--nproc_per_node", "2",
            *args]


def test_two_sharded_processes_update_like_one(pair, tmp_path):
    """FSDP2 over two gloo processes, each with its share of one batch of rollouts (4 and 3
    rollouts, so uneven micro-batch counts), takes the updates one process takes on the whole
    batch: the same loss at each update and the same weights after two. Layers are
    recomputed in the backward pass, as on the paper's runs."""
    student, teacher, _, _ = pair
    params = json.dumps({**PARAMS, "variant": "full", "max_tokens_per_micro_batch": 40,
                         "activation_checkpointing": True})
    probe = str(Path(__file__).with_name("sharded_probe.py"))
    args = [probe, str(student), str(teacher), params]
    one = subprocess.run([sys.executable, *args, str(tmp_path / "one.pt")], capture_output=True,
                         text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(_torchrun([*args, str(tmp_path / "two.pt")]), capture_output=True,
                         text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in ("one", "two"))
    assert b["losses"] == pytest.approx(a["losses"], abs=1e-6)
    assert a["losses"][0] != a["losses"][1]          # the first update changed the student
    before = load_file(student / "model.safetensors")
    assert set(a["weights"]) == set(b["weights"])
    for k, w in a["weights"].items():
        assert torch.allclose(b["weights"][k], w, rtol=0, atol=2e-6), k
    moved = max(float((a["weights"][k] - before[k]).abs().max()) for k in before)
    assert moved > 1e-4


def test_sharded_run_resumes_exactly_after_kill(pair, tmp_path):
    params = {**PARAMS, "steps": 6, "checkpoint_every": 2, "validation_every": 3}
    ref = subprocess.run(_torchrun(_cmd(pair, tmp_path / "ref", params)[1:]),
                         capture_output=True, text=True, timeout=900)
    assert ref.returncode == 0, ref.stderr[-3000:]
    out = tmp_path / "crash"
    proc = subprocess.Popen(_torchrun(_cmd(pair, out, params)[1:]), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    kill_when(proc, (out / "checkpoint/state.json").exists)
    again = subprocess.run(_torchrun(_cmd(pair, out, params)[1:]), capture_output=True,
                           text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from step" in again.stdout + again.stderr
    assert _lines(out / "metrics.jsonl") == _lines(tmp_path / "ref/metrics.jsonl")
    a = load_file(out / "final/model.safetensors")
    b = load_file(tmp_path / "ref/final/model.safetensors")
    assert set(a) == set(b) and all((a[k] == b[k]).all() for k in b)


def test_prompts_per_step_must_split_over_processes():
    from opd.stages.opd.opd_train import local_share

    assert local_share([5, 6, 7, 8], 2, 0) == [5, 7] and local_share([5, 6, 7, 8], 2, 1) == [6, 8]
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        local_share([1, 2, 3], 2, 0)


@pytest.mark.parametrize("thresholds, verdict", [
    ({"min_overlap": 1.01, "min_shared_mass": 0.0, "min_new_capability": 0.0},
     "thinking-pattern mismatch"),
    ({"min_overlap": 0.0, "min_shared_mass": 1.01, "min_new_capability": 0.0},
     "thinking-pattern mismatch"),
    ({"min_overlap": 0.0, "min_shared_mass": 0.0, "min_new_capability": 0.0}, "compatible"),
])
def test_diagnose_pair_verdicts(pair, tmp_path, thresholds, verdict):
    from opd.stages.opd.diagnose_pair import main as diagnose

    student, teacher, prompts, _ = pair
    params = {"seed": 0, "n_prompts": 4, "responses_per_prompt": 2, "max_response_tokens": 8,
              "temperature": 1.0, "teacher_temperature": 1.0, "top_k": 8, "chunk_size": None, "max_tokens_per_micro_batch": 64,
              "template": PARAMS["template"], **thresholds}
    out = tmp_path / "d.json"
    diagnose(["--student", str(student), "--teacher", str(teacher), "--prompts",
              json.dumps({"path": str(prompts)}), "--out", str(out), "--params", json.dumps(params)])
    report = json.loads(out.read_text())
    assert report["verdict"] == verdict and report["verdict_line"].startswith(verdict)
    assert 0.0 <= report["overlap_ratio"] <= 1.0 and report["prompts"] == 4
    for key in ("shared_mass_student", "entropy_gap", "reverse_kl", "student_solved",
                "teacher_solved"):
        assert key in report


def test_checkpoint_of_other_settings_is_not_resumed(pair, tmp_path, monkeypatch, capsys):

    from opd.train.trainer import Checkpoint

    out = tmp_path / "run"

    def run(params):
        _train(pair, out, params)

    monkeypatch.setattr(Checkpoint, "remove", lambda self: None)  # a run that stopped late
    run(PARAMS)
    monkeypatch.undo()
    capsys.readouterr()
    changed = {**PARAMS, "lr": PARAMS["lr"] / 2}
    run(changed)
    log = capsys.readouterr().out
    assert "checkpoint of another run" in log and "resuming" not in log
    assert [ln["step"] for ln in _lines(out / "metrics.jsonl")] == [0, 1, 2, 3]
    assert json.loads((out / "summary.json").read_text())["params"]["lr"] == changed["lr"]
    assert not (out / "checkpoint").exists() and not (out / "checkpoint.prev").exists()


def test_micro_batch_metrics_reweight_around_undefined_values():
    from opd.stages.opd.opd_train import weighted_means

    nan = float("nan")
    tokens = ({"loss": 10, "overlap_advantage": 10}, {"loss": 30, "overlap_advantage": 30},
              {"loss": 10, "overlap_advantage": 10})
    parts = [({"loss": 1.0, "overlap_advantage": nan}, tokens[0]),
             ({"loss": 4.0, "overlap_advantage": -2.0}, tokens[1]),
             ({"loss": 2.0, "overlap_advantage": -1.0}, tokens[2])]
    out = weighted_means(parts)
    assert out["loss"] == pytest.approx((10 * 1 + 30 * 4 + 10 * 2) / 50)
    assert out["overlap_advantage"] == pytest.approx((30 * -2 + 10 * -1) / 40)
    assert weighted_means([({"x": nan}, {"x": 5})]) == {}


def test_rollout_batch_from_ids_matches_sampled_layout(pair):
    """Rollouts sampled elsewhere (vLLM returns token ids) are laid out as sample_batch does."""
    from opd.train.generation import Sampling, rollout_batch, sample_batch
    from opd.train.pair import load_pair
    from opd.core.prompts import chat_prompt

    student_dir, teacher_dir, _, _ = pair
    tok, student, _ = load_pair(str(student_dir), str(teacher_dir))
    torch.manual_seed(3)
    texts = [chat_prompt(tok, f"Start with {i}. The changes are " + ", ".join(["+1"] * i) + ".")
             for i in range(1, 7)]
    ref = sample_batch(student, tok, texts, Sampling(max_new_tokens=8, temperature=1.0))
    prompts, responses, finishes = [], [], []
    for ids, attn, mask, c in zip(ref.input_ids.tolist(), ref.attention_mask.tolist(),
                                  ref.response_mask.tolist(), ref.completions):
        w = ref.prompt_width
        prompts.append([t for t, a in zip(ids[:w], attn[:w]) if a])
        resp = [t for t, m in zip(ids[w:], mask) if m]
        # an engine may leave the end-of-sequence token out of a stopped response
        responses.append(resp[:-1] if c.finish_reason == "stop" else resp)
        finishes.append(c.finish_reason)
    assert "stop" in finishes
    got = rollout_batch(prompts, responses, finishes, tok)
    assert got.prompt_width == ref.prompt_width
    assert torch.equal(got.input_ids, ref.input_ids)
    assert torch.equal(got.attention_mask, ref.attention_mask)
    assert torch.equal(got.response_mask, ref.response_mask)
    assert got.completions == ref.completions


def test_external_generator_is_synced_after_every_step(pair, tmp_path, monkeypatch):
    """A separate generator (vLLM on a GPU) must sample from the weights being trained: a
    stand-in that samples from its own copy of the student, refreshed by sync(), gives exactly
    the run of the student sampling itself; without the sync it would drift from step 1."""

    from opd.stages.opd import opd_train
    from opd.train.generation import sample_batch

    class CopyGenerator:
        def __init__(self, weights):
            from transformers import AutoModelForCausalLM
            self.model = AutoModelForCausalLM.from_pretrained(weights.location).eval()
            self.syncs = 0

        def sample(self, prompts, sampling, tokenizer, device):
            return sample_batch(self.model, tokenizer, prompts, sampling)

        def sync(self, parameters):
            # tied embeddings: the head is the embedding matrix, so named parameters miss it
            missing, _ = self.model.load_state_dict({k: v.clone() for k, v in parameters},
                                                    strict=False)
            assert set(missing) <= {"lm_head.weight"}
            self.syncs += 1

    params = {**PARAMS, "steps": 3, "variant": "full"}

    def run(out):
        return _train(pair, out, params)

    run(tmp_path / "self")
    made = []
    monkeypatch.setattr(opd_train, "make_generator",
                        lambda cfg, weights, rank: made.append(CopyGenerator(weights)) or made[-1])
    run(tmp_path / "gen")
    assert made and made[0].syncs == params["steps"]
    assert _lines(tmp_path / "gen/metrics.jsonl") == _lines(tmp_path / "self/metrics.jsonl")


def test_several_updates_per_batch_clip_against_the_rollout_policy(pair, tmp_path, monkeypatch):
    """updates_per_batch > 1: every batch gives that many optimizer steps, the first at the
    rollout policy (ratio 1: the on-policy loss and metrics), the later ones clipped against
    the rollout policy's log-probs; the lr follows lr_schedule."""
    from opd.train.trainer import Checkpoint

    def run(out, **over):
        params = {**PARAMS, "steps": 3, "checkpoint_every": 1, "variant": "full", **over}
        _train(pair, out, params)
        return _lines(out / "metrics.jsonl")

    once = run(tmp_path / "once")
    monkeypatch.setattr(Checkpoint, "remove", lambda self: None)  # keep the optimizer state
    twice = run(tmp_path / "twice", updates_per_batch=2, lr_schedule="cosine",
                warmup_ratio=0.34)
    assert twice[0]["loss"] == pytest.approx(once[0]["loss"], abs=1e-7)
    assert twice[0]["overlap_ratio"] == pytest.approx(once[0]["overlap_ratio"], abs=1e-7)
    # warm-up round(0.34 * 3) = 1 step, then cosine: peak, peak, peak * (1 + cos(pi / 2)) / 2
    assert [ln["lr"] for ln in twice] == pytest.approx([1e-3, 1e-3, 5e-4])
    assert [ln["lr"] for ln in once] == [1e-3] * 3
    state = torch.load(tmp_path / "twice/checkpoint/trainer_state.pt", weights_only=True)
    assert {int(s["step"]) for s in state["optimizer"]["state"].values()} == {6}


def test_rollout_logprobs_give_the_on_policy_loss(pair):
    """Clipping against log-probs of the current weights changes nothing: ratio 1."""
    from opd.stages.opd.opd_train import OPDParams, accumulate, micro_batches, rollout_logprobs
    from opd.train.pair import response_logits

    student, teacher, batch = _sampled(pair, n=4, seed=1, max_new_tokens=8,
                                        temperature=1.0)
    total = int(batch.response_mask.sum())
    for variant in ("sampled", "full"):
        cfg = OPDParams.from_config({**PARAMS, "variant": variant, "max_tokens_per_micro_batch": 48})
        old = [rollout_logprobs(student, mb, cfg) for mb in micro_batches(batch, 48)]
        ref = torch.log_softmax(response_logits(student, micro_batches(batch, 48)[0]), -1)
        if variant == "sampled":
            ref = ref.gather(-1, micro_batches(batch, 48)[0].response_ids.unsqueeze(-1)).squeeze(-1)
        assert torch.allclose(old[0], ref, atol=1e-6)
        plain, _ = accumulate(student, teacher, batch, cfg, total)
        g_plain = [p.grad.clone() for p in student.parameters()]
        student.zero_grad(set_to_none=True)
        clipped, _ = accumulate(student, teacher, batch, cfg, total, old)
        g_clip = [p.grad.clone() for p in student.parameters()]
        student.zero_grad(set_to_none=True)
        assert [m["loss"] for m, _ in clipped] == pytest.approx([m["loss"] for m, _ in plain],
                                                                abs=1e-6)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g_plain, g_clip))


def test_changed_input_or_rerun_retrains(pair, tmp_path, monkeypatch, capsys):
    """A checkpoint is resumed only by the very same run: after the teacher's weights change
    under the same path it is set aside, and a finished run leaves none, so a rerun
    (--forcerun) trains afresh."""
    import shutil

    from opd.train.trainer import Checkpoint

    student, teacher, _, _ = pair
    params = {**PARAMS, "steps": 3, "checkpoint_every": 1}
    own_teacher = tmp_path / "teacher"
    shutil.copytree(teacher, own_teacher)

    def run(out, teacher_dir):
        _train(pair, out, params, teacher_dir)
        return load_file(out / "final/model.safetensors"), _lines(out / "metrics.jsonl")

    first, first_lines = run(tmp_path / "a", own_teacher)
    assert not (tmp_path / "a/checkpoint").exists()
    again, again_lines = run(tmp_path / "a", own_teacher)       # a rerun retrains ...
    assert "resuming" not in capsys.readouterr().out
    assert again_lines == first_lines                            # ... to the same result

    # a run that stopped after its last checkpoint; then the teacher's weights are replaced
    monkeypatch.setattr(Checkpoint, "remove", lambda self: None)
    run(tmp_path / "b", own_teacher)
    monkeypatch.undo()
    shutil.rmtree(own_teacher)
    shutil.copytree(student, own_teacher)                        # same path, other weights
    capsys.readouterr()
    stale, _ = run(tmp_path / "b", own_teacher)
    out = capsys.readouterr().out
    assert "checkpoint of another run" in out and "resuming" not in out
    fresh, _ = run(tmp_path / "c", own_teacher)
    assert all(torch.equal(stale[k], fresh[k]) for k in fresh)
    assert not all(torch.equal(stale[k], first[k]) for k in first)


def test_corrupt_newest_checkpoint_falls_back_and_finishes_like_the_uninterrupted_run(
        pair, tmp_path, monkeypatch, capsys):

    from opd.train.trainer import Checkpoint

    params = {**PARAMS, "steps": 6, "checkpoint_every": 2, "validation_every": 1000}

    def run(out):
        _train(pair, out, params)

    run(tmp_path / "ref")
    out = tmp_path / "crash"
    # a run stopped after its last checkpoint (steps 4 and 6 on disk) ...
    monkeypatch.setattr(Checkpoint, "remove", lambda self: None)
    run(out)
    monkeypatch.undo()
    # ... whose newest checkpoint was then half written
    weights = out / "checkpoint/model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    capsys.readouterr()
    run(out)
    log = capsys.readouterr().out
    assert f"{out / 'checkpoint'}: corrupt checkpoint" in log and "model.safetensors" in log
    assert "resuming from the previous checkpoint" in log and "resuming from step 4" in log
    assert _lines(out / "metrics.jsonl") == _lines(tmp_path / "ref/metrics.jsonl")
    a = load_file(out / "final/model.safetensors")
    b = load_file(tmp_path / "ref/final/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_sampling_temperature_scales_the_student_logits_in_the_loss(pair):
    from opd.stages.opd.opd_train import OPDParams, accumulate
    from opd.train.losses import opd_loss
    from opd.train.pair import response_logits

    student, teacher, batch = _sampled(pair, n=3, seed=2, max_new_tokens=8,
                                        temperature=2.0)
    cfg = OPDParams.from_config({**PARAMS, "variant": "full", "max_tokens_per_micro_batch": 4096,
                                 "temperature": 2.0, "chunk_size": None})
    parts, _ = accumulate(student, teacher, batch, cfg, int(batch.response_mask.sum()))
    with torch.no_grad():
        ref, _ = opd_loss(response_logits(student, batch) / 2.0,
                          response_logits(teacher, batch), batch.response_ids,
                          batch.response_mask, variant="full")
    assert parts[0][0]["loss"] == pytest.approx(ref.item(), abs=1e-6)


def test_metrics_pooled_over_micro_batches_equal_the_whole_batch():
    """Micro-batch (and process) means pooled with their weights give the metrics of the
    whole batch at once, pooled entry metrics included."""
    from opd.stages.opd.opd_train import merge_buckets, weighted_means
    from opd.train.losses import METRICS, opd_loss

    g = torch.Generator().manual_seed(3)
    student = torch.randn(6, 7, 13, generator=g) * 2
    teacher = student + torch.randn(6, 7, 13, generator=g) * 2
    tokens = torch.randint(0, 13, (6, 7), generator=g)
    mask = (torch.rand(6, 7, generator=g) > 0.2).float()
    kw = {"variant": "topk", "top_k": 4, "bucket_size": 3}
    _, whole = opd_loss(student, teacher, tokens, mask, **kw)
    parts, buckets = [], []
    for sl in (slice(0, 2), slice(2, 5), slice(5, 6)):
        _, m = opd_loss(student[sl], teacher[sl], tokens[sl], mask[sl], **kw)
        buckets += m.pop("buckets")
        parts.append((m, m.pop("weights")))
    pooled = weighted_means(parts)
    for name in METRICS:
        assert pooled[name] == pytest.approx(whole[name], abs=1e-6), name
    for a, b in zip(merge_buckets(buckets), whole["buckets"]):
        assert a["tokens"] == b["tokens"]
        for name in METRICS:
            assert a.get(name, float("nan")) == pytest.approx(b[name], abs=1e-6, nan_ok=True)


def test_validation_prompts_the_benchmarks_with_their_own_template(monkeypatch):
    """As the official runs: the benchmark problems with the boxed instruction, n samples up
    to the validation length, whatever template the experiment trains with."""
    import pandas as pd

    from opd.stages.opd import opd_train
    from opd.train.generation import Completion

    seen = {}

    def fake_generate(model, tok, prompts, sampling, batch_size, progress, synced):
        seen.update(prompts=prompts, sampling=sampling)
        return [[Completion("\\boxed{3}", "stop", 1, 1)] * sampling.n for _ in prompts]

    class Stub:
        def eval(self):
            return self

        def train(self):
            return self

    monkeypatch.setattr(opd_train, "generate", fake_generate)
    monkeypatch.setattr(opd_train, "chat_prompt", lambda tok, text, thinking=False: text)
    cfg = opd_train.OPDParams.from_config({**PARAMS, "template": "TRAIN {problem} Answer:"})
    out = opd_train.validate(Stub(), None, {"b": pd.DataFrame({"problem": ["1+2"], "answer": ["3"]})},
                             cfg, seed=0)
    assert seen["prompts"] == ["1+2 Put the final answer in \\boxed{}."]
    assert seen["sampling"].max_new_tokens == 12 and seen["sampling"].n == 1
    assert out == {"val/b": 1.0}


def test_prompt_order_in_file_order_or_seeded_epochs():
    from opd.stages.opd.opd_train import PromptOrder

    plain = PromptOrder(5, seed=3, shuffle=False)
    assert plain.take(7) == [0, 1, 2, 3, 4, 0, 1]
    shuffled = PromptOrder(5, seed=3, shuffle=True)
    first, second = shuffled.take(5), shuffled.take(5)
    assert sorted(first) == sorted(second) == list(range(5)) and first != list(range(5))
    again = PromptOrder(5, seed=3, shuffle=True, position=5)
    assert again.take(5) == second  # resumes mid-run from its position


def test_steps_null_is_one_epoch_over_the_prompts(pair, tmp_path):
    """5 prompts, 2 per step: one epoch is 2 full steps (the incomplete batch is dropped)."""
    _train(pair, tmp_path / "epoch", {**PARAMS, "steps": None, "checkpoint_every": 10})
    assert [ln["step"] for ln in _lines(tmp_path / "epoch/metrics.jsonl")] == [0, 1]
    assert json.loads((tmp_path / "epoch/summary.json").read_text())["steps"] == 2


def test_token_budget_micro_batches_group_by_length_and_trim_padding(pair):
    """Every rollout lands in exactly one micro-batch within the token budget (rows x padded
    width), rows sorted by length, and a trimmed micro-batch gives each row the same response
    logits as the full padded batch."""
    from opd.stages.opd.opd_train import micro_batches
    from opd.train.pair import response_logits

    student, _, batch = _sampled(pair, n=7, seed=3, max_new_tokens=12, temperature=1.5)
    # vary the prompt lengths: drop a few leading prompt tokens of some rows (left padding)
    batch.attention_mask[::2, :batch.prompt_width - 8] = 0
    batch.input_ids[::2, :batch.prompt_width - 8] = 0
    full = response_logits(student, batch).detach()
    lengths = (batch.attention_mask[:, :batch.prompt_width].sum(1)
               + batch.response_mask.sum(1)).tolist()
    budget = 2 * max(lengths) + 1
    mbs = micro_batches(batch, budget)
    assert len(mbs) > 1
    seen = []
    for mb in mbs:
        rows, width = mb.input_ids.shape
        assert rows == 1 or rows * width <= budget
        assert bool(mb.attention_mask[:, 0].any()) and bool(mb.response_mask[:, -1].any())
        logits = response_logits(student, mb).detach()
        for r in range(rows):
            match = [i for i in range(len(lengths)) if i not in seen
                     and torch.equal(batch.response_ids[i, :mb.response_ids.shape[1]], mb.response_ids[r])
                     and int(batch.response_mask[i].sum()) == int(mb.response_mask[r].sum())]
            i = match[0]
            seen.append(i)
            n = int(mb.response_mask[r].sum())
            torch.testing.assert_close(logits[r, :n], full[i, :n], atol=1e-4, rtol=1e-4)
    assert sorted(seen) == [i for i in range(len(lengths)) if batch.response_mask[i].sum()]
    assert [lengths[i] for i in seen] == sorted(lengths[i] for i in seen)


def test_panel_is_taken_before_the_first_and_after_the_last_update(pair, tmp_path):
    """The panel's metrics sit on the first and the last line only; its start is the same for
    every seed (the same prompts, rollout seed and student), and it never changes the run."""
    def run(out, **extra):
        params = {**PARAMS, "steps": 3, "validation_every": 1000, **extra}
        proc = subprocess.run(_cmd(pair, out, params), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return _lines(out / "metrics.jsonl")

    def panel(line):
        return {k: v for k, v in line.items() if k.startswith("panel/")}

    def rest(lines):
        return [{k: v for k, v in ln.items() if not k.startswith("panel/")} for ln in lines]

    plain = run(tmp_path / "plain")
    with_panel = run(tmp_path / "panel", panel_prompts=2)
    other_seed = run(tmp_path / "seed1", panel_prompts=2, seed=1)
    assert rest(with_panel) == plain
    assert [bool(panel(ln)) for ln in with_panel] == [True, False, True]
    for key in ("overlap_ratio", "teacher_p_at_max_student", "shared_mass_student",
                "reverse_kl", "entropy_gap", "overlap_advantage"):
        assert f"panel/{key}" in with_panel[0] and f"panel/{key}" in with_panel[-1]
    assert panel(other_seed[0]) == panel(with_panel[0])
    assert rest(other_seed) != plain  # the seeds train on other rollouts
    assert panel(other_seed[-1]) != panel(with_panel[-1])


def test_panel_metrics_match_a_plain_loop(pair):
    """Overlap ratio and the teacher's probability at the student's top shared token on the
    panel, against a loop over each rollout's positions with unpadded forward passes."""
    from opd.core.prompts import chat_prompt
    from opd.stages.opd import opd_train
    from opd.train.generation import Sampling, sample_batch
    from opd.train.losses import weighted_means
    from opd.train.pair import load_pair

    student_dir, teacher_dir, _, _ = pair
    tok, student, teacher = load_pair(str(student_dir), str(teacher_dir))
    cfg = opd_train.OPDParams.from_config({**PARAMS, "panel_prompts": 2})
    texts = [chat_prompt(tok, f"Start with {i}. The changes are +1, +2.")
             for i in range(2) for _ in range(cfg.responses_per_prompt)]
    got = weighted_means(opd_train.panel_parts(student, teacher, tok, texts, cfg))

    torch.manual_seed(opd_train.PANEL_SEED)
    batch = sample_batch(student.eval(), tok, texts,
                         Sampling(max_new_tokens=cfg.max_response_tokens, temperature=1.0))
    k, overlaps, p_at_max = cfg.top_k, [], []
    with torch.no_grad():
        for row in range(len(texts)):
            ids = batch.input_ids[row][batch.attention_mask[row].bool()]
            n = int(batch.response_mask[row].sum())
            start = len(ids) - n
            s_p = torch.softmax(student(ids[None]).logits[0].double(), -1)
            t_p = torch.softmax(teacher(ids[None]).logits[0].double(), -1)
            for j in range(n):
                sp, tp = s_p[start - 1 + j], t_p[start - 1 + j]
                s_top = set(sp.topk(k).indices.tolist())
                shared = s_top & set(tp.topk(k).indices.tolist())
                overlaps.append(len(shared) / k)
                if shared:
                    best = max(shared, key=lambda i: sp[i].item())
                    p_at_max.append(tp[best].item())
    assert got["overlap_ratio"] == pytest.approx(sum(overlaps) / len(overlaps), abs=1e-6)
    assert got["teacher_p_at_max_student"] == pytest.approx(sum(p_at_max) / len(p_at_max),
                                                            abs=1e-5)
