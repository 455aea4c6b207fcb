"""Model card of one tiny model: greedy accuracy on the probe set (by difficulty) and on the
tiny benchmarks, the share of outputs in each thinking pattern, lengths and format errors.

    python -m opd.stages.tiny.tiny_model_card --model results/models/tiny/student --world results/world/tiny \
        --out results/models/tiny/student.card.json --params '{...}'
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from opd.core.cli import parse_stage_args
from opd.core.config import typed
from opd.core.data import load_benchmark
from opd.train.generation import Sampling, generate
from opd.core.grading import is_correct, last_boxed
from opd.core.io import read_table, write_json
from opd.core.prompts import EVAL_SUFFIX, chat_prompt
from opd.tiny.problems import detect_pattern


@dataclass
class CardParams:
    """Config ``tiny_models.card`` with the benchmarks and the seed."""
    max_new_tokens: int
    batch_size: int
    benchmarks: dict[str, dict[str, Any]]
    seed: int


def score(model: Any, tokenizer: Any, problems: pd.DataFrame, params: CardParams) -> pd.DataFrame:
    """Greedy responses to ``problems`` with correctness, pattern and length per row."""
    prompts = [chat_prompt(tokenizer, p + EVAL_SUFFIX) for p in problems["problem"]]
    sampling = Sampling(max_new_tokens=params.max_new_tokens, temperature=0.0,
                        seed=params.seed)
    outs = [c[0] for c in generate(model, tokenizer, prompts, sampling, params.batch_size)]
    df = problems.copy()
    df["response"] = [o.text for o in outs]
    df["correct"] = [is_correct(o.text, a) for o, a in zip(outs, df["answer"])]
    df["pattern"] = [detect_pattern(o.text) or "none" for o in outs]
    df["boxed"] = [last_boxed(o.text) is not None for o in outs]
    df["tokens"] = [o.response_tokens for o in outs]
    return df


def summarise(df: pd.DataFrame) -> dict[str, Any]:
    return {"accuracy": round(float(df["correct"].mean()), 4), "n": int(len(df)),
            "format_error_rate": round(float(1 - df["boxed"].mean()), 4),
            "mean_response_tokens": round(float(df["tokens"].mean()), 2)}


def card(model_dir: Path, world: Path, settings: dict[str, Any]) -> dict[str, Any]:
    params = typed(CardParams, settings, "tiny_models.card")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                 trust_remote_code=False).eval()
    probe = score(model, tokenizer, read_table(world / "probe.parquet"), params)
    by_level = {str(d): round(float(g["correct"].mean()), 4)
                for d, g in probe.groupby("difficulty")}
    triple = probe["problem"].str.contains("*3", regex=False)   # the teachers' new step
    patterns = probe["pattern"].value_counts(normalize=True).round(4).to_dict()
    out: dict[str, Any] = {
        "model": model_dir.name,
        "recipe": json.loads((model_dir / "recipe.json").read_text()),
        "probe": {**summarise(probe), "by_difficulty": by_level,
                  "easy_accuracy": round(float(probe[probe.difficulty <= 3].correct.mean()), 4),
                  "hard_accuracy": round(float(probe[probe.difficulty >= 4].correct.mean()), 4),
                  "triple_accuracy": round(float(probe[triple].correct.mean()), 4)},
        "patterns": {p: float(patterns.get(p, 0.0)) for p in ("chain", "tally", "none")},
        "benchmarks": {},
        "decoding": "greedy",
    }
    for name, spec in params.benchmarks.items():
        out["benchmarks"][name] = summarise(score(model, tokenizer, load_benchmark(spec), params))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--world", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = parse_stage_args(ap, argv, threads=1)
    result = card(args.model, args.world, args.params)
    write_json(args.out, result)
    print(json.dumps({"probe": result["probe"]["accuracy"], "patterns": result["patterns"]}))


if __name__ == "__main__":
    main()
