"""Benchmark: exact top-1 FAISS inner-product search at the paper's dedup scale.

DeepMath-103K queries (~100k) against DAPO-Math-17k (~17k) with 768-dim L2-normalised
embeddings (all-mpnet-base-v2's size), ``IndexFlatIP`` as in the dedup stage. Random unit
vectors stand in for embeddings: exact search costs the same whatever the values.

    python benchmarks/faiss_search.py [--queries 100000 --base 17000 --dim 768]

Writes results/benchmarks/faiss_search.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import faiss
import numpy as np

from opd.stages.data.dedup_semantic import nearest


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=100_000)
    ap.add_argument("--base", type=int, default=17_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--out", type=Path, default=Path("results/benchmarks"))
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    base, queries = unit_rows(rng, args.base, args.dim), unit_rows(rng, args.queries, args.dim)
    nearest(base, queries[:1000])  # warm-up
    t0 = time.perf_counter()
    scores, ids = nearest(base, queries)
    seconds = time.perf_counter() - t0
    # spot-check 100 answers against numpy
    sample = rng.choice(args.queries, 100, replace=False)
    ref = np.argmax(queries[sample] @ base.T, axis=1)
    result = {
        "queries": args.queries, "base": args.base, "dim": args.dim,
        "index": "faiss.IndexFlatIP (exact)", "seconds": round(seconds, 3),
        "queries_per_second": round(args.queries / seconds, 1),
        "spot_check_agrees": bool((ids[sample] == ref).all()),
        "faiss_version": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads(),
        "cpu_count": os.cpu_count(), "machine": platform.machine(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "faiss_search.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "faiss_search.md").write_text(
        "| benchmark | queries x base x dim | seconds | queries/s | threads |\n|---|---|---|---|---|\n"
        f"| FAISS IndexFlatIP top-1 | {args.queries} x {args.base} x {args.dim} | "
        f"{result['seconds']} | {result['queries_per_second']} | {result['faiss_threads']} |\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
