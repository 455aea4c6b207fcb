"""The training core shared by OPD, the cold-start SFT and the tiny-model builders.

- ``lr_at``: the learning-rate schedules (constant; linear warm-up then cosine to a floor).
- ``RunLog``: one JSON line per step and TensorBoard scalars, written by process 0; a resumed
  run starts from the checkpoint's copy of the log and TensorBoard drops the steps after it.
- ``Checkpoint``: the full training state in one directory (weights, optimizer, every
  process's RNG, data position, the log so far, sizes and hashes of its files), written beside
  the previous checkpoint, which is kept until the next one is complete; resumed only by a run
  of the same identity (settings, content of every input, code version); a corrupt newest
  checkpoint falls back to the previous one. A finished run removes its checkpoints.
- ``rng_state`` / ``set_rng_state``: a process's CPU and GPU random state.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from opd.core.io import file_sha256, write_json
from opd.core.logging import read_jsonl, tensorboard
from opd.train.parallel import grad_norm_value

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


def clipped_step(params: Iterable[torch.nn.Parameter], opt: torch.optim.Optimizer,
                 grad_clip: float) -> tuple[float, bool]:
    """Clip the gradients to ``grad_clip`` and take the optimizer step, unless their norm is
    not finite (then the update is skipped, as the official trainer does). Returns the norm
    before clipping and whether the step was taken."""
    grad_norm = grad_norm_value(torch.nn.utils.clip_grad_norm_(list(params), grad_clip))
    if not math.isfinite(grad_norm):
        opt.zero_grad(set_to_none=True)
        return grad_norm, False
    opt.step()
    return grad_norm, True


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


def fingerprint(location: str | Path) -> str:
    """The content of an input: sha256 over a file's bytes, or over a directory's files
    (relative names and bytes). A location that is not on disk (a hub id) stands for itself;
    pin its ``revision`` to make it a content."""
    path = Path(location)
    if path.is_file():
        return file_sha256(path)
    if not path.is_dir():
        return f"not on disk: {location}"
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(f.relative_to(path)).encode() + b"\0" + file_sha256(f).encode())
    return digest.hexdigest()


def code_version() -> str:
    """sha256 over the source of the ``opd`` package: a checkpoint written by other code is
    not resumed."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        digest.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()


def run_identity(settings: Any, inputs: dict[str, str | Path | None]) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the settings, the content of every input
    (model weights and tokenizer, data files) and the code version."""
    return {"settings": settings, "code": code_version(),
            "inputs": {k: None if v is None else fingerprint(v) for k, v in sorted(inputs.items())}}


class CorruptCheckpoint(ValueError):
    """A checkpoint whose files do not match the sizes and hashes recorded when it was saved."""


class Checkpoint:
    """A run's checkpoints: the newest (``path``) and the one before it (``path.prev``).

    ``state.json`` holds the step, the run's identity and any small state (data position ...);
    the rest (weights, optimizer, RNG) is written by the caller's ``write``; ``manifest.json``
    records every file's size and sha256. A new checkpoint is complete on disk before the
    previous one goes. On resume the newest checkpoint that verifies is used; one of another
    run is set aside and a corrupt one is reported by path and set aside.
    """

    STATE, LOG, MANIFEST = "state.json", "log.jsonl", "manifest.json"

    def __init__(self, path: Path, identity: dict[str, Any]):
        self.path, self.identity = path, identity
        self.tmp = path.with_name(path.name + ".tmp")
        self.prev = path.with_name(path.name + ".prev")
        self.current: Path | None = None  # the checkpoint ``find`` chose

    def find(self, main: bool = True) -> dict[str, Any] | None:
        """The saved state of the newest good checkpoint of this run, or None. Process 0 sets
        aside (removes) checkpoints of another run and corrupt ones, saying why."""
        self.current = None
        set_aside = False
        for candidate in (self.path, self.prev):
            if not candidate.exists():
                continue
            try:
                state = self._verified_state(candidate)
            except CorruptCheckpoint as err:
                self._set_aside(candidate, f"corrupt checkpoint ({err})", main)
                set_aside = True
                continue
            if state.get("identity") != self.identity:
                self._set_aside(candidate, "checkpoint of another run (settings, input content "
                                "or code differ)", main)
                set_aside = True
                continue
            if candidate == self.prev and main:
                print(f"{candidate}: resuming from the previous checkpoint")
            self.current = candidate
            return state
        if set_aside and main:
            print(f"{self.path}: no checkpoint of this run left; starting afresh")
        return None

    def _set_aside(self, candidate: Path, why: str, main: bool) -> None:
        if main:
            print(f"{candidate}: {why}; set aside")
            shutil.rmtree(candidate)

    def _verified_state(self, directory: Path) -> dict[str, Any]:
        try:
            manifest = json.loads((directory / self.MANIFEST).read_text())
            state = json.loads((directory / self.STATE).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise CorruptCheckpoint(f"{type(err).__name__}: {err}") from None
        for name, want in manifest.items():
            f = directory / name
            if not f.is_file():
                raise CorruptCheckpoint(f"{f} is missing")
            if f.stat().st_size != want["size"]:
                raise CorruptCheckpoint(f"{f} has {f.stat().st_size} bytes, {want['size']} "
                                        "were saved")
            if file_sha256(f) != want["sha256"]:
                raise CorruptCheckpoint(f"{f} does not match its saved sha256")
        return state

    def log_text(self) -> str:
        return ((self.current or self.path) / self.LOG).read_text()

    def save(self, step: int, write: Callable[[Path], None], log: Path, *,
             state: dict[str, Any] | None = None, main: bool = True,
             barrier: Callable[[], None] = lambda: None) -> None:
        """Write a new checkpoint beside the current one, then rotate it in. ``write(tmp)``
        runs on every process (collective saves need them all)."""
        if main and self.tmp.exists():
            shutil.rmtree(self.tmp)
        barrier()
        write(self.tmp)
        if main:
            self.tmp.mkdir(parents=True, exist_ok=True)
            (self.tmp / self.LOG).write_text(log.read_text())
            write_json(self.tmp / self.STATE, {**(state or {}), "step": step,
                                               "identity": self.identity})
            files = sorted(p for p in self.tmp.rglob("*") if p.is_file())
            write_json(self.tmp / self.MANIFEST, {
                str(f.relative_to(self.tmp)): {"size": f.stat().st_size, "sha256": file_sha256(f)}
                for f in files})
            if self.path.exists():
                if self.prev.exists():
                    shutil.rmtree(self.prev)
                self.path.rename(self.prev)
            self.tmp.rename(self.path)
            self.current = self.path
        barrier()

    def remove(self) -> None:
        """Drop every checkpoint of the run (it finished: a rerun trains afresh)."""
        for p in (self.path, self.tmp, self.prev):
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


def save_torch_state(path: Path, optimizer_state: dict[str, Any],
                     rng: list[dict[str, Any]]) -> None:
    """An optimizer's state dict and every process's RNG, loadable with
    ``weights_only=True``."""
    torch.save({"optimizer": optimizer_state, "rng": rng}, path)


def load_torch_state(path: Path) -> dict[str, Any]:
    return torch.load(path, weights_only=True)
