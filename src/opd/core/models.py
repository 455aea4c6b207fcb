"""A model as the workflow names it: a local directory or a hub id, with its revision pin and
whether its prompts use the chat template's thinking mode."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ModelNotFound(FileNotFoundError):
    """A model directory named by the config does not exist."""


@dataclass(frozen=True)
class ModelRef:
    location: str                  # a local directory or a hub id
    is_path: bool                  # the config gave a ``path`` (not a ``hub_id``)
    revision: str | None = None    # a hub revision pin (commit, tag or branch)
    name: str | None = None        # the key of ``models:`` (for messages)
    thinking: bool = False         # prompts built in the chat template's thinking mode

    @classmethod
    def parse(cls, arg: str) -> "ModelRef":
        """The JSON the workflow passes ({"path": ...} or {"hub_id": ..., "revision": ...},
        with the model's ``name``), or a plain directory or hub id given by hand."""
        if arg.lstrip().startswith("{"):
            spec = json.loads(arg)
            thinking = bool(spec.get("thinking", False))
            if "path" in spec:
                return cls(spec["path"], True, None, spec.get("name"), thinking)
            return cls(spec["hub_id"], False, spec.get("revision"), spec.get("name"), thinking)
        return cls(arg, Path(arg).exists())

    @classmethod
    def of(cls, model: "ModelRef | str") -> "ModelRef":
        """A reference as is, or one parsed from a string (libraries accept both)."""
        return model if isinstance(model, ModelRef) else cls.parse(model)

    def checked(self) -> "ModelRef":
        """Itself, after checking that a local model directory exists."""
        if self.is_path and not Path(self.location).exists():
            key = f"models.{self.name}.path " if self.name else "model path "
            raise ModelNotFound(f"{key}{self.location!r} does not exist (point it at a "
                                "model directory, or give a hub_id instead)")
        return self

    def load_kwargs(self) -> dict[str, Any]:
        """What ``from_pretrained`` needs besides the location: the revision pin."""
        return {"revision": self.revision} if self.revision else {}

    def __str__(self) -> str:
        return self.location + (f"@{self.revision}" if self.revision else "")
