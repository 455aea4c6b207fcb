"""Off-policy cold start: full-parameter SFT of a base student on filtered teacher rollouts.

Reads the ``messages`` parquet written by ``filter_rollouts``; the loss covers the assistant
reply only. Batches are grouped by length; the learning rate warms up linearly then follows a
cosine. Runs single-process on CPU, or on several GPUs under ``accelerate launch`` (FSDP or
DeepSpeed ZeRO-2 config files in ``configs/accelerate/``; bf16 when the config says so).
Every ``checkpoint_every`` optimizer steps the full training state (model, optimizer,
scheduler, RNG, position) is saved; a rerun resumes from it. Logs one JSON line per step and
TensorBoard scalars. The result is a ``save_pretrained`` directory with the tokenizer.

    python -m opd.cold_start_sft --model BASE --data sft.parquet --out results/sft/NAME \
        --params '{"lr": 1e-5, "epochs": 2, ...}'
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from opd.io import atomic_dir, read_table, write_json
from opd.sft import collate, encode_chat, length_grouped_batches, warmup_cosine
from opd.tb import tensorboard


def load_examples(path: Path, tokenizer: Any, max_length: int) -> list[tuple[list[int], list[int]]]:
    df = read_table(path)
    if "messages" not in df.columns:
        raise SystemExit(f"{path}: no 'messages' column (columns: {', '.join(df.columns)})")
    out = []
    for i, turns in enumerate(df["messages"]):
        messages = [{"role": t["role"], "content": t["content"]} for t in turns]
        try:
            out.append(encode_chat(tokenizer, messages, max_length))
        except ValueError as err:
            raise SystemExit(f"{path}: row {i}: field 'messages': {err}") from None
    return out


def epoch_batches(lengths: list[int], cfg: dict[str, Any], epoch: int, world: int) -> list[list[int]]:
    """The epoch's batches, trimmed to a multiple of the process count (each takes its share)."""
    batches = length_grouped_batches(lengths, cfg["batch_size"], cfg["seed"] * 7919 + epoch)
    return batches[:len(batches) - len(batches) % world] if world > 1 else batches


def train(args: argparse.Namespace) -> dict[str, Any]:
    cfg = args.params
    gpu = torch.cuda.is_available()
    # cpu=True lets torchrun / accelerate start several CPU processes (gloo) without a GPU
    acc = Accelerator(mixed_precision=cfg["mixed_precision"] if gpu else "no", cpu=not gpu,
                      project_dir=str(args.out))
    torch.manual_seed(cfg["seed"])
    tok = AutoTokenizer.from_pretrained(args.model)
    examples = load_examples(args.data, tok, cfg["max_length"])
    lengths = [len(ids) for ids, _ in examples]
    world, rank = acc.num_processes, acc.process_index
    per_epoch = len(epoch_batches(lengths, cfg, 0, world)) // world
    updates_per_epoch = math.ceil(per_epoch / cfg["grad_accum"])
    total = updates_per_epoch * cfg["epochs"]
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32,
                                                 trust_remote_code=False)
    model.config.use_cache = False
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, total, cfg["warmup_ratio"]))
    model, opt, sched = acc.prepare(model, opt, sched)

    ckpt, log_path = args.out / "checkpoint", args.out / "train_log.jsonl"
    identity = {"model": args.model, "data": str(args.data), "params": cfg, "world": world}
    step = 0
    if (ckpt / "state.json").exists():
        state = json.loads((ckpt / "state.json").read_text())
        if state["identity"] == identity:
            acc.load_state(str(ckpt / "accelerate"))
            step = state["step"]
            log_path.write_text((ckpt / "train_log.jsonl").read_text())
            acc.print(f"resuming from step {step} of {total}")
        elif acc.is_main_process:
            acc.print(f"{ckpt}: checkpoint of a run with other settings; starting afresh")
            shutil.rmtree(ckpt)
    if step == 0 and acc.is_main_process:
        args.out.mkdir(parents=True, exist_ok=True)
        log_path.write_text("")
    writer = tensorboard(args.out / "tb") if acc.is_main_process else None

    bar = tqdm(total=total, initial=step, desc="sft", disable=not acc.is_main_process)
    model.train()
    while step < total:
        epoch, k = divmod(step, updates_per_epoch)
        batches = epoch_batches(lengths, cfg, epoch, world)
        mine = batches[rank::world]
        group = mine[k * cfg["grad_accum"]:(k + 1) * cfg["grad_accum"]]
        t0, loss_sum, n_tok = time.time(), 0.0, 0
        for idx in group:
            batch = collate([examples[i] for i in idx], tok.pad_token_id)
            batch = {key: v.to(acc.device) for key, v in batch.items()}
            loss = model(**batch).loss / len(group)
            acc.backward(loss)
            loss_sum += loss.item()
            n_tok += int((batch["labels"] != -100).sum())
        grad_norm = float(acc.clip_grad_norm_(model.parameters(), cfg["grad_clip"]))
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        if world > 1:  # log the step over every process: mean loss, all tokens
            stats = acc.reduce(torch.tensor([loss_sum, float(n_tok)], device=acc.device), "sum")
            loss_sum, n_tok = stats[0].item() / world, int(stats[1].item())
        line = {"step": step, "epoch": epoch, "loss": loss_sum, "lr": sched.get_last_lr()[0],
                "grad_norm": grad_norm, "tokens": n_tok, "seconds": round(time.time() - t0, 3)}
        if acc.is_main_process:
            with log_path.open("a") as fh:
                fh.write(json.dumps(line) + "\n")
            for key in ("loss", "lr", "grad_norm"):
                writer.add_scalar(f"sft/{key}", line[key], step)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum:.3f}")
        if step % cfg["checkpoint_every"] == 0 and step < total:
            save_checkpoint(acc, ckpt, step, log_path, identity)
    bar.close()
    acc.wait_for_everyone()
    state_dict = acc.get_state_dict(model)  # a collective under FSDP: every process calls it
    if acc.is_main_process:
        writer.close()
        with atomic_dir(args.out / "final") as tmp:
            acc.unwrap_model(model).save_pretrained(tmp, safe_serialization=True,
                                                    state_dict=state_dict)
            tok.save_pretrained(tmp)
        lines = [json.loads(ln) for ln in log_path.read_text().splitlines()]
        summary = {"steps": total, "examples": len(examples), "first_loss": lines[0]["loss"],
                   "final_loss": lines[-1]["loss"], "params": cfg}
        write_json(args.out / "summary.json", summary)
        return summary
    return {}


def save_checkpoint(acc: Accelerator, ckpt: Path, step: int, log_path: Path,
                    identity: dict[str, Any]) -> None:
    """The full training state, written beside the old checkpoint and then swapped in."""
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    if acc.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    acc.wait_for_everyone()
    acc.save_state(str(tmp / "accelerate"))
    if acc.is_main_process:
        (tmp / "train_log.jsonl").write_text(log_path.read_text())
        write_json(tmp / "state.json", {"step": step, "identity": identity})
        if ckpt.exists():
            shutil.rmtree(ckpt)
        tmp.rename(ckpt)
    acc.wait_for_everyone()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="base student directory or hub id")
    ap.add_argument("--data", type=Path, required=True, help="SFT parquet with 'messages'")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--params", type=json.loads, required=True)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(train(args)))


if __name__ == "__main__":
    main()
