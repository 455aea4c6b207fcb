"""Merge teacher-rollout shards, drop incomplete and degenerate responses, write the SFT set.

The SFT set is a parquet file in the chat format that SFT trainers read: a ``messages`` column
of ``[{"role": "user", ...}, {"role": "assistant", ...}]`` turns, plus the prompt id. Up to
``keep_per_prompt`` accepted responses are kept per prompt. The stats JSON counts every
response by outcome (kept, or the first rule that dropped it) and the prompts left without data.

    python -m opd.stages.rollouts.filter_rollouts --shards a.parquet b.parquet --out sft.parquet \
        --stats stats.json --params '{"template": ..., "keep_per_prompt": 1, "filters": {...}}'
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

from opd.core.config import typed
from opd.core.filters import REASONS, FilterRules, reject_reason
from opd.core.io import read_table, write_json, write_parquet
from opd.core.prompts import apply_template
from opd.core.schemas import SFT_SET


@dataclass
class FilterParams:
    """The rollout set's template and keep count, and the filters (config ``filters``)."""
    template: str
    keep_per_prompt: int
    filters: dict[str, int]


def filter_rows(df: pd.DataFrame, params: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    cfg = typed(FilterParams, params, "filter_rollouts")
    rules = FilterRules.from_config(cfg.filters)
    df = df.sort_values(["prompt_id", "attempt", "sample"], kind="stable")
    outcome: Counter[str] = Counter()
    kept: list[dict[str, Any]] = []
    per_prompt: Counter[int] = Counter()
    for row in df.itertuples(index=False):
        why = reject_reason(row.response, row.finish_reason, rules)
        outcome[why or "kept"] += 1
        if why is None and per_prompt[row.prompt_id] < cfg.keep_per_prompt:
            per_prompt[row.prompt_id] += 1
            user = apply_template(cfg.template, row.prompt)
            kept.append({"prompt_id": int(row.prompt_id),
                         "messages": [{"role": "user", "content": user},
                                      {"role": "assistant", "content": row.response}]})
    prompts = int(df["prompt_id"].nunique())
    stats = {
        "responses": int(len(df)),
        "accepted": outcome["kept"],
        "sft_examples": len(kept),
        "dropped": {r: outcome[r] for r in REASONS},
        "prompts": prompts,
        "prompts_without_data": prompts - len(per_prompt),
        "prompts_retried": int(df.loc[df["attempt"] > 0, "prompt_id"].nunique()),
        "mean_response_tokens_kept": float(
            df.loc[[reject_reason(r, f, rules) is None
                    for r, f in zip(df["response"], df["finish_reason"])],
                   "response_tokens"].mean()) if outcome["kept"] else 0.0,
    }
    return kept, stats


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=Path, nargs="+", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--stats", type=Path, required=True)
    ap.add_argument("--params", type=json.loads, required=True)
    args = ap.parse_args(argv)
    df = pd.concat([read_table(p) for p in args.shards], ignore_index=True)
    kept, stats = filter_rows(df, args.params)
    if not kept:
        raise SystemExit(f"filter_rollouts: no response passed the filters ({stats['dropped']})")
    write_parquet(args.out, pa.Table.from_pylist(kept, schema=SFT_SET))
    write_json(args.stats, stats)
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
