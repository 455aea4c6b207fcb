"""Benchmark: vLLM's CPU build against ``transformers`` generation on the tiny world's jobs.

Two jobs, each run by both engines in this one process (``transformers`` first, since vLLM's
CPU worker pins the process's threads when it starts):
- OPD rollouts: one step's sampling, 16 prompts x 4 responses, up to 96 new tokens at
  temperature 1 (the tiny ``opd`` settings): ``generation.sample_batch`` on the student
  (one ``generate`` call, as ``opd_train`` samples) against the colocated ``VLLMRollouts``;
- evaluation: the student on the three tiny benchmarks, 4 samples per problem at temperature
  0.7, top-p 0.95, up to 96 new tokens (the tiny ``evaluation`` settings), through each
  engine's ``generate``.
Each job is timed as the median of ``--repeats`` calls after a warm-up call; the engine's
start-up (vLLM loads the model and sets up its KV cache) is reported separately. Generated
tokens per second count every response token.

    PYTHONPATH=src .venv-vllm/bin/python benchmarks/vllm_cpu_generation.py   # make bench-vllm

Needs the tiny models (``make run``) and the vLLM environment (``make vllm-env``).
Writes results/benchmarks/vllm_cpu_generation.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import pandas as pd
import torch

from opd.core.data import load_benchmark
from opd.core.models import ModelRef
from opd.core.prompts import apply_template, chat_prompt
from opd.train.engine import TransformersEngine, VLLMRollouts
from opd.train.generation import Sampling, sample_batch
from opd.train.pair import load_model, load_tokenizer

TEMPLATE = "{problem} Please reason step by step, and put your final answer within \\boxed{}."
BENCHMARKS = {"aime24": "problem", "aime25": "problem", "amc23": "question"}


def timed(fn, repeats: int) -> tuple[float, int]:
    """(median seconds, generated tokens of the last call) after one warm-up call."""
    fn()
    times, tokens = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        tokens = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", default="results/models/tiny/student")
    ap.add_argument("--world", type=Path, default=Path("results/world/tiny"))
    ap.add_argument("--prompts-file", default="results/data/openthoughts_sample.parquet")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--responses", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--eval-samples", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("results/benchmarks"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tok = load_tokenizer(args.student)
    rollout_prompts = [chat_prompt(tok, apply_template(TEMPLATE, p))
                       for p in pd.read_parquet(args.prompts_file)["prompt"][:args.prompts]
                       for _ in range(args.responses)]
    eval_prompts = [chat_prompt(tok, apply_template(TEMPLATE, p))
                    for name, field in BENCHMARKS.items()
                    for p in load_benchmark({"path": str(args.world / f"{name}.parquet"),
                                             "problem_field": field,
                                             "answer_field": "answer"})["problem"]]
    rollout = Sampling(max_new_tokens=args.max_new_tokens, temperature=1.0, seed=0)
    evaluation = Sampling(max_new_tokens=args.max_new_tokens, temperature=0.7, top_p=0.95,
                          n=args.eval_samples, seed=0)

    def eval_call(engine):
        return lambda: sum(c.response_tokens for cs in engine.generate(
            eval_prompts, evaluation, progress=False) for c in cs)

    rows = []
    t0 = time.perf_counter()
    model = load_model(args.student, "cpu").eval()
    hf = TransformersEngine(model, tok, batch_size=128)
    start = time.perf_counter() - t0
    rows.append(("OPD rollouts", "transformers", start, *timed(
        lambda: int(sample_batch(model, tok, rollout_prompts, rollout).response_mask.sum()),
        args.repeats)))
    rows.append(("evaluation", "transformers", start, *timed(eval_call(hf), args.repeats)))

    t0 = time.perf_counter()
    gen = VLLMRollouts(ModelRef.of(args.student), seed=0, gpu_memory_utilization=0.3,
                       max_model_len=1024)
    start = time.perf_counter() - t0
    rows.append(("OPD rollouts", "vllm", start, *timed(
        lambda: int(gen.sample(rollout_prompts, rollout, tok, "cpu").response_mask.sum()),
        args.repeats)))
    rows.append(("evaluation", "vllm", start, *timed(eval_call(gen.engine), args.repeats)))

    table = [{"job": job, "engine": name, "startup_seconds": round(s, 2),
              "seconds_median": round(t, 3), "generated_tokens": n,
              "tokens_per_second": round(n / t)} for job, name, s, t, n in rows]
    result = {"threads": args.threads, "cpu_count": os.cpu_count(), "repeats": args.repeats,
              "rollout_sequences": len(rollout_prompts), "eval_prompts": len(eval_prompts),
              "eval_samples": args.eval_samples, "max_new_tokens": args.max_new_tokens,
              "rows": table}
    speed = {job: {r["engine"]: r["seconds_median"] for r in table if r["job"] == job}
             for job in ("OPD rollouts", "evaluation")}
    result["vllm_speedup"] = {job: round(s["transformers"] / s["vllm"], 2)
                              for job, s in speed.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vllm_cpu_generation.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| job | engine | start-up s | s per call (median) | generated tokens | tokens/s |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['job']} | {r['engine']} | {r['startup_seconds']} | {r['seconds_median']} | "
              f"{r['generated_tokens']} | {r['tokens_per_second']} |" for r in table]
    lines += ["", f"OPD rollouts: {len(rollout_prompts)} sequences per call; evaluation: "
              f"{len(eval_prompts)} problems x {args.eval_samples} samples. vLLM speed-up "
              f"(transformers s / vLLM s): rollouts {result['vllm_speedup']['OPD rollouts']}, "
              f"evaluation {result['vllm_speedup']['evaluation']}. {args.threads} threads on a "
              f"{os.cpu_count()}-core CPU; the tiny student in float32."]
    (args.out / "vllm_cpu_generation.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
