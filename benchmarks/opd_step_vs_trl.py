"""Benchmark: one OPD training step on the tiny pair, ours against TRL's DistillationTrainer.

Both sides get the same batch: student rollouts sampled once (seeded) from the tiny student on
tiny OpenThoughts prompts, i.e. identical prompt/completion token ids and lengths. A step is
timed from the token ids to the updated weights: teacher forward, student forward, loss,
backward, gradient clipping and one AdamW update. Generation is excluded on both sides (both
use ``transformers`` generate on CPU). Ours: ``opd.train.losses.opd_loss`` with the full-vocabulary
reverse KL (which also computes every mechanism metric). TRL: ``DistillationTrainer`` with
``beta=1`` (reverse KL) through its ``compute_loss``. Both loss values are reported: at
temperature 1 both are the token-mean reverse KL, so they must agree.

    python benchmarks/opd_step_vs_trl.py [--prompts 16 --responses 4 --repeats 5]

Needs the tiny models (``make run``) and TRL (``pip install -c constraints.txt -e '.[bench]'``).
Writes results/benchmarks/opd_step_vs_trl.json and .md.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from opd.train.generation import RolloutBatch, Sampling, sample_batch
from opd.train.losses import opd_loss
from opd.train.pair import load_pair, response_logits
from opd.core.prompts import EVAL_SUFFIX, chat_prompt


def rollouts(tok, student, prompts: list[str], n: int, max_new: int) -> RolloutBatch:
    texts = [chat_prompt(tok, p + EVAL_SUFFIX) for p in prompts for _ in range(n)]
    torch.manual_seed(0)
    return sample_batch(student, tok, texts, Sampling(max_new_tokens=max_new, temperature=1.0))


def our_step(student, teacher, opt, batch: RolloutBatch) -> float:
    with torch.no_grad():
        t_logits = response_logits(teacher, batch)
    loss, _ = opd_loss(response_logits(student, batch), t_logits, batch.response_ids,
                       batch.response_mask, variant="full")
    loss.backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def trl_trainer(student, teacher, tok, out: str):
    from datasets import Dataset
    from trl import DistillationConfig, DistillationTrainer

    args = DistillationConfig(output_dir=out, beta=1.0, temperature=1.0, learning_rate=1e-4,
                              per_device_train_batch_size=8, report_to=[], use_cpu=True,
                              max_grad_norm=1.0, logging_steps=1000, save_strategy="no",
                              gradient_checkpointing=False)  # as ours: no recomputation
    data = Dataset.from_dict({"prompt": [[{"role": "user", "content": "x"}]] * 8})
    tok.padding_side = "left"
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args,
                                  train_dataset=data, processing_class=tok)
    trainer.create_optimizer()
    return trainer


def trl_step(trainer, batch: RolloutBatch) -> float:
    model = trainer.model
    model.train()
    inputs = {"prompt_ids": batch.input_ids[:, :batch.prompt_width],
              "prompt_mask": batch.attention_mask[:, :batch.prompt_width],
              "completion_ids": batch.response_ids, "completion_mask": batch.response_mask}
    loss = trainer.compute_loss(model, inputs)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    return loss.item()


def timed(fn, repeats: int) -> tuple[list[float], float]:
    fn()  # warm-up
    times, value = [], 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return times, value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", default="results/models/tiny/student")
    ap.add_argument("--teacher", default="results/models/tiny/teacher_strong")
    ap.add_argument("--prompts-file", default="results/data/openthoughts_sample.parquet")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--responses", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("results/benchmarks"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tok, student, teacher = load_pair(args.student, args.teacher)
    prompts = pd.read_parquet(args.prompts_file)["prompt"].tolist()[:args.prompts]
    batch = rollouts(tok, student, prompts, args.responses, args.max_new_tokens)

    # the first step of each side starts from the same weights; loss values are compared there
    ours_model = copy.deepcopy(student)
    ours_opt = torch.optim.AdamW(ours_model.parameters(), lr=1e-4, weight_decay=0.0)
    probe = copy.deepcopy(student)
    first_ours = our_step(probe, teacher, torch.optim.SGD(probe.parameters(), lr=0.0), batch)
    ours_times, _ = timed(lambda: our_step(ours_model, teacher, ours_opt, batch), args.repeats)

    with tempfile.TemporaryDirectory() as tmp:
        trainer = trl_trainer(copy.deepcopy(student), teacher, tok, tmp)
        first_trl = trl_step(trl_trainer(copy.deepcopy(student), teacher, tok, tmp), batch)
        trl_times, _ = timed(lambda: trl_step(trainer, batch), args.repeats)

    ours_s, trl_s = statistics.median(ours_times), statistics.median(trl_times)
    result = {
        "sequences": len(batch.completions), "response_tokens": int(batch.response_mask.sum()),
        "width": int(batch.input_ids.shape[1]), "vocab": len(tok), "threads": args.threads,
        "cpu_count": os.cpu_count(), "repeats": args.repeats,
        "ours_seconds_median": round(ours_s, 4), "trl_seconds_median": round(trl_s, 4),
        "speedup_trl_over_ours": round(trl_s / ours_s, 2),
        "ours_loss": first_ours, "trl_loss": first_trl,
        "loss_abs_diff": abs(first_ours - first_trl), "target": "ours >= 2x faster",
        "what_a_step_includes": "teacher and student forward, loss, backward, grad clipping, "
                                "one AdamW update; ours also computes all mechanism metrics",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "opd_step_vs_trl.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "opd_step_vs_trl.md").write_text(
        "| benchmark | sequences x width | ours s (median) | TRL s (median) | TRL / ours | "
        "loss ours | loss TRL |\n|---|---|---|---|---|---|---|\n"
        f"| one OPD step, tiny pair | {result['sequences']} x {result['width']} | {ours_s:.3f} | "
        f"{trl_s:.3f} | {result['speedup_trl_over_ours']} | {first_ours:.5f} | {first_trl:.5f} |\n\n"
        f"A step: {result['what_a_step_includes']}. TRL: DistillationTrainer (trl 1.16, beta=1, "
        f"reverse KL). {args.threads} threads on a {os.cpu_count()}-core CPU. Target: ours >= 2x "
        "faster.\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
