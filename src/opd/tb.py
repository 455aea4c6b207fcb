"""TensorBoard event files beside the JSONL training logs (``tensorboard --logdir results``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def tensorboard(path: Path) -> Any:
    """A SummaryWriter for ``path`` (imported lazily: TensorBoard loads slowly)."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(path))
