"""Training and result logs: JSON-lines files (one object per line) and TensorBoard events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_jsonl(path: Path | str) -> list[dict[str, Any]]:
    """Every line of a JSON-lines file as a dict; a bad line names the file and line."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    out = []
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: line {i}: not JSON ({err.msg})") from None
    return out


def tensorboard(path: Path, purge_step: int | None = None) -> Any:
    """A SummaryWriter for ``path`` (imported lazily: TensorBoard loads slowly). With
    ``purge_step``, events at or after that step left by an interrupted run are dropped."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(path), purge_step=purge_step)
