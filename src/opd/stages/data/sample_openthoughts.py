"""Sample math prompts from OpenThoughts3-1.2M.

Keeps ``domain == "math"`` rows, takes the first user turn of ``conversations`` as the prompt,
drops empty and duplicate prompts (whitespace-normalised), and draws a seeded sample of N.
Writes a parquet (prompt_id, prompt, answer, source, difficulty, row) and a stats JSON;
``answer`` is the last \\boxed{} of the reference response, or null when it has none.

    python -m opd.stages.data.sample_openthoughts --source '{"path": ...}' --out S.parquet --stats S.json \
        --params '{"n": 300, "domain": "math", "seed": 0, "on_bad_row": "fail"}'
"""

from __future__ import annotations

import argparse
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from opd.core.config import typed
from opd.core.data import load_rows, prompt_id
from opd.core.grading import last_boxed
from opd.core.io import write_json, write_parquet

USER_ROLES = ("human", "user")
SCHEMA = pa.schema([("prompt_id", pa.string()), ("prompt", pa.string()), ("answer", pa.string()),
                    ("source", pa.string()), ("difficulty", pa.int64()), ("row", pa.int64())])


@dataclass
class SampleParams:
    """Config ``data.openthoughts_sample`` with ``data.on_bad_row``."""
    n: int
    domain: str
    seed: int
    on_bad_row: str


def sample(source: dict[str, Any], params: dict[str, Any]) -> tuple[pa.Table, dict[str, Any]]:
    cfg = typed(SampleParams, params, "data.openthoughts_sample")
    rows, skipped = load_rows(source, "openthoughts", cfg.on_bad_row,
                              keep=["source", "difficulty"])
    stats = {"rows_in": len(rows) + len(skipped), "bad_rows_skipped": len(skipped)}
    math = [(i, r) for i, r in rows if r["domain"] == cfg.domain]
    seen, unique, empty, dups = set(), [], 0, 0
    for i, r in math:
        turns = [t["value"] for t in r["conversations"] if t["from"] in USER_ROLES]
        replies = [t["value"] for t in r["conversations"] if t["from"] not in USER_ROLES]
        prompt = turns[0].strip() if turns else ""
        if not prompt:
            empty += 1
            continue
        key = re.sub(r"\s+", " ", prompt)
        if key in seen:
            dups += 1
            continue
        seen.add(key)
        unique.append({"prompt_id": prompt_id(prompt), "prompt": prompt,
                       "answer": last_boxed(replies[-1]) if replies else None,
                       "source": r.get("source") or "", "difficulty": int(r.get("difficulty") or 0),
                       "row": i})
    n = min(cfg.n, len(unique))
    picked = random.Random(cfg.seed).sample(unique, n)
    stats.update({"math_rows": len(math), "empty_dropped": empty, "duplicates_dropped": dups,
                  "unique_prompts": len(unique), "requested": cfg.n, "sampled": n,
                  "seed": cfg.seed})
    return pa.Table.from_pylist(picked, schema=SCHEMA), stats


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=json.loads, required=True, help="dataset spec as JSON")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--stats", type=Path, required=True)
    ap.add_argument("--params", type=json.loads, required=True)
    args = ap.parse_args(argv)
    table, stats = sample(args.source, args.params)
    if stats["sampled"] < stats["requested"]:
        print(f"warning: only {stats['sampled']} unique math prompts for n={stats['requested']}")
    write_parquet(args.out, table)
    write_json(args.stats, stats)
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
