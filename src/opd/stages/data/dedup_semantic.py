"""Semantic dedup of DeepMath-103K against DAPO-Math-17k with FAISS.

For every DeepMath row left by the exact stage, the nearest DAPO problem is found by inner
product over L2-normalised sentence embeddings (``faiss.IndexFlatIP``, exact search), and the
row is removed when that cosine is >= the threshold (0.6 in the paper). Writes the kept
DeepMath rows in their original schema and order, the removed pairs with their scores, and
stats; with ``--planted`` (the tiny world's ground truth) also precision and recall.

    python -m opd.stages.data.dedup_semantic --dapo '{...}' --deepmath '{...}' --exact-removed R.parquet \
        --emb-dapo D.npy --emb-deepmath M.npy --meta meta.json --threshold 0.6 \
        --kept K.parquet --removed P.parquet --stats S.json [--planted G.parquet]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from opd.core.data import describe, iter_rows, load_rows
from opd.core.dedup import dapo_problem
from opd.core.io import write_json, write_parquet

REMOVED_SCHEMA = pa.schema([("deepmath_row", pa.int64()), ("question", pa.string()),
                            ("dapo_row", pa.int64()), ("dapo_question", pa.string()),
                            ("score", pa.float32())])


def nearest(dapo_emb: np.ndarray, query_emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 inner-product neighbour in ``dapo_emb`` of every row of ``query_emb``."""
    import faiss

    index = faiss.IndexFlatIP(dapo_emb.shape[1])
    index.add(np.ascontiguousarray(dapo_emb, dtype=np.float32))
    if len(query_emb) == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    scores, ids = index.search(np.ascontiguousarray(query_emb, dtype=np.float32), 1)
    return scores[:, 0], ids[:, 0]


def is_duplicate(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Cosine >= threshold, compared in float32 so a score of exactly the threshold counts."""
    return np.asarray(scores, dtype=np.float32) >= np.float32(threshold)


def precision_recall(found: set[int], truth: set[int]) -> dict[str, float | int]:
    tp = len(found & truth)
    return {"true_positives": tp, "false_positives": len(found - truth),
            "false_negatives": len(truth - found),
            "precision": round(tp / len(found), 4) if found else 1.0,
            "recall": round(tp / len(truth), 4) if truth else 1.0}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dapo", type=json.loads, required=True)
    ap.add_argument("--deepmath", type=json.loads, required=True)
    ap.add_argument("--exact-removed", type=Path, required=True)
    ap.add_argument("--emb-dapo", type=Path, required=True)
    ap.add_argument("--emb-deepmath", type=Path, required=True)
    ap.add_argument("--meta", type=Path, required=True)
    ap.add_argument("--threshold", type=float, required=True)
    ap.add_argument("--kept", type=Path, required=True)
    ap.add_argument("--removed", type=Path, required=True)
    ap.add_argument("--stats", type=Path, required=True)
    ap.add_argument("--planted", type=Path, default=None)
    ap.add_argument("--on-bad-row", choices=["fail", "skip"], default="fail")
    args = ap.parse_args(argv)

    meta = json.loads(args.meta.read_text())
    dapo_emb, deep_emb = np.load(args.emb_dapo), np.load(args.emb_deepmath)
    dapo_rows, deep_rows = meta["dapo_rows"], meta["deepmath_rows"]
    if len(dapo_rows) != len(dapo_emb) or len(deep_rows) != len(deep_emb):
        raise ValueError(f"{args.meta}: embedding counts do not match the row lists; "
                         "rerun the embedding rule")
    exact = set(pq.read_table(args.exact_removed, columns=["deepmath_row"])
                .column("deepmath_row").to_pylist())
    pos = [k for k, row in enumerate(deep_rows) if row not in exact]
    scores, nn = nearest(dapo_emb, deep_emb[pos])
    dup = is_duplicate(scores, args.threshold)

    dapo = dict(load_rows(args.dapo, "dapo", args.on_bad_row, keep=["prompt"])[0])
    deep = dict(load_rows(args.deepmath, "deepmath", args.on_bad_row, keep=["question"])[0])
    removed = [{"deepmath_row": deep_rows[k], "question": deep[deep_rows[k]]["question"],
                "dapo_row": dapo_rows[int(j)], "dapo_question": dapo_problem(dapo[dapo_rows[int(j)]]),
                "score": float(s)}
               for k, j, s, d in zip(pos, nn, scores, dup) if d]
    semantic = {r["deepmath_row"] for r in removed}
    drop = exact | semantic

    # Kept rows: every original column, original order, original types.
    schema = pq.read_schema(args.deepmath["path"]) if "path" in args.deepmath else None
    kept_rows = [row for i, row in enumerate(iter_rows(args.deepmath)) if i in deep and i not in drop]
    write_parquet(args.kept, pa.Table.from_pylist(kept_rows, schema=schema))
    write_parquet(args.removed, pa.Table.from_pylist(removed, schema=REMOVED_SCHEMA))

    stats: dict[str, Any] = {
        "source": describe(args.deepmath), "threshold": args.threshold,
        "rows_in": len(deep_rows), "exact_removed": len(exact), "semantic_removed": len(semantic),
        "kept": len(kept_rows), "embedding_model": meta["model"]}
    if args.planted is not None:
        planted = pq.read_table(args.planted).to_pylist()
        truth = {k: {p["deepmath_row"] for p in planted if p["kind"] == k}
                 for k in ("exact", "paraphrase")}
        stats["ground_truth"] = {
            "exact": precision_recall(exact, truth["exact"]),
            "semantic": precision_recall(semantic, truth["paraphrase"]),
            "overall": precision_recall(drop, truth["exact"] | truth["paraphrase"])}
    write_json(args.stats, stats)
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
