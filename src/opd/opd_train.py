"""Strictly on-policy distillation of a student from a teacher (one experiment).

Each step: draw ``prompts_per_step`` prompts, sample ``responses_per_prompt`` responses from
the current student (temperature 1, no truncation of the distribution), score every response
token with the teacher, and take one optimizer step on ``opd.losses.opd_loss``. Logs one JSON
line per step (loss, every mechanism metric, per-position buckets, lr, grad norm, response
length, accuracy), validates periodically, checkpoints every N steps (model, optimizer, RNG,
data position) and resumes exactly from the last checkpoint after a crash.

Several processes (``accelerate launch`` or ``torchrun``; one GPU each, or CPU processes over
gloo) run data parallel: each holds the teacher and a student replica, samples and scores its
share of the step's prompts, and the gradients are summed so that the update is the one of
the token mean over every process's rollouts. Process 0 validates, logs and checkpoints.

    python -m opd.opd_train --student S --teacher T --prompts P.parquet --out results/opd/NAME \
        --params '{...resolved experiment...}' [--benchmarks '{...}']
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from tqdm import tqdm

from opd.data import load_benchmark, load_prompt_set
from opd.engine import resolve
from opd.generation import RolloutBatch, Sampling, generate, sample_batch
from opd.grading import is_correct
from opd.io import atomic_dir, write_json
from opd.losses import opd_loss
from opd.pair import load_pair, response_logits
from opd.tb import tensorboard
from opd.prompts import apply_template, chat_prompt


class PromptOrder:
    """Seeded epochs over the prompt set; the position is part of the checkpoint."""

    def __init__(self, n: int, seed: int, position: int = 0):
        self.n, self.seed, self.position = n, seed, position
        self._epoch, self._perm = -1, []

    def _permutation(self, epoch: int) -> list[int]:
        if epoch != self._epoch:
            self._perm = list(range(self.n))
            random.Random(self.seed * 100_003 + epoch).shuffle(self._perm)
            self._epoch = epoch
        return self._perm

    def take(self, k: int) -> list[int]:
        out = []
        for _ in range(k):
            epoch, i = divmod(self.position, self.n)
            out.append(self._permutation(epoch)[i])
            self.position += 1
        return out


def validate(model: Any, tok: Any, benchmarks: dict[str, pd.DataFrame], template: str,
             cfg: dict[str, Any], seed: int) -> dict[str, float]:
    """Sampled accuracy on each benchmark. Runs on a forked RNG, so that how often a run
    validates never changes the rollouts it trains on."""
    cuda = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda):
        return _validate(model, tok, benchmarks, template, cfg, seed)


def _validate(model: Any, tok: Any, benchmarks: dict[str, pd.DataFrame], template: str,
              cfg: dict[str, Any], seed: int) -> dict[str, float]:
    sampling = Sampling(max_new_tokens=cfg["max_response_tokens"],
                        temperature=cfg["validation"]["temperature"],
                        top_p=cfg["validation"]["top_p"], n=cfg["validation"]["n"], seed=seed)
    model.eval()
    out = {}
    for name, df in benchmarks.items():
        prompts = [chat_prompt(tok, apply_template(template, p)) for p in df["problem"]]
        res = generate(model, tok, prompts, sampling, batch_size=256, progress=False)
        out[f"val/{name}"] = sum(is_correct(c.text, a) for r, a in zip(res, df["answer"])
                                 for c in r) / max(1, sum(len(r) for r in res))
    return out


def autocast(cfg: dict[str, Any]) -> Any:
    """bf16 autocast of the forward passes on GPU (fp32 master weights stay as they are);
    a no-op on CPU. The loss upcasts logits to float32."""
    on = torch.cuda.is_available() and cfg.get("mixed_precision", "bf16") == "bf16"
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=on)


def run_identity(args: argparse.Namespace, world: int = 1) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the pair, the prompts, every setting and the
    number of processes (each holds its own random stream)."""
    return {"student": str(args.student), "teacher": str(args.teacher), "prompts": args.prompts,
            "params": args.params, "world": world}


def resumable(ckpt: Path, identity: dict[str, Any]) -> bool:
    """True when ``ckpt`` holds a checkpoint of this very run; a stale one is removed."""
    state = ckpt / "state.json"
    if not state.exists():
        return False
    if json.loads(state.read_text()).get("identity") == identity:
        return True
    print(f"{ckpt}: checkpoint of a run with other settings; starting afresh")
    shutil.rmtree(ckpt)
    return False


def save_checkpoint(path: Path, model: Any, tok: Any, opt: torch.optim.Optimizer,
                    step: int, order: PromptOrder, log_path: Path,
                    identity: dict[str, Any], rng_states: list[dict[str, Any]]) -> None:
    """Model, optimizer, every process's RNG, data position and the log so far (Snakemake
    deletes the outputs of a failed job, so the checkpoint keeps its own copy of the log)."""
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        torch.save({"optimizer": opt.state_dict(), "rng": rng_states},
                   tmp / "trainer_state.pt")
        (tmp / "metrics.jsonl").write_text(log_path.read_text())
        write_json(tmp / "state.json", {"step": step, "data_position": order.position,
                                        "identity": identity})


def rng_state() -> dict[str, Any]:
    """This process's random state: CPU, and its GPU's where sampling runs on one."""
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() else None
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def local_share(idx: list[int], world: int, rank: int) -> list[int]:
    """This process's prompts of the step (every process draws the same ``idx``)."""
    if len(idx) % world:
        raise ValueError(f"prompts_per_step ({len(idx)}) must be a multiple of the number of "
                         f"processes ({world})")
    return idx[rank::world]


def sum_gradients(model: Any) -> None:
    """Sum every gradient over the processes. Each process scaled its loss by its tokens over
    the step's tokens on all processes, so the sum is the gradient of the global token mean."""
    for p in model.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        torch.distributed.all_reduce(p.grad, op=torch.distributed.ReduceOp.SUM)


def accumulate(student: Any, teacher: Any, batch: RolloutBatch, cfg: dict[str, Any],
               step_tokens: int) -> tuple[list[tuple[dict[str, float], int]], list[dict]]:
    """Backward of this process's rollouts in micro-batches, each weighted by its share of the
    step's ``step_tokens`` (over all processes); returns the per-micro-batch metrics."""
    micro = cfg["micro_batch_size"]
    parts: list[tuple[dict[str, float], int]] = []
    buckets: list[dict] = []
    for s in range(0, batch.input_ids.shape[0], micro):
        mb = RolloutBatch(batch.input_ids[s:s + micro], batch.attention_mask[s:s + micro],
                          batch.response_mask[s:s + micro], batch.prompt_width, [])
        n_tok = int(mb.response_mask.sum())
        if n_tok == 0:
            continue
        with torch.no_grad(), autocast(cfg):
            t_logits = response_logits(teacher, mb) / cfg["teacher_temperature"]
        with autocast(cfg):
            s_logits = response_logits(student, mb)
        loss, metrics = opd_loss(
            s_logits, t_logits, mb.response_ids, mb.response_mask,
            variant=cfg["variant"], top_k=cfg["top_k"], support=cfg["support"],
            weighting=cfg["weighting"], clip_range=cfg["clip_range"],
            chunk_size=cfg["chunk_size"], bucket_size=cfg["bucket_size"])
        (loss * n_tok / step_tokens).backward()
        buckets += metrics.pop("buckets", [])
        parts.append(({"loss": loss.item(), **metrics}, n_tok))
    return parts, buckets


def make_generator(cfg: dict[str, Any], weights: str, rank: int) -> Any:
    """None to sample with the trained student itself, or a colocated vLLM generator."""
    if resolve(cfg.get("generator", "transformers")) != "vllm":
        return None
    from opd.engine import VLLMRollouts

    return VLLMRollouts(weights, seed=cfg["seed"] + rank,
                        gpu_memory_utilization=cfg["vllm_gpu_memory_utilization"],
                        max_model_len=cfg["max_prompt_tokens"] + cfg["max_response_tokens"])


def train(args: argparse.Namespace) -> dict[str, Any]:
    cfg = args.params
    # cpu=True lets torchrun / accelerate start several CPU processes (gloo) without a GPU
    acc = Accelerator(cpu=not torch.cuda.is_available())
    world, rank, main = acc.num_processes, acc.process_index, acc.is_main_process
    torch.manual_seed(cfg["seed"] + rank)
    ckpt = args.out / "checkpoint"
    identity = run_identity(args, world)
    if main:
        resumable(ckpt, identity)  # removes a checkpoint of other settings
    acc.wait_for_everyone()
    resume = (ckpt / "state.json").exists()
    tok, student, teacher = load_pair(args.student, args.teacher,
                                      str(ckpt) if resume else None, on=acc.device)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg["lr"], weight_decay=0.0)
    prompts = load_prompt_set(args.prompts)
    order = PromptOrder(len(prompts), cfg["seed"])
    start, log_path = 0, args.out / "metrics.jsonl"
    if resume:
        state = json.loads((ckpt / "state.json").read_text())
        blob = torch.load(ckpt / "trainer_state.pt", weights_only=False)
        opt.load_state_dict(blob["optimizer"])
        set_rng_state(blob["rng"][rank])
        start, order.position = state["step"], state["data_position"]
        if main:
            log_path.write_text((ckpt / "metrics.jsonl").read_text())
            print(f"resuming from step {start}")
    elif main:
        args.out.mkdir(parents=True, exist_ok=True)
        log_path.write_text("")
    generator = make_generator(cfg, str(ckpt) if resume else args.student, rank)
    benchmarks = {k: load_benchmark(v) for k, v in (args.benchmarks or {}).items()} if main else {}
    template = cfg["template"]
    sampling = Sampling(max_new_tokens=cfg["max_response_tokens"], temperature=cfg["temperature"],
                        top_p=1.0, seed=cfg["seed"])
    n_resp = cfg["responses_per_prompt"]
    writer = tensorboard(args.out / "tb") if main else None
    bar = tqdm(range(start, cfg["steps"]), desc="opd", initial=start, total=cfg["steps"],
               disable=not main)
    for step in bar:
        t0 = time.time()
        rows = prompts.iloc[local_share(order.take(cfg["prompts_per_step"]), world, rank)]
        texts = [chat_prompt(tok, apply_template(template, p)) for p in rows["prompt"] for _ in range(n_resp)]
        answers = [a for a in rows["answer"] for _ in range(n_resp)]
        if generator is None:
            student.eval()
            batch = sample_batch(student, tok, texts, sampling)
            student.train()
        else:
            batch = generator.sample(texts, sampling, tok, acc.device)
        local_tokens = int(batch.response_mask.sum())
        step_tokens = int(acc.reduce(torch.tensor(local_tokens, device=acc.device), "sum").item()) \
            if world > 1 else local_tokens
        opt.zero_grad(set_to_none=True)
        parts, buckets = accumulate(student, teacher, batch, cfg, step_tokens)
        if world > 1:
            sum_gradients(student)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(student.parameters(), cfg["grad_clip"]))
        opt.step()
        if generator is not None:
            generator.sync(student)
        mine = {"parts": parts, "buckets": buckets,
                "lengths": [c.response_tokens for c in batch.completions],
                "truncated": [c.finish_reason == "length" for c in batch.completions],
                "graded": [is_correct(c.text, a) for c, a in zip(batch.completions, answers) if a]}
        every = gather_object([mine]) if world > 1 else [mine]
        last = step + 1 == cfg["steps"]
        if main:
            agg = weighted_means([p for e in every for p in e["parts"]])
            lengths = [n for e in every for n in e["lengths"]]
            graded = [g for e in every for g in e["graded"]]
            line = {"step": step, **agg, "lr": cfg["lr"], "grad_norm": grad_norm,
                    "rollouts": len(lengths), "response_length": sum(lengths) / len(lengths),
                    "truncated": sum(t for e in every for t in e["truncated"]) / len(lengths),
                    "accuracy": sum(graded) / len(graded) if graded else None,
                    "buckets": merge_buckets([b for e in every for b in e["buckets"]]),
                    "seconds": round(time.time() - t0, 3)}
            if benchmarks and ((step + 1) % cfg["validation_every"] == 0 or last or step == 0):
                line.update(validate(student, tok, benchmarks, template, cfg, cfg["seed"] + step))
            with log_path.open("a") as fh:
                fh.write(json.dumps(line) + "\n")
            for k, v in line.items():
                if isinstance(v, (int, float)) and k != "step":
                    writer.add_scalar(f"opd/{k}", v, step)
            bar.set_postfix(loss=f"{agg.get('loss', 0):.4f}",
                            overlap=f"{agg.get('overlap_ratio', 0):.3f}")
        if (step + 1) % cfg["checkpoint_every"] == 0 or last:
            rng = rng_state()
            rng_states = gather_object([rng]) if world > 1 else [rng]
            if main:
                save_checkpoint(ckpt, student, tok, opt, step + 1, order, log_path, identity,
                                rng_states)
            acc.wait_for_everyone()
    if not main:
        return {}
    writer.close()
    with atomic_dir(args.out / "final") as tmp:
        student.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    lines = [json.loads(ln) for ln in log_path.read_text().splitlines()]
    summary = {"steps": cfg["steps"], "first": lines[0], "last": lines[-1], "params": cfg,
               "processes": world}
    write_json(args.out / "summary.json", summary)
    return summary


def weighted_means(parts: list[tuple[dict[str, float], int]]) -> dict[str, float]:
    """Token-weighted mean of each metric over micro-batches. A metric undefined (NaN) in a
    micro-batch is averaged over the others only; one undefined everywhere is left out."""
    sums: dict[str, list[float]] = {}
    for metrics, tokens in parts:
        for k, v in metrics.items():
            if not math.isnan(v):
                acc = sums.setdefault(k, [0.0, 0])
                acc[0] += v * tokens
                acc[1] += tokens
    return {k: num / den for k, (num, den) in sums.items()}


def merge_buckets(buckets: list[dict]) -> list[dict]:
    """Token-weighted average of per-micro-batch position buckets (NaN values left out)."""
    sums: dict[int, dict[str, list[float]]] = {}
    heads: dict[int, dict[str, int]] = {}
    for b in buckets:
        head = heads.setdefault(b["bucket"], {"bucket": b["bucket"], "start": b["start"], "tokens": 0})
        head["tokens"] += b["tokens"]
        for k, v in b.items():
            if k in head or b["tokens"] == 0 or math.isnan(v):
                continue
            acc = sums.setdefault(b["bucket"], {}).setdefault(k, [0.0, 0])
            acc[0] += v * b["tokens"]
            acc[1] += b["tokens"]
    return [{**heads[i], **{k: s / c for k, (s, c) in sums.get(i, {}).items()}}
            for i in sorted(heads)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", required=True, help="student model directory or hub id")
    ap.add_argument("--teacher", required=True, help="teacher model directory or hub id")
    ap.add_argument("--prompts", type=json.loads, required=True,
                    help="prompt set spec as JSON: {path, prompt_field, answer_field}")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--params", type=json.loads, required=True)
    ap.add_argument("--benchmarks", type=json.loads, default=None)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    summary = train(args)
    if summary:
        print(json.dumps({k: summary["last"].get(k) for k in ("loss", "overlap_ratio",
                                                               "reverse_kl")}))


if __name__ == "__main__":
    main()
