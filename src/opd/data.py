"""Dataset loading shared by every stage: a local file in the real schema, or a hub id."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from opd.io import read_table


def load_source(spec: dict[str, Any]) -> pd.DataFrame:
    """Load a dataset described by a config ``source``/``benchmark`` entry into pandas."""
    if "path" in spec:
        return read_table(Path(spec["path"]))
    import datasets  # heavy; only the hub path needs it

    ds = datasets.load_dataset(spec["hub_id"], spec.get("config_name"), split=spec["split"],
                               revision=spec.get("revision"))
    return ds.to_pandas()


def load_benchmark(spec: dict[str, Any]) -> pd.DataFrame:
    """A benchmark as a frame with columns ``problem`` and ``answer`` (both strings)."""
    df = load_source(spec)
    where = spec.get("path") or spec.get("hub_id")
    for field in (spec["problem_field"], spec["answer_field"]):
        if field not in df.columns:
            raise KeyError(f"{where}: benchmark has no column {field!r} "
                           f"(columns: {', '.join(map(str, df.columns))})")
    out = pd.DataFrame({"problem": df[spec["problem_field"]].astype(str),
                        "answer": df[spec["answer_field"]].astype(str)})
    for i, text in enumerate(out["problem"]):
        if not text.strip():
            raise ValueError(f"{where}: row {i}: field {spec['problem_field']!r} is empty")
    return out
