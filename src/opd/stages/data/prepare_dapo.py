"""DAPO-Math-17k as a flat OPD prompt set.

DAPO rows hold a chat list in ``prompt`` whose user turn wraps the problem in DAPO's own
instruction ("Solve the following math problem step by step. ... Answer: $Answer"), and the
gold answer in ``reward_model.ground_truth``. The hub copy repeats each problem many times.
This stage keeps the first user turn, strips the instruction wrappers (so the OPD template adds
its own instruction, as for every other prompt set), drops repeats of the same problem
(whitespace-normalised), optionally draws a seeded sample of N, and writes a parquet
(prompt_id, prompt, answer, row) plus a stats JSON.

    python -m opd.stages.data.prepare_dapo --source '{"path": ...}' --out D.parquet --stats D.json \
        --params '{"n": null, "seed": 0, "on_bad_row": "fail"}'
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from opd.core.config import typed
from opd.core.data import DataError, describe, load_rows, prompt_id
from opd.core.dedup import dapo_problem, normalise, strip_wrappers
from opd.core.io import write_json, write_parquet

SCHEMA = pa.schema([("prompt_id", pa.string()), ("prompt", pa.string()), ("answer", pa.string()),
                    ("row", pa.int64())])


@dataclass
class DapoParams:
    """Config ``data.dapo_prompts`` with ``data.on_bad_row``."""
    n: int | None
    seed: int
    on_bad_row: str


def flatten(source: dict[str, Any], params: dict[str, Any]) -> tuple[pa.Table, dict[str, Any]]:
    cfg = typed(DapoParams, params, "data.dapo_prompts")
    rows, skipped = load_rows(source, "dapo", cfg.on_bad_row,
                              keep=["prompt", "reward_model"])
    seen: set[str] = set()
    unique, repeats = [], 0
    for i, r in rows:
        problem = strip_wrappers(dapo_problem(r)).strip()
        key = normalise(problem)
        if key in seen:
            repeats += 1
            continue
        seen.add(key)
        unique.append({"prompt_id": prompt_id(problem), "prompt": problem,
                       "answer": str(r["reward_model"]["ground_truth"]).strip(), "row": i})
    if not unique:
        raise DataError(f"{describe(source)}: no usable DAPO rows "
                        f"({len(rows)} valid, {len(skipped)} skipped as bad)")
    n = cfg.n
    if n is not None and n < len(unique):
        unique = random.Random(cfg.seed).sample(unique, n)
        unique.sort(key=lambda r: r["row"])
    stats = {"rows_in": len(rows) + len(skipped), "bad_rows_skipped": len(skipped),
             "repeats_dropped": repeats, "prompts_out": len(unique)}
    return pa.Table.from_pylist(unique, schema=SCHEMA), stats


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=json.loads, required=True, help="DAPO dataset spec as JSON")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--stats", type=Path, required=True)
    ap.add_argument("--params", type=json.loads, required=True)
    args = ap.parse_args(argv)
    table, stats = flatten(args.source, args.params)
    write_parquet(args.out, table)
    write_json(args.stats, stats)
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
