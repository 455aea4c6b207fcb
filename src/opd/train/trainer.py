"""The training core shared by OPD, the cold-start SFT and the tiny-model builders.

- ``lr_at``: the learning-rate schedules (constant; linear warm-up then cosine to a floor).
- ``RunLog``: one JSON line per step and TensorBoard scalars, written by process 0; a resumed
  run starts from the checkpoint's copy of the log and TensorBoard drops the steps after it.
- ``Checkpoint``: the full training state in one directory (weights, optimizer, every
  process's RNG, data position, the log so far), written beside the previous checkpoint and
  swapped in only once complete, and resumed only by a run of the same identity.
- ``rng_state`` / ``set_rng_state``: a process's CPU and GPU random state.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from opd.core.io import write_json
from opd.core.logging import read_jsonl, tensorboard

SCHEDULES = ("constant", "cosine")


def lr_at(step: int, peak: float, total: int, schedule: str = "cosine",
          warmup_ratio: float = 0.0, floor: float = 0.0) -> float:
    """The learning rate of optimizer step ``step`` (0-based) of ``total``.

    ``constant``: ``peak`` throughout. ``cosine``: linear warm-up over
    ``round(warmup_ratio * total)`` steps (at least one), then cosine decay from ``peak``
    towards ``floor * peak``, reached at step ``total`` (one past the last).
    """
    if schedule == "constant":
        return peak
    if schedule != "cosine":
        raise ValueError(f"unknown lr schedule {schedule!r} (known: {', '.join(SCHEDULES)})")
    warm = max(1, round(warmup_ratio * total))
    if step < warm:
        return peak * (step + 1) / warm
    frac = min(1.0, (step - warm) / max(1, total - warm))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac)))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


class RunLog:
    """JSONL + TensorBoard log of a run (a no-op on processes other than 0)."""

    def __init__(self, path: Path, tb_dir: Path | None, prefix: str, *, enabled: bool = True,
                 resume_text: str | None = None, start_step: int = 0):
        self.path, self.prefix, self.enabled = path, prefix, enabled
        self.writer = None
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(resume_text or "")
        if tb_dir is not None:
            # purge_step drops events a crashed run wrote after its last checkpoint
            self.writer = tensorboard(tb_dir, purge_step=start_step if resume_text else None)

    def write(self, line: dict[str, Any], step: int, scalars: Iterable[str] | None = None) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as fh:
            fh.write(json.dumps(line) + "\n")
        if self.writer is not None:
            keys = scalars if scalars is not None else line
            for k in keys:
                v = line.get(k)
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step":
                    self.writer.add_scalar(f"{self.prefix}/{k}", v, step)

    def lines(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Checkpoint:
    """A run's checkpoint directory, tagged with the run's identity.

    ``state.json`` holds the step, the identity and any small state (data position ...); the
    rest (weights, optimizer, RNG) is written by the caller's ``write`` into the directory.
    """

    STATE, LOG = "state.json", "log.jsonl"

    def __init__(self, path: Path, identity: dict[str, Any]):
        self.path, self.identity = path, identity
        self.tmp = path.with_name(path.name + ".tmp")
        self.old = path.with_name(path.name + ".old")

    def find(self, main: bool = True) -> dict[str, Any] | None:
        """The saved state when the checkpoint belongs to this run; else None. Process 0 sets
        a checkpoint of another run aside (removes it) and completes an interrupted swap."""
        if main and not self.path.exists() and self.old.exists():
            self.old.rename(self.path)  # a kill between the two renames of ``save``
        state_file = self.path / self.STATE
        if not state_file.exists():
            return None
        state = json.loads(state_file.read_text())
        if state.get("identity") == self.identity:
            return state
        if main:
            print(f"{self.path}: checkpoint of a run with other settings; starting afresh")
            shutil.rmtree(self.path)
        return None

    def log_text(self) -> str:
        return (self.path / self.LOG).read_text()

    def save(self, step: int, write: Callable[[Path], None], log: Path, *,
             state: dict[str, Any] | None = None, main: bool = True,
             barrier: Callable[[], None] = lambda: None) -> None:
        """Write a new checkpoint beside the current one, then swap it in. ``write(tmp)`` runs
        on every process (collective saves need them all)."""
        if main and self.tmp.exists():
            shutil.rmtree(self.tmp)
        barrier()
        write(self.tmp)
        if main:
            self.tmp.mkdir(parents=True, exist_ok=True)
            (self.tmp / self.LOG).write_text(log.read_text())
            write_json(self.tmp / self.STATE, {**(state or {}), "step": step,
                                               "identity": self.identity})
            if self.path.exists():
                self.path.rename(self.old)
            self.tmp.rename(self.path)
            if self.old.exists():
                shutil.rmtree(self.old)
        barrier()

    def remove(self) -> None:
        for p in (self.path, self.tmp, self.old):
            if p.exists():
                shutil.rmtree(p)


def rng_state() -> dict[str, Any]:
    """This process's random state: CPU, and its GPU's where sampling runs on one."""
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() else None
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_torch_state(path: Path, optimizer: torch.optim.Optimizer,
                     rng: list[dict[str, Any]]) -> None:
    """Optimizer state and every process's RNG, loadable with ``weights_only=True``."""
    torch.save({"optimizer": optimizer.state_dict(), "rng": rng}, path)


def load_torch_state(path: Path) -> dict[str, Any]:
    return torch.load(path, weights_only=True)
