"""Strictly on-policy distillation of a student from a teacher (one experiment).

Each step: draw ``prompts_per_step`` prompts, sample ``responses_per_prompt`` responses from
the current student (temperature 1, no truncation of the distribution), score every response
token with the teacher, and take one optimizer step on ``opd.train.losses.opd_loss``. Logs one JSON
line per step (loss, every mechanism metric, per-position buckets, lr, grad norm, response
length, accuracy), validates periodically, checkpoints every N steps (model, optimizer, RNG,
data position) and resumes exactly from the last checkpoint after a crash. With
``panel_prompts``, the mechanism metrics are also taken on a fixed panel of prompts, on the
student's own rollouts from one sampling seed, before the first update and after the last
(``panel/<metric>``).

Several processes (``accelerate launch`` or ``torchrun``; one GPU each, or CPU processes over
gloo) run data parallel: the student is sharded over them with FSDP2 (``opd.train.parallel``:
parameters, gradients and optimizer state in 1/N shards), each holds the teacher, samples and
scores its share of the step's prompts, and the gradients are summed so that the update is the
one of the token mean over every process's rollouts. Every process validates its share of each
benchmark; process 0 logs and writes checkpoints.

    python -m opd.stages.opd.opd_train --student S --teacher T --prompts P.parquet --out results/opd/NAME \
        --params '{...resolved experiment...}' [--benchmarks '{...}']
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from tqdm import tqdm

from opd.core.cli import parse_stage_args
from opd.core.data import load_benchmark, load_prompt_set
from opd.train.engine import resolve
from opd.train.generation import RolloutBatch, Sampling, generate, micro_batches, sample_batch
from opd.core.grading import is_correct
from opd.core.config import typed
from opd.core.io import atomic_dir, write_json
from opd.core.prompts import apply_template, chat_prompt
from opd.core.models import ModelRef
from opd.train.losses import opd_loss_hidden, weighted_means
from opd.train.pair import load_pair, response_hidden, response_logits
from opd.train.parallel import (full_parameters, full_state_dict, load_optimizer_state,
                                optimizer_state, shard, sharded)
from opd.train.trainer import (Checkpoint, RunLog, clipped_step, load_torch_state, lr_at,
                               rng_state, run_identity, save_torch_state, set_lr,
                               set_rng_state)


@dataclass
class Validation:
    n: int
    temperature: float
    top_p: float
    max_new_tokens: int
    template: str  # resolved: the benchmark prompt with its boxed instruction


@dataclass
class OPDParams:
    """An experiment's resolved OPD settings (config ``opd`` with the experiment's overrides,
    its steps, seed and template); every default comes from the config schema."""
    variant: str
    top_k: int
    support: str
    weighting: str
    lr: float
    lr_schedule: str
    warmup_ratio: float
    weight_decay: float
    prompts_per_step: int
    responses_per_prompt: int
    shuffle: bool
    updates_per_batch: int
    clip_range: float
    grad_clip: float
    temperature: float
    teacher_temperature: float
    mixed_precision: str
    max_prompt_tokens: int
    max_response_tokens: int
    max_tokens_per_micro_batch: int
    activation_checkpointing: bool
    chunk_size: int | None
    bucket_size: int
    generator: str
    vllm_gpu_memory_utilization: float
    checkpoint_every: int
    validation_every: int
    validation: Validation
    panel_prompts: int
    steps: int | None  # None: one epoch over the prompt set
    seed: int
    template: str

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> "OPDParams":
        params = typed(cls, section, "opd")
        params.validation = typed(Validation, section["validation"], "opd.validation")
        return params


class PromptOrder:
    """Epochs over the prompt set, each in a seeded shuffle or in file order (the official
    runs: ``data.shuffle=False``); the position is part of the checkpoint."""

    def __init__(self, n: int, seed: int, shuffle: bool = True, position: int = 0):
        self.n, self.seed, self.shuffle, self.position = n, seed, shuffle, position
        self._epoch, self._perm = -1, []

    def _permutation(self, epoch: int) -> list[int]:
        if epoch != self._epoch:
            self._perm = list(range(self.n))
            if self.shuffle:
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


def validate(model: Any, tok: Any, benchmarks: dict[str, pd.DataFrame], cfg: OPDParams,
             seed: int, thinking: bool = False, world: int = 1,
             rank: int = 0) -> dict[str, float]:
    """Sampled accuracy on each benchmark, every process answering its share of the problems
    (``world`` > 1). Runs on a forked RNG, so that how often a run validates never changes
    the rollouts it trains on."""
    cuda = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda):
        return _validate(model, tok, benchmarks, cfg, seed + rank, thinking, world, rank)


def _validate(model: Any, tok: Any, benchmarks: dict[str, pd.DataFrame], cfg: OPDParams,
              seed: int, thinking: bool, world: int, rank: int) -> dict[str, float]:
    val = cfg.validation
    sampling = Sampling(max_new_tokens=val.max_new_tokens, temperature=val.temperature,
                        top_p=val.top_p, n=val.n, seed=seed)
    synced = sharded(model)
    model.eval()
    out = {}
    for name, df in benchmarks.items():
        if len(df) < world:
            raise ValueError(f"benchmark {name} has {len(df)} problems, fewer than the "
                             f"{world} processes that validate on it")
        mine = df.iloc[rank::world]
        prompts = [chat_prompt(tok, apply_template(val.template, p), thinking)
                   for p in mine["problem"]]
        # sharded: one call per process, so that every process steps the same generate loops
        res = generate(model, tok, prompts, sampling, progress=False, synced=synced,
                       batch_size=len(prompts) * val.n if synced else 256)
        counts = torch.tensor([sum(is_correct(c.text, a) for r, a in zip(res, mine["answer"])
                                   for c in r), sum(len(r) for r in res)], dtype=torch.float64)
        if world > 1:
            torch.distributed.all_reduce(counts)
        out[f"val/{name}"] = float(counts[0] / counts[1].clamp_min(1))
    model.train()
    return out


PANEL_SEED = 0  # the panel's rollouts: one sampling seed for every seed of an experiment


def panel_texts(prompts: pd.DataFrame, cfg: OPDParams, world: int, rank: int) -> list[str]:
    """This process's share of the panel: the first ``panel_prompts`` prompts in file order
    (chat-formatted, ``fitting_prompts``), each repeated ``responses_per_prompt`` times."""
    if cfg.panel_prompts > len(prompts):
        raise ValueError(f"opd.panel_prompts is {cfg.panel_prompts}, but the prompt set has "
                         f"{len(prompts)} prompts that fit")
    if cfg.steps is not None and cfg.steps < 2:
        raise ValueError("opd.panel_prompts needs at least 2 steps: the panel's start and end "
                         "are logged on the first and the last line")
    mine = prompts["chat_text"].iloc[local_share(list(range(cfg.panel_prompts)), world, rank)]
    return [t for t in mine for _ in range(cfg.responses_per_prompt)]


def panel_parts(student: Any, teacher: Any, tok: Any, texts: list[str], cfg: OPDParams
                ) -> list[tuple[dict[str, float], dict[str, int]]]:
    """The mechanism metrics of the current student on this process's panel rollouts, per
    micro-batch (pooled by ``weighted_means``): rollouts sampled at the training temperature
    from ``PANEL_SEED``, scored as a training step scores them, without a backward pass. Runs
    on a forked RNG, so that the panel never changes the rollouts the run trains on."""
    sampling = Sampling(max_new_tokens=cfg.max_response_tokens, temperature=cfg.temperature,
                        top_p=1.0, seed=PANEL_SEED)
    cuda = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    parts: list[tuple[dict[str, float], dict[str, int]]] = []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(PANEL_SEED)
        student.eval()
        batch = sample_batch(student, tok, texts, sampling, synced=sharded(student))
        with torch.no_grad():
            for mb, counts in step_micro_batches(batch, cfg, student):
                loss, metrics = scored(student, teacher, mb, cfg)
                if counts:
                    parts.append(metric_part(loss, metrics, int(mb.response_mask.sum())))
        student.train()
    return parts


def panel_metrics(parts_by_process: list[list[tuple[dict[str, float], dict[str, int]]]]
                  ) -> dict[str, float]:
    """Every process's panel micro-batches pooled into ``panel/<metric>`` values."""
    pooled = weighted_means([p for parts in parts_by_process for p in parts])
    return {f"panel/{k}": v for k, v in pooled.items()}


def autocast(cfg: OPDParams) -> Any:
    """bf16 autocast of the forward passes on GPU (fp32 master weights stay as they are);
    a no-op on CPU. The loss upcasts logits to float32."""
    on = torch.cuda.is_available() and cfg.mixed_precision == "bf16"
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=on)


def identity(args: argparse.Namespace, world: int = 1) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: every setting, the number of processes
    (each holds its own random stream), the content of the pair and the prompts, the code."""
    return run_identity({"params": args.params, "world": world, "student": str(args.student),
                         "teacher": str(args.teacher), "prompts": args.prompts},
                        {"student": args.student.location, "teacher": args.teacher.location,
                         "prompts": args.prompts["path"]})


def local_share(idx: list[int], world: int, rank: int) -> list[int]:
    """This process's prompts of the step (every process draws the same ``idx``)."""
    if len(idx) % world:
        raise ValueError(f"prompts_per_step ({len(idx)}) must be a multiple of the number of "
                         f"processes ({world})")
    return idx[rank::world]


def step_micro_batches(batch: RolloutBatch, cfg: OPDParams, student: Any
                       ) -> list[tuple[RolloutBatch, bool]]:
    """This process's micro-batches of the step, each with whether it counts. A sharded
    student needs every process to run as many forward and backward passes as the others:
    a process with fewer repeats its last micro-batch with weight 0."""
    own = micro_batches(batch, cfg.max_tokens_per_micro_batch)
    if not sharded(student):
        return [(mb, True) for mb in own]
    most = torch.tensor(len(own), device=batch.input_ids.device)
    torch.distributed.all_reduce(most, op=torch.distributed.ReduceOp.MAX)
    return [(mb, True) for mb in own] + [(own[-1], False)] * (int(most) - len(own))


def rollout_logprobs(student: Any, mb: RolloutBatch, cfg: OPDParams) -> torch.Tensor:
    """The rollout policy's log-probs for PPO-style clipping (several updates per batch):
    of the sampled tokens [B, T] for ``sampled``, of the whole vocabulary [B, T, V] otherwise."""
    with torch.no_grad(), autocast(cfg):
        logp = torch.log_softmax(response_logits(student, mb).float() / cfg.temperature, dim=-1)
    if cfg.variant == "sampled":
        return logp.gather(-1, mb.response_ids.unsqueeze(-1)).squeeze(-1)
    return logp


def scored(student: Any, teacher: Any, mb: RolloutBatch, cfg: OPDParams,
           old: torch.Tensor | None = None, bucket_size: int | None = None
           ) -> tuple[torch.Tensor, dict[str, Any]]:
    """The OPD loss of one micro-batch and its mechanism metrics (per-position buckets with
    ``bucket_size``): the teacher's forward pass without gradient, the student's with it
    unless the caller turned gradients off. ``old``: the rollout policy's log-probs."""
    with torch.no_grad(), autocast(cfg):
        t_hidden, t_head = response_hidden(teacher, mb)
    with autocast(cfg):
        s_hidden, s_head = response_hidden(student, mb)
        # the heads are applied chunk by chunk inside the loss; the sampling temperature
        # divides the student's logits there too
        return opd_loss_hidden(
            s_hidden, s_head, t_hidden, t_head, mb.response_ids, mb.response_mask,
            variant=cfg.variant, top_k=cfg.top_k, support=cfg.support,
            weighting=cfg.weighting, temperature=cfg.temperature,
            teacher_temperature=cfg.teacher_temperature, old_logprobs=old,
            clip_range=cfg.clip_range, chunk_size=cfg.chunk_size, bucket_size=bucket_size)


def metric_part(loss: torch.Tensor, metrics: dict[str, Any], n_tok: int
                ) -> tuple[dict[str, float], dict[str, int]]:
    """A micro-batch's metrics (its ``weights`` taken out) with the loss, for
    ``weighted_means``."""
    weights = metrics.pop("weights")
    return {"loss": loss.item(), **metrics}, {"loss": n_tok, **weights}


def accumulate(student: Any, teacher: Any, batch: RolloutBatch, cfg: OPDParams,
               step_tokens: int, old: list[torch.Tensor] | None = None,
               ) -> tuple[list[tuple[dict[str, float], int]], list[dict]]:
    """Backward of this process's rollouts in micro-batches, each weighted by its share of the
    step's ``step_tokens`` (over all processes); returns the per-micro-batch metrics. ``old``:
    the rollout policy's log-probs per micro-batch (PPO-style clipping), or None on-policy."""
    parts: list[tuple[dict[str, float], int]] = []
    buckets: list[dict] = []
    for i, (mb, counts) in enumerate(step_micro_batches(batch, cfg, student)):
        n_tok = int(mb.response_mask.sum()) if counts else 0
        loss, metrics = scored(student, teacher, mb, cfg, None if old is None else old[i],
                               cfg.bucket_size)
        (loss * n_tok / step_tokens).backward()
        if not counts:
            continue
        buckets += metrics.pop("buckets", [])
        parts.append(metric_part(loss, metrics, n_tok))
    return parts, buckets


def update(student: Any, teacher: Any, opt: torch.optim.Optimizer, batch: RolloutBatch,
           cfg: OPDParams, step_tokens: int, old: list[torch.Tensor] | None = None,
           ) -> tuple[list[tuple[dict[str, float], int]], list[dict], float, bool]:
    """One optimizer update on this process's rollouts: the gradient of the step's token-mean
    loss accumulated micro-batch by micro-batch (``accumulate``), clipped, then the AdamW step
    unless its norm is not finite. Returns the micro-batch metrics, the position buckets, the
    gradient norm and whether the update was taken."""
    opt.zero_grad(set_to_none=True)
    parts, buckets = accumulate(student, teacher, batch, cfg, step_tokens, old)
    grad_norm, stepped = clipped_step(student.parameters(), opt, cfg.grad_clip)
    return parts, buckets, grad_norm, stepped


def prepare_student(student: Any, cfg: OPDParams, world: int, bf16: bool) -> None:
    """Training mode, optional activation checkpointing (each layer recomputed in the backward
    pass) and, on several processes, FSDP2 sharding (parameters, gradients and optimizer state
    in 1/world shards); the optimizer is made after this."""
    student.train()
    if cfg.activation_checkpointing:
        student.activation_checkpointing_enable({"use_reentrant": False})
    if world > 1:
        shard(student, bf16=bf16)


def make_generator(cfg: OPDParams, weights: ModelRef, rank: int) -> Any:
    """None to sample with the trained student itself, or a colocated vLLM generator."""
    if resolve(cfg.generator) != "vllm":
        return None
    from opd.train.engine import VLLMRollouts

    return VLLMRollouts(weights, seed=cfg.seed + rank,
                        gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
                        max_model_len=cfg.max_prompt_tokens + cfg.max_response_tokens)


def fitting_prompts(prompts: pd.DataFrame, tok: Any, cfg: OPDParams,
                    thinking: bool = False) -> pd.DataFrame:
    """The prompts whose chat-formatted tokens fit ``max_prompt_tokens``, with that text as
    ``chat_text`` (the template applied, in the student's chat format); the rest are dropped
    (as verl's overlong-prompt filter does), and the count is printed."""
    texts = [chat_prompt(tok, apply_template(cfg.template, p), thinking)
             for p in prompts["prompt"]]
    lengths = [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]
    keep = [n <= cfg.max_prompt_tokens for n in lengths]
    if not any(keep):
        raise SystemExit(f"every prompt is longer than opd.max_prompt_tokens "
                         f"({cfg.max_prompt_tokens} tokens; shortest {min(lengths)})")
    if not all(keep):
        print(f"{len(keep) - sum(keep)} of {len(keep)} prompts are longer than "
              f"opd.max_prompt_tokens ({cfg.max_prompt_tokens}) and are left out")
    return prompts.assign(chat_text=texts)[keep].reset_index(drop=True)


def train(args: argparse.Namespace) -> dict[str, Any]:
    cfg = OPDParams.from_config(args.params)
    # cpu=True lets torchrun / accelerate start several CPU processes (gloo) without a GPU
    acc = Accelerator(cpu=not torch.cuda.is_available())
    world, rank, main = acc.num_processes, acc.process_index, acc.is_main_process
    torch.manual_seed(cfg.seed + rank)
    ckpt = Checkpoint(args.out / "checkpoint", identity(args, world))
    if main:
        ckpt.find()  # sets aside checkpoints of another run and corrupt ones
    acc.wait_for_everyone()
    resumed = ckpt.find(main=False)
    tok, student, teacher = load_pair(args.student, args.teacher,
                                      str(ckpt.current) if resumed else None, on=acc.device)
    bf16 = torch.device(acc.device).type == "cuda" and cfg.mixed_precision == "bf16"
    if bf16:
        teacher.to(torch.bfloat16)  # never trained: bf16 weights are all it needs
    prepare_student(student, cfg, world, bf16)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    prompts = fitting_prompts(load_prompt_set(args.prompts), tok, cfg, args.student.thinking)
    if cfg.steps is None:  # one epoch, as the official runs; verl drops an incomplete batch
        cfg.steps = max(1, len(prompts) // cfg.prompts_per_step)
        if main:
            print(f"one epoch over {len(prompts)} prompts: {cfg.steps} steps")
    order = PromptOrder(len(prompts), cfg.seed, cfg.shuffle)
    start = 0
    if resumed:
        blob = load_torch_state(ckpt.current / "trainer_state.pt")
        load_optimizer_state(student, opt, blob["optimizer"])
        set_rng_state(blob["rng"][rank])
        start, order.position = resumed["step"], resumed["data_position"]
        if main:
            print(f"resuming from step {start}")
    log = RunLog(args.out / "metrics.jsonl", args.out / "tb", "opd", enabled=main,
                 resume_text=ckpt.log_text() if resumed and main else None, start_step=start)
    generator = make_generator(cfg, ModelRef(str(ckpt.current), True) if resumed else args.student,
                               rank)
    benchmarks = {k: load_benchmark(v) for k, v in (args.benchmarks or {}).items()}
    panel = panel_texts(prompts, cfg, world, rank) if cfg.panel_prompts else []
    sampling = Sampling(max_new_tokens=cfg.max_response_tokens, temperature=cfg.temperature,
                        top_p=1.0, seed=cfg.seed)
    n_resp = cfg.responses_per_prompt
    bar = tqdm(range(start, cfg.steps), desc="opd", initial=start, total=cfg.steps,
               disable=not main)
    for step in bar:
        # the panel: the student as it started (step 0, before its update) and as it ends
        before = panel_parts(student, teacher, tok, panel, cfg) if panel and step == 0 else None
        t0 = time.time()
        rows = prompts.iloc[local_share(order.take(cfg.prompts_per_step), world, rank)]
        texts = [t for t in rows["chat_text"] for _ in range(n_resp)]
        answers = [a for a in rows["answer"] for _ in range(n_resp)]
        if generator is None:
            student.eval()
            batch = sample_batch(student, tok, texts, sampling, synced=sharded(student))
            student.train()
        else:
            # seeded by run, process and step, so that a resumed run samples the same rollouts
            seed = (cfg.seed * 4099 + rank) * 1_000_033 + step
            batch = generator.sample(texts, replace(sampling, seed=seed), tok, acc.device)
        local_tokens = int(batch.response_mask.sum())
        step_tokens = int(acc.reduce(torch.tensor(local_tokens, device=acc.device), "sum").item()) \
            if world > 1 else local_tokens
        lr = lr_at(step, cfg.lr, cfg.steps, cfg.lr_schedule, cfg.warmup_ratio)
        set_lr(opt, lr)
        # one update per batch is strictly on-policy; more updates clip against the rollout policy
        old = ([rollout_logprobs(student, mb, cfg)
                for mb, _ in step_micro_batches(batch, cfg, student)]
               if cfg.updates_per_batch > 1 else None)
        skipped = 0
        for i in range(cfg.updates_per_batch):
            update_parts, update_buckets, grad_norm, stepped = update(
                student, teacher, opt, batch, cfg, step_tokens, old)
            if i == 0:  # the mechanism metrics of the rollout policy
                parts, buckets = update_parts, update_buckets
            if not stepped:
                skipped += 1
                if main:
                    print(f"step {step}: gradient norm {grad_norm} is not finite; update skipped")
        if generator is not None:
            generator.sync(full_parameters(student))
        last = step + 1 == cfg.steps
        seconds = round(time.time() - t0, 3)   # the training step, without panel or validation
        after = panel_parts(student, teacher, tok, panel, cfg) if panel and last else None
        mine = {"parts": parts, "buckets": buckets,
                "panel": before if before is not None else after,
                "lengths": [c.response_tokens for c in batch.completions],
                "truncated": [c.finish_reason == "length" for c in batch.completions],
                "graded": [is_correct(c.text, a) for c, a in zip(batch.completions, answers) if a]}
        every = gather_object([mine]) if world > 1 else [mine]
        scores = (validate(student, tok, benchmarks, cfg, cfg.seed + step,
                           args.student.thinking, world, rank)
                  if benchmarks and ((step + 1) % cfg.validation_every == 0 or last or step == 0)
                  else {})
        if main:
            agg = weighted_means([p for e in every for p in e["parts"]])
            lengths = [n for e in every for n in e["lengths"]]
            graded = [g for e in every for g in e["graded"]]
            line = {"step": step, **agg, "lr": lr, "grad_norm": grad_norm,
                    "updates_skipped": skipped,
                    "rollouts": len(lengths), "response_length": sum(lengths) / len(lengths),
                    "truncated": sum(t for e in every for t in e["truncated"]) / len(lengths),
                    "accuracy": sum(graded) / len(graded) if graded else None,
                    "buckets": merge_buckets([b for e in every for b in e["buckets"]]),
                    "seconds": seconds, **scores}
            if before is not None or after is not None:
                line.update(panel_metrics([e["panel"] for e in every]))
            log.write(line, step)
            bar.set_postfix(loss=f"{agg.get('loss', 0):.4f}",
                            overlap=f"{agg.get('overlap_ratio', 0):.3f}")
        if (step + 1) % cfg.checkpoint_every == 0 or last:
            rng = rng_state()
            rng_states = gather_object([rng]) if world > 1 else [rng]
            # gathered by every process, held by process 0
            weights, opt_state = full_state_dict(student), optimizer_state(student, opt)

            def write(tmp: Path) -> None:
                if main:
                    student.save_pretrained(tmp, state_dict=weights, safe_serialization=True)
                    tok.save_pretrained(tmp)
                    save_torch_state(tmp / "trainer_state.pt", opt_state, rng_states)

            ckpt.save(step + 1, write, log.path, state={"data_position": order.position},
                      main=main, barrier=acc.wait_for_everyone)
    weights = full_state_dict(student)
    if not main:
        return {}
    log.close()
    with atomic_dir(args.out / "final") as tmp:
        student.save_pretrained(tmp, state_dict=weights, safe_serialization=True)
        tok.save_pretrained(tmp)
    lines = log.lines()
    summary = {"steps": cfg.steps, "first": lines[0], "last": lines[-1], "params": args.params,
               "processes": world}
    write_json(args.out / "summary.json", summary)
    ckpt.remove()  # finished: a rerun (--forcerun, changed inputs) trains afresh
    return summary


BUCKET_HEAD = ("bucket", "start", "tokens", "weights")


def merge_buckets(buckets: list[dict]) -> list[dict]:
    """Per-micro-batch position buckets, each position bucket pooled by ``weighted_means``."""
    by_index: dict[int, list[dict]] = {}
    for b in buckets:
        by_index.setdefault(b["bucket"], []).append(b)
    out = []
    for i in sorted(by_index):
        group = by_index[i]
        values = [({k: v for k, v in b.items() if k not in BUCKET_HEAD}, b["weights"])
                  for b in group]
        out.append({"bucket": i, "start": group[0]["start"],
                    "tokens": sum(b["tokens"] for b in group), **weighted_means(values)})
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", type=ModelRef.parse, required=True,
                    help="student model directory or hub id (or the workflow's JSON spec)")
    ap.add_argument("--teacher", type=ModelRef.parse, required=True,
                    help="teacher model directory or hub id (or the workflow's JSON spec)")
    ap.add_argument("--prompts", type=json.loads, required=True,
                    help="prompt set spec as JSON: {path, prompt_field, answer_field}")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--benchmarks", type=json.loads, default=None)
    args = parse_stage_args(ap, argv)
    summary = train(args)
    if summary:
        print(json.dumps({k: summary["last"].get(k) for k in ("loss", "overlap_ratio",
                                                               "reverse_kl")}))


if __name__ == "__main__":
    main()
