"""Exact dedup of DeepMath-103K against DAPO-Math-17k on normalised problem text.

Writes the removed rows (DeepMath row, matching DAPO row, normalised text) and stats. The
semantic stage reads the original DeepMath file and this table, so the kept set keeps the
original schema.

    python -m opd.stages.data.dedup_exact --dapo '{"path": ...}' --deepmath '{"path": ...}' \
        --removed R.parquet --stats S.json [--on-bad-row skip]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pyarrow as pa

from opd.core.data import load_rows
from opd.core.dedup import dapo_problem, normalise
from opd.core.io import write_json, write_parquet

REMOVED_SCHEMA = pa.schema([("deepmath_row", pa.int64()), ("dapo_row", pa.int64()),
                            ("normalised", pa.string())])


def exact_matches(dapo_texts: list[tuple[int, str]], deep_texts: list[tuple[int, str]]
                  ) -> list[dict[str, Any]]:
    """DeepMath rows whose normalised text equals a DAPO one (first DAPO match recorded)."""
    index: dict[str, int] = {}
    for row, text in dapo_texts:
        index.setdefault(normalise(text), row)
    removed = []
    for row, text in deep_texts:
        key = normalise(text)
        if key in index:
            removed.append({"deepmath_row": row, "dapo_row": index[key], "normalised": key})
    return removed


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dapo", type=json.loads, required=True)
    ap.add_argument("--deepmath", type=json.loads, required=True)
    ap.add_argument("--removed", type=Path, required=True)
    ap.add_argument("--stats", type=Path, required=True)
    ap.add_argument("--on-bad-row", choices=["fail", "skip"], default="fail")
    args = ap.parse_args(argv)
    dapo, dapo_bad = load_rows(args.dapo, "dapo", args.on_bad_row, keep=["prompt"])
    deep, deep_bad = load_rows(args.deepmath, "deepmath", args.on_bad_row, keep=["question"])
    removed = exact_matches([(i, dapo_problem(r)) for i, r in dapo],
                            [(i, r["question"]) for i, r in deep])
    write_parquet(args.removed, pa.Table.from_pylist(removed, schema=REMOVED_SCHEMA))
    stats = {"dapo_rows": len(dapo), "deepmath_rows": len(deep),
             "bad_rows_skipped": len(dapo_bad) + len(deep_bad), "exact_removed": len(removed)}
    write_json(args.stats, stats)
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
