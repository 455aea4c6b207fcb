"""Atomic, deterministic file output and validated table input shared by every stage."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish(path: Path | str) -> None:
    """Give a file (or a directory tree) the permissions the umask allows, as ``open`` and
    ``mkdir`` would: temporary files are created owner-only, outputs are shared with the
    group (and others) as the user's umask says."""
    path = Path(path)
    mask = _umask()
    if path.is_dir():
        os.chmod(path, 0o777 & ~mask)
        for sub in path.rglob("*"):
            os.chmod(sub, (0o777 if sub.is_dir() else 0o666) & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)


def file_sha256(path: Path | str) -> str:
    """sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


class UnreadableFile(ValueError):
    """An input file that exists but cannot be parsed; the message names it."""


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        publish(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield a temporary sibling directory; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        publish(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_json(path: Path | str, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_text(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_parquet(path: Path | str, table: pa.Table) -> None:
    """Write a parquet file with settings that give identical bytes for identical tables."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", use_dictionary=False,
                       write_statistics=False, store_schema=True)


def read_table(path: Path | str) -> pd.DataFrame:
    """Read a parquet or JSON-lines table into pandas, naming the file on failure."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix not in (".parquet", ".jsonl", ".json"):
        raise ValueError(f"{path}: unsupported table format (expected .parquet or .jsonl)")
    try:
        if path.suffix == ".parquet":
            return pq.read_table(path).to_pandas()
        return pd.read_json(path, lines=path.suffix == ".jsonl")
    except (pa.ArrowException, ValueError, OSError) as err:
        raise UnreadableFile(f"{path}: cannot be read as {path.suffix[1:]} "
                             f"({type(err).__name__}: {err})") from err
