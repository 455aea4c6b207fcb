"""Dedup result table (CSV + Markdown) from the exact and semantic stats.

    python -m opd.stages.data.dedup_table --stats semantic_stats.json --csv T.csv --md T.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from opd.core.io import atomic_path, write_text


def rows(stats: dict) -> list[tuple[str, str]]:
    out = [("DeepMath rows in", stats["rows_in"]),
           ("removed: exact match", stats["exact_removed"]),
           (f"removed: semantic (cosine >= {stats['threshold']})", stats["semantic_removed"]),
           ("kept", stats["kept"])]
    truth = stats.get("ground_truth", {})
    for stage in ("exact", "semantic", "overall"):
        if stage not in truth:
            continue
        pr = truth[stage]
        out.append((f"{stage}: precision vs planted", f"{pr['precision']:.3f}"))
        out.append((f"{stage}: recall vs planted", f"{pr['recall']:.3f}"))
    return [(k, str(v)) for k, v in out]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stats", type=Path, required=True)
    ap.add_argument("--csv", type=Path, required=True)
    ap.add_argument("--md", type=Path, required=True)
    args = ap.parse_args(argv)
    stats = json.loads(args.stats.read_text())
    table = rows(stats)
    with atomic_path(args.csv) as tmp:
        tmp.write_text("quantity,value\n" + "".join(f'"{k}",{v}\n' for k, v in table))
    md = ["# DeepMath-103K deduplicated against DAPO-Math-17k", "",
          f"Source: `{stats['source']}`; embeddings: `{stats['embedding_model']}`.", "",
          "| quantity | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in table]
    write_text(args.md, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
