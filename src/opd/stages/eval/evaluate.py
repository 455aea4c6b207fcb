"""Evaluate one model on its benchmarks: N samples per problem, graded on the last \\boxed{}.

The model is loaded once and samples every benchmark's prompts in one pass. For each
benchmark it writes every sample (parquet: problem index, sample index, response, finish
reason, token counts, extracted answer, correctness) and a summary JSON: avg@N (mean accuracy
over all samples), pass@N (a problem counts when any of its N samples is right), problems
solved by none / by all samples, mean response length, format-error rate (no final boxed
answer) and truncation rate. ``patterns`` adds the share of responses in each tiny-world
thinking pattern.

    python -m opd.stages.eval.evaluate --model M \
        --benchmarks '{"aime24": {"path": ..., "problem_field": ...}, ...}' \
        --out-dir results/eval/NAME \
        --params '{"n": 16, "temperature": 0.7, "top_p": 0.95, "max_new_tokens": ..., ...}'

writes ``results/eval/NAME/<benchmark>.parquet`` (the samples) and ``.json`` (the summary).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from opd.core.cli import parse_stage_args
from opd.core.config import typed
from opd.core.data import load_benchmark
from opd.train.engine import EngineParams, make_engine
from opd.train.generation import Completion, Sampling
from opd.core.grading import is_correct, last_boxed
from opd.core.io import write_json, write_parquet
from opd.core.prompts import apply_template, chat_prompt
from opd.core.models import ModelRef


def pass_at_n(correct: list[list[bool]]) -> float:
    """Share of problems with at least one correct sample."""
    return sum(any(c) for c in correct) / max(1, len(correct))


def avg_at_n(correct: list[list[bool]]) -> float:
    """Mean accuracy over every sample of every problem."""
    flat = [x for c in correct for x in c]
    return sum(flat) / max(1, len(flat))


def summarise(correct: list[list[bool]], completions: list[list[Completion]],
              patterns: list[list[str | None]] | None = None) -> dict[str, Any]:
    flat = [c for cs in completions for c in cs]
    n = max(1, len(flat))
    out: dict[str, Any] = {
        "problems": len(correct),
        "samples_per_problem": len(correct[0]) if correct else 0,
        "avg_at_n": avg_at_n(correct),
        "pass_at_n": pass_at_n(correct),
        "solved_by_none": sum(not any(c) for c in correct),
        "solved_by_all": sum(all(c) for c in correct if c),
        "mean_response_tokens": sum(c.response_tokens for c in flat) / n,
        "format_error_rate": sum(last_boxed(c.text) is None for c in flat) / n,
        "truncated_rate": sum(c.finish_reason == "length" for c in flat) / n,
    }
    if patterns is not None:
        counts = Counter(p or "other" for ps in patterns for p in ps)
        out["pattern_share"] = {k: counts[k] / n for k in sorted(counts)}
    return out


@dataclass
class EvalParams(EngineParams):
    """Config ``evaluation`` (less its model list, template resolved) and ``generation``."""
    n: int
    temperature: float
    top_p: float
    max_new_tokens: int
    template: str
    seed: int
    patterns: bool


def write_benchmark(bench: pd.DataFrame, completions: list[list[Completion]], cfg: EvalParams,
                    out_dir: Path, name: str, header: dict[str, str]) -> dict[str, Any]:
    """Grade one benchmark's completions; write its samples and summary; return the summary."""
    correct = [[is_correct(c.text, gold) for c in cs]
               for cs, gold in zip(completions, bench["answer"])]
    patterns = None
    if cfg.patterns:
        from opd.tiny.problems import detect_pattern
        patterns = [[detect_pattern(c.text) for c in cs] for cs in completions]
    rows = [{"problem": i, "sample": j, "response": c.text, "finish_reason": c.finish_reason,
             "prompt_tokens": c.prompt_tokens, "response_tokens": c.response_tokens,
             "extracted": last_boxed(c.text), "gold": str(bench["answer"][i]), "correct": ok}
            for i, (cs, oks) in enumerate(zip(completions, correct))
            for j, (c, ok) in enumerate(zip(cs, oks))]
    write_parquet(out_dir / f"{name}.parquet", pa.Table.from_pylist(rows))
    summary = {**header, "benchmark": name, **summarise(correct, completions, patterns)}
    write_json(out_dir / f"{name}.json", summary)
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=ModelRef.parse, required=True,
                    help="model directory or hub id (or the workflow's JSON spec)")
    ap.add_argument("--benchmarks", type=json.loads, required=True,
                    help="benchmark specs by name (JSON)")
    ap.add_argument("--out-dir", type=Path, required=True,
                    help="directory for <benchmark>.parquet and <benchmark>.json")
    args = parse_stage_args(ap, argv, threads=1)
    cfg = typed(EvalParams, args.params, "evaluation")
    if not args.benchmarks:
        raise SystemExit("--benchmarks: no benchmark given")
    benches = {name: load_benchmark(spec) for name, spec in args.benchmarks.items()}
    engine, tok = make_engine(cfg.engine, args.model, batch_size=cfg.batch_size,
                              tensor_parallel_size=cfg.tensor_parallel_size, seed=cfg.seed)
    sampling = Sampling(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                        top_p=cfg.top_p, n=cfg.n, seed=cfg.seed)
    prompts = [chat_prompt(tok, apply_template(cfg.template, p), args.model.thinking)
               for bench in benches.values() for p in bench["problem"]]
    completions = engine.generate(prompts, sampling)   # every benchmark in one pass
    header = {"model": str(args.model), "engine": engine.name}
    start = 0
    for name, bench in benches.items():
        mine = completions[start:start + len(bench)]
        start += len(bench)
        summary = write_benchmark(bench, mine, cfg, args.out_dir, name, header)
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
