"""Off-policy cold start: full-parameter SFT of a base student on filtered teacher rollouts.

Reads the ``messages`` parquet written by ``filter_rollouts``; the loss covers the assistant
reply only. Batches are grouped by length; the learning rate warms up linearly then follows a
cosine. Runs single-process on CPU, or on several GPUs under ``accelerate launch`` (FSDP or
DeepSpeed ZeRO-2 config files in ``config/accelerate/``; bf16 when the config says so).
Every ``checkpoint_every`` optimizer steps the full training state (model, optimizer, RNG,
position) is saved through the training core; a rerun resumes from it. Logs one JSON line per step and
TensorBoard scalars. The result is a ``save_pretrained`` directory with the tokenizer.

    python -m opd.stages.rollouts.cold_start_sft --model BASE --data sft.parquet --out results/sft/NAME \
        --params '{"lr": 1e-5, "epochs": 2, ...}'
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from tqdm import tqdm
from transformers import AutoModelForCausalLM

from opd.core.cli import parse_stage_args
from opd.core.config import typed
from opd.core.io import atomic_dir, read_table, write_json
from opd.core.models import ModelRef
from opd.train.pair import load_tokenizer
from opd.train.sft import collate, encode_chat, holdout_split, length_grouped_batches
from opd.train.trainer import Checkpoint, RunLog, lr_at, run_identity, set_lr


@dataclass
class SFTParams:
    """A cold start's settings (config ``cold_start.<name>`` less its student, rollouts and
    launcher); every default comes from the config schema."""
    lr: float
    epochs: int
    batch_size: int
    grad_accum: int
    warmup_ratio: float
    max_length: int
    holdout: float
    weight_decay: float
    grad_clip: float
    mixed_precision: str
    checkpoint_every: int
    seed: int


def load_examples(path: Path, tokenizer: Any, max_length: int,
                  thinking: bool = False) -> list[tuple[list[int], list[int]]]:
    df = read_table(path)
    if "messages" not in df.columns:
        raise SystemExit(f"{path}: no 'messages' column (columns: {', '.join(df.columns)})")
    out = []
    for i, turns in enumerate(df["messages"]):
        messages = [{"role": t["role"], "content": t["content"]} for t in turns]
        try:
            out.append(encode_chat(tokenizer, messages, max_length, thinking, "template"))
        except ValueError as err:
            raise SystemExit(f"{path}: row {i}: field 'messages': {err}") from None
    return out


def epoch_batches(lengths: list[int], cfg: SFTParams, epoch: int, world: int) -> list[list[int]]:
    """The epoch's batches, trimmed to a multiple of the process count (each takes its share)."""
    batches = length_grouped_batches(lengths, cfg.batch_size, cfg.seed * 7919 + epoch)
    return batches[:len(batches) - len(batches) % world] if world > 1 else batches


def train(args: argparse.Namespace) -> dict[str, Any]:
    cfg = typed(SFTParams, args.params, "cold_start")
    gpu = torch.cuda.is_available()
    # cpu=True lets torchrun / accelerate start several CPU processes (gloo) without a GPU
    acc = Accelerator(mixed_precision=cfg.mixed_precision if gpu else "no", cpu=not gpu,
                      project_dir=str(args.out))
    main = acc.is_main_process
    torch.manual_seed(cfg.seed)
    tok = load_tokenizer(args.model)
    encoded = load_examples(args.data, tok, cfg.max_length, args.model.thinking)
    train_idx, held_idx = holdout_split(len(encoded), cfg.holdout, cfg.seed)
    examples, held_out = [encoded[i] for i in train_idx], [encoded[i] for i in held_idx]
    lengths = [len(ids) for ids, _ in examples]
    world, rank = acc.num_processes, acc.process_index
    per_epoch = len(epoch_batches(lengths, cfg, 0, world)) // world
    updates_per_epoch = math.ceil(per_epoch / cfg.grad_accum)
    total = updates_per_epoch * cfg.epochs
    location = args.model.checked().location
    model = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32,
                                                 trust_remote_code=False,
                                                 **args.model.load_kwargs())
    model.config.use_cache = False
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, opt = acc.prepare(model, opt)

    ckpt = Checkpoint(args.out / "checkpoint", run_identity(
        {"model": str(args.model), "data": str(args.data), "params": args.params,
         "world": world}, {"model": args.model.location, "data": args.data}))
    if main:
        ckpt.find()  # sets aside checkpoints of another run and corrupt ones
    acc.wait_for_everyone()
    resumed = ckpt.find(main=False)
    step = 0
    if resumed:
        acc.load_state(str(ckpt.current / "accelerate"))
        step = resumed["step"]
        acc.print(f"resuming from step {step} of {total}")
    log = RunLog(args.out / "train_log.jsonl", args.out / "tb", "sft", enabled=main,
                 resume_text=ckpt.log_text() if resumed and main else None, start_step=step)

    bar = tqdm(total=total, initial=step, desc="sft", disable=not main)
    model.train()
    while step < total:
        epoch, k = divmod(step, updates_per_epoch)
        mine = epoch_batches(lengths, cfg, epoch, world)[rank::world]
        group = mine[k * cfg.grad_accum:(k + 1) * cfg.grad_accum]
        t0, loss_sum, n_tok = time.time(), 0.0, 0
        lr = lr_at(step, cfg.lr, total, "cosine", cfg.warmup_ratio)
        set_lr(opt, lr)
        for idx in group:
            batch = collate([examples[i] for i in idx], tok.pad_token_id)
            batch = {key: v.to(acc.device) for key, v in batch.items()}
            loss = model(**batch).loss / len(group)
            acc.backward(loss)
            loss_sum += loss.item()
            n_tok += int((batch["labels"] != -100).sum())
        grad_norm = float(acc.clip_grad_norm_(model.parameters(), cfg.grad_clip))
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        if world > 1:  # log the step over every process: mean loss, all tokens
            stats = acc.reduce(torch.tensor([loss_sum, float(n_tok)], device=acc.device), "sum")
            loss_sum, n_tok = stats[0].item() / world, int(stats[1].item())
        line = {"step": step, "epoch": epoch, "loss": loss_sum, "lr": lr,
                "grad_norm": grad_norm, "tokens": n_tok, "seconds": round(time.time() - t0, 3)}
        if held_out and (step % cfg.checkpoint_every == 0 or step == total):
            line["eval_loss"] = eval_loss(model, held_out, tok, cfg, acc)
        log.write(line, step, scalars=("loss", "eval_loss", "lr", "grad_norm"))
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum:.3f}")
        if step % cfg.checkpoint_every == 0 and step < total:
            ckpt.save(step, lambda tmp: acc.save_state(str(tmp / "accelerate")), log.path,
                      main=main, barrier=acc.wait_for_everyone)
    bar.close()
    acc.wait_for_everyone()
    state_dict = acc.get_state_dict(model)  # a collective under FSDP: every process calls it
    if not main:
        return {}
    log.close()
    with atomic_dir(args.out / "final") as tmp:
        acc.unwrap_model(model).save_pretrained(tmp, safe_serialization=True,
                                                state_dict=state_dict)
        tok.save_pretrained(tmp)
    lines = log.lines()
    evals = [ln["eval_loss"] for ln in lines if "eval_loss" in ln]
    summary = {"steps": total, "examples": len(examples), "held_out": len(held_out),
               "first_loss": lines[0]["loss"], "final_loss": lines[-1]["loss"],
               "final_eval_loss": evals[-1] if evals else None, "params": args.params}
    write_json(args.out / "summary.json", summary)
    ckpt.remove()  # finished: a rerun (--forcerun, changed inputs) trains afresh
    return summary


@torch.no_grad()
def eval_loss(model: Any, examples: list[tuple[list[int], list[int]]], tok: Any,
              cfg: SFTParams, acc: Accelerator) -> float:
    """Token-mean loss on the held-out examples (every process runs them all: under FSDP each
    forward pass is collective)."""
    model.eval()
    total, tokens = 0.0, 0
    for s in range(0, len(examples), cfg.batch_size):
        batch = collate(examples[s:s + cfg.batch_size], tok.pad_token_id)
        batch = {key: v.to(acc.device) for key, v in batch.items()}
        n = int((batch["labels"][:, 1:] != -100).sum())
        total += model(**batch).loss.item() * n
        tokens += n
    model.train()
    return total / max(1, tokens)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=ModelRef.parse, required=True,
                    help="base student directory or hub id (or the workflow's JSON spec)")
    ap.add_argument("--data", type=Path, required=True, help="SFT parquet with 'messages'")
    ap.add_argument("--out", type=Path, required=True)
    args = parse_stage_args(ap, argv)
    print(json.dumps(train(args)))


if __name__ == "__main__":
    main()
