"""Benchmark: one on-policy OPD step on the tiny pair, generation included, ours against TRL's
DistillationTrainer used on-policy.

Both sides start from the same student and teacher weights and sample the same prompts (16
tiny OpenThoughts prompts x 4 responses by default) with the settings of the tiny config's
``strong_teacher`` experiment, the ones ``make run`` trains with: its sampling temperature (1),
no top-p or top-k, up to 96 new tokens, float32, its learning rate, weight decay and gradient
clipping. A step is timed from the prompts to the updated weights: the student samples its
rollouts, the teacher scores them, loss, backward, gradient clipping and one AdamW update.

- Ours: ``opd.train.generation.sample_batch`` (the sampling loop ``opd_train`` uses), then
  ``opd_train.update`` with the experiment's OPD settings (the full-vocabulary reverse KL, one
  loss chunk per micro-batch, position buckets of 16), which also computes every mechanism
  metric of the training log, per position bucket too. Both run each prompt once for its 4
  responses (prefill, and the teacher's and student's forward and backward passes).
- TRL: ``DistillationTrainer`` (in trl 1.16 it always generates on-policy) with ``beta=1`` (reverse
  KL): ``_generate_and_score_completions`` (its ``transformers`` generation), then
  ``compute_loss``, backward, clipping and its optimizer step.

The two sides draw different random samples, so their responses differ; both mean response
lengths are reported. Each side's time is split into generation and update. The sides take
turns, one step each, so that a change in the machine's load touches both alike; the ratio is
the median of the per-pair ratios.

    python benchmarks/opd_step_vs_trl.py [--config config/config.yaml --experiment strong_teacher]
        [--prompts 16 --responses 4 --repeats 15]

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

from opd.core.config import load
from opd.core.prompts import EVAL_SUFFIX, chat_prompt
from opd.stages.opd.opd_train import OPDParams, update
from opd.train.generation import Sampling, sample_batch
from opd.train.pair import load_pair


def our_params(config_path: Path, experiment: str, max_new: int) -> OPDParams:
    """The OPD settings ``experiment`` of the config trains with (the tiny config's
    ``strong_teacher``: the full-vocabulary reverse KL, one chunk per micro-batch, position
    buckets of 16), with ``max_new`` response tokens."""
    config = load(config_path)
    if experiment not in config["experiments"]:
        raise SystemExit(f"{config_path}: no experiment {experiment!r} under experiments:")
    cfg = {**config["opd"], **config["experiments"][experiment]["opd"],
           "max_response_tokens": max_new, "steps": 1, "seed": 0, "template": "{problem}"}
    if cfg["variant"] != "full":
        raise SystemExit(f"{config_path}: experiment {experiment} trains with opd.variant "
                         f"{cfg['variant']!r}, not the full-vocabulary reverse KL that TRL's "
                         "side computes")
    return OPDParams.from_config(cfg)


def our_step(student, teacher, opt, tok, texts: list[str], cfg: OPDParams
             ) -> tuple[float, float, float]:
    """(generation seconds, update seconds, mean response tokens) of one step."""
    t0 = time.perf_counter()
    student.eval()
    batch = sample_batch(student, tok, texts, Sampling(max_new_tokens=cfg.max_response_tokens,
                                                       temperature=cfg.temperature))
    student.train()
    t1 = time.perf_counter()
    tokens = int(batch.response_mask.sum())
    update(student, teacher, opt, batch, cfg, tokens)
    return t1 - t0, time.perf_counter() - t1, tokens / len(texts)


def trl_trainer(student, teacher, tok, out: str, batch_size: int, cfg: OPDParams):
    from datasets import Dataset
    from trl import DistillationConfig, DistillationTrainer

    args = DistillationConfig(output_dir=out, beta=1.0, temperature=cfg.temperature, top_p=1.0,
                              top_k=0, max_completion_length=cfg.max_response_tokens,
                              learning_rate=cfg.lr, weight_decay=cfg.weight_decay,
                              # the prompts ours samples: chat template, thinking off
                              chat_template_kwargs={"enable_thinking": False},
                              per_device_train_batch_size=batch_size, report_to=[], use_cpu=True,
                              max_grad_norm=cfg.grad_clip, logging_steps=1000, save_strategy="no",
                              gradient_checkpointing=False)  # as ours: no recomputation
    data = Dataset.from_dict({"prompt": [[{"role": "user", "content": "x"}]] * batch_size})
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args,
                                  train_dataset=data, processing_class=tok)
    trainer.create_optimizer()
    return trainer


def trl_step(trainer, prompts: list[list[dict]]) -> tuple[float, float, float]:
    model = trainer.model
    t0 = time.perf_counter()
    model.train()
    inputs = trainer._generate_and_score_completions([{"prompt": p} for p in prompts])
    t1 = time.perf_counter()
    loss = trainer.compute_loss(model, inputs)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), trainer.args.max_grad_norm)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    tokens = float(inputs["completion_mask"].sum()) / len(prompts)
    return t1 - t0, time.perf_counter() - t1, tokens


def summary(runs: list[tuple[float, float, float]]) -> dict[str, float]:
    gen, upd, lengths = zip(*runs)
    total = [g + u for g, u in zip(gen, upd)]
    return {"step_seconds_median": round(statistics.median(total), 4),
            "generation_seconds_median": round(statistics.median(gen), 4),
            "update_seconds_median": round(statistics.median(upd), 4),
            "mean_response_tokens": round(statistics.mean(lengths), 1)}


def interleaved(ours, trl, repeats: int) -> tuple[dict, dict, list[float]]:
    """Both sides' step statistics and the TRL / ours ratio of each pair of steps. The sides
    take turns, each pair from the same random seed, so a change in the machine's load
    touches both alike."""
    for fn in (ours, trl):  # warm-up
        fn()
    runs: dict[str, list] = {"ours": [], "trl": []}
    for i in range(repeats):
        for name, fn in (("ours", ours), ("trl", trl)):
            torch.manual_seed(1000 + i)
            runs[name].append(fn())
    ratios = [(tg + tu) / (og + ou) for (og, ou, _), (tg, tu, _) in zip(runs["ours"], runs["trl"])]
    return summary(runs["ours"]), summary(runs["trl"]), ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", default="results/models/tiny/student")
    ap.add_argument("--teacher", default="results/models/tiny/teacher_strong")
    ap.add_argument("--prompts-file", default="results/data/openthoughts_sample.parquet")
    ap.add_argument("--config", type=Path, default=Path("config/config.yaml"))
    ap.add_argument("--experiment", default="strong_teacher",
                    help="the experiment whose OPD settings our side runs")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--responses", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("results/benchmarks"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tok, student, teacher = load_pair(args.student, args.teacher)
    problems = pd.read_parquet(args.prompts_file)["prompt"].tolist()[:args.prompts]
    messages = [[{"role": "user", "content": p + EVAL_SUFFIX}]
                for p in problems for _ in range(args.responses)]
    texts = [chat_prompt(tok, m[0]["content"]) for m in messages]

    cfg = our_params(args.config, args.experiment, args.max_new_tokens)
    ours_model = copy.deepcopy(student)
    ours_opt = torch.optim.AdamW(ours_model.parameters(), lr=cfg.lr,
                                 weight_decay=cfg.weight_decay)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = trl_trainer(copy.deepcopy(student), teacher, tok, tmp, len(messages), cfg)
        torch.manual_seed(0)
        ours, trl, ratios = interleaved(
            lambda: our_step(ours_model, teacher, ours_opt, tok, texts, cfg),
            lambda: trl_step(trainer, messages), args.repeats)

    ratio = round(statistics.median(ratios), 2)
    result = {
        "sequences": len(texts), "max_new_tokens": args.max_new_tokens, "vocab": len(tok),
        "threads": args.threads, "cpu_count": os.cpu_count(), "repeats": args.repeats,
        "ours": ours, "trl": trl, "speedup_trl_over_ours": ratio,
        "speedup_per_pair": [round(r, 3) for r in ratios],
        "target": "ours >= 2x faster", "met": ratio >= 2.0,
        "what_a_step_includes": "student sampling, teacher and student forward, loss, backward, "
                                "grad clipping, one AdamW update; ours also computes all "
                                "mechanism metrics",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "opd_step_vs_trl.json").write_text(json.dumps(result, indent=2) + "\n")
    row = lambda name, r: (f"| {name} | {r['generation_seconds_median']:.3f} | "  # noqa: E731
                           f"{r['update_seconds_median']:.3f} | {r['step_seconds_median']:.3f} | "
                           f"{r['mean_response_tokens']} |")
    (args.out / "opd_step_vs_trl.md").write_text(
        f"One on-policy OPD step on the tiny pair, {len(texts)} sequences, up to "
        f"{args.max_new_tokens} new tokens, {args.threads} threads on a {os.cpu_count()}-core "
        "CPU; the sides take turns step by step (medians).\n\n"
        "| side | generation s | update s | step s | mean response tokens |\n|---|---|---|---|---|\n"
        + row("ours", ours) + "\n" + row("TRL DistillationTrainer (trl 1.16, on-policy, beta 1)", trl)
        + f"\n\nTRL / ours: {ratio}x, the median over {args.repeats} pairs of steps "
        f"(range {min(ratios):.2f}-{max(ratios):.2f}x; target: >= 2x). A step: {result['what_a_step_includes']}.\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
