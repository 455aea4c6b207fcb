"""Dataset loading shared by every stage: a local file in the real schema, or a hub id.

Rows are validated against the fields a stage needs. A malformed row stops the stage with the
file (or hub id), the row index and the field named -- or, with ``on_bad_row="skip"``, is
skipped and counted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from opd.core.config import with_defaults
from opd.core.io import read_table


class DataError(ValueError):
    """A dataset row or file is malformed; the message names file, row and field."""


def describe(spec: dict[str, Any]) -> str:
    if "path" in spec:
        return str(spec["path"])
    return f"{spec['hub_id']} (split {spec.get('split', 'train')})"


def _read_local(path: Path, columns: list[str] | None = None) -> Iterator[dict[str, Any]]:
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.suffix == ".parquet":
        try:
            pf = pq.ParquetFile(path)
            if columns is not None:  # a missing column is reported per row by load_rows
                columns = [c for c in columns if c in pf.schema_arrow.names]
            batches = list(pf.iter_batches(batch_size=4096, columns=columns))
        except (pa.ArrowException, OSError) as err:
            raise DataError(f"{path}: cannot be read as parquet ({type(err).__name__}: {err})"
                            ) from None
        for batch in batches:
            yield from batch.to_pylist()
    elif path.suffix == ".jsonl":
        with path.open("rb") as fh:
            for i, raw in enumerate(fh):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise DataError(f"{path}: row {i}: not valid UTF-8 ({err.reason})") from None
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}: row {i}: not valid JSON ({err.msg})") from None
    elif path.suffix == ".arrow":
        with pa.memory_map(str(path)) as source:
            try:
                reader = pa.ipc.open_stream(source)
            except pa.ArrowInvalid:
                reader = pa.ipc.open_file(source)
                for k in range(reader.num_record_batches):
                    yield from reader.get_batch(k).to_pylist()
                return
            for batch in reader:
                yield from batch.to_pylist()
    else:
        raise DataError(f"{path}: unsupported format (use .parquet, .jsonl or .arrow)")


def iter_rows(spec: dict[str, Any], columns: list[str] | None = None
              ) -> Iterator[dict[str, Any]]:
    """Rows of a dataset as dicts, in order; hub datasets may stream. ``columns`` is a hint
    that lets columnar files skip what a stage does not read."""
    if "path" in spec:
        yield from _read_local(Path(spec["path"]), columns)
        return
    import datasets  # heavy; only the hub path needs it

    ds = datasets.load_dataset(spec["hub_id"], spec.get("config_name"), split=spec["split"],
                               revision=spec.get("revision"),
                               streaming=spec["streaming"])
    yield from ds


Check = Callable[[Any], str | None]  # returns a complaint, or None when the value is fine


def is_text(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"expected a string, got {type(value).__name__}"
    return None


def is_nonempty_text(value: Any) -> str | None:
    return is_text(value) or (None if value.strip() else "is empty")


def is_turns(*keys: str) -> Check:
    def check(value: Any) -> str | None:
        if not isinstance(value, (list, tuple)) or not value:
            return "expected a non-empty list of turns"
        for j, turn in enumerate(value):
            if not isinstance(turn, dict) or any(not isinstance(turn.get(k), str) for k in keys):
                return f"turn {j} lacks string fields {', '.join(keys)}"
        return None
    return check


def has_text_field(key: str) -> Check:
    def check(value: Any) -> str | None:
        if not isinstance(value, dict) or not isinstance(value.get(key), str):
            return f"expected a struct with string field {key!r}"
        return None
    return check


# What each stage needs of each dataset (a subset of the real schema).
FIELDS: dict[str, dict[str, Check]] = {
    "openthoughts": {"domain": is_text, "conversations": is_turns("from", "value")},
    "dapo": {"prompt": is_turns("role", "content"), "reward_model": has_text_field("ground_truth")},
    "deepmath": {"question": is_nonempty_text, "final_answer": is_text},
}


def load_rows(spec: dict[str, Any], kind: str, on_bad_row: str = "fail",
              keep: list[str] | None = None
              ) -> tuple[list[tuple[int, dict[str, Any]]], list[str]]:
    """Validated ``(row index, row)`` pairs and the complaints about skipped rows.

    ``keep`` limits the returned rows to those fields (plus the validated ones), so large
    columns such as reasoning traces are not held in memory.
    """
    if on_bad_row not in ("fail", "skip"):
        raise ValueError(f"on_bad_row must be 'fail' or 'skip', not {on_bad_row!r}")
    where, fields = describe(spec), FIELDS[kind]
    wanted = None if keep is None else sorted(set(keep) | set(fields))
    rows, skipped = [], []
    for i, row in enumerate(iter_rows(spec, wanted)):
        complaint = None
        for field, check in fields.items():
            if field not in row:
                complaint = f"{where}: row {i}: field {field!r} is missing"
            else:
                problem = check(row[field])
                complaint = f"{where}: row {i}: field {field!r} {problem}" if problem else None
            if complaint:
                break
        if complaint is None:
            rows.append((i, row if wanted is None else {k: row.get(k) for k in wanted}))
        elif on_bad_row == "skip":
            skipped.append(complaint)
        else:
            raise DataError(complaint)
    return rows, skipped


def load_source(spec: dict[str, Any]) -> pd.DataFrame:
    """Load a whole dataset described by a config entry into pandas."""
    if "path" in spec:
        return read_table(Path(spec["path"]))
    return pd.DataFrame(list(iter_rows(spec)))


def load_benchmark(spec: dict[str, Any]) -> pd.DataFrame:
    """A benchmark as a frame with columns ``problem`` and ``answer`` (both strings)."""
    df = load_source(spec)
    where = describe(spec)
    for field in (spec["problem_field"], spec["answer_field"]):
        if field not in df.columns:
            raise DataError(f"{where}: benchmark has no column {field!r} "
                            f"(columns: {', '.join(map(str, df.columns))})")
    out = pd.DataFrame({"problem": df[spec["problem_field"]].astype(str),
                        "answer": df[spec["answer_field"]].astype(str)})
    for i, text in enumerate(out["problem"]):
        if not text.strip():
            raise DataError(f"{where}: row {i}: field {spec['problem_field']!r} is empty")
    return out


def load_prompt_set(spec: dict[str, Any]) -> pd.DataFrame:
    """A prompt set as a frame with ``prompt`` (non-empty) and ``answer`` (string or None)."""
    spec = with_defaults("prompt_set", spec)
    df = read_table(Path(spec["path"]))
    where = describe(spec)
    pf, af = spec["prompt_field"], spec["answer_field"]
    if pf not in df.columns:
        raise DataError(f"{where}: prompt set has no column {pf!r}")
    answers = df[af] if af in df.columns else [None] * len(df)
    out = pd.DataFrame({"prompt": df[pf], "answer": list(answers)})
    for i, text in enumerate(out["prompt"]):
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: row {i}: field {pf!r} is empty or not text")
    out["answer"] = [None if a is None or (isinstance(a, float) and a != a) else str(a)
                     for a in out["answer"]]
    return out


def prompt_id(prompt: str) -> str:
    """Stable id from the prompt text itself (independent of row order and sampling)."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]
