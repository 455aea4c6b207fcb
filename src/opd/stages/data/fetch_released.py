"""A released data file (config ``released.<name>``), checked and flattened into a table.

The official repository ships its training prompts and evaluation sets as parquet files in
verl's schema (``format: verl``): a chat list in ``prompt`` whose user turn is the problem
already wrapped in an instruction, and the gold answer in ``reward_model.ground_truth``. The
released cold-start SFT set is a chat per row (``format: messages``): a ``messages`` list of
``{role, content}`` turns ending with the assistant's reply, as LlamaFactory's sharegpt
formatting reads it. The rule hands this stage the downloaded file (Snakemake's HTTP storage,
or the offline cache). The stage

1. checks the file's sha256 against the pinned one and stops, naming the URL, on a mismatch;
   an entry pinned to no sha256 (``null``) stops too, printing the file's sha256 to check
   against the publisher's listing and pin;
2. ``verl``: takes each row's single user turn and strips the instruction of ``strip_template``
   (a template with ``{problem}``), so that the experiment's template puts the same text back
   -- a row whose turn does not carry that instruction stops the stage, naming the row;
   ``messages``: checks every row's turns (roles system, user or assistant, text content, at
   least one user turn, the assistant's last), naming the row of the first that is not;
3. writes, in file order, ``prompt_id, prompt, answer, row`` for ``verl`` (a prompt set, or a
   benchmark with ``problem_field: prompt``) or ``prompt_id, messages`` for ``messages`` (an
   SFT set, as ``filter_rollouts`` writes one; ``prompt_id`` is the row), and a stats JSON.

    python -m opd.stages.data.fetch_released --source DOWNLOADED --out R.parquet --stats R.json \
        --params '{"url": ..., "sha256": ..., "format": "verl", "strip_template": "{problem} ..."}'
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from opd.core.config import typed
from opd.core.data import DataError, is_turns, iter_rows, prompt_id
from opd.core.io import file_sha256, write_json, write_parquet
from opd.core.schemas import SFT_SET

SCHEMA = pa.schema([("prompt_id", pa.string()), ("prompt", pa.string()), ("answer", pa.string()),
                    ("row", pa.int64())])


@dataclass
class ReleasedParams:
    """Config ``released.<name>`` with its template resolved to text (or None)."""
    url: str
    sha256: str | None
    format: str
    strip_template: str | None


def check_sha256(path: Path, url: str, expected: str | None) -> None:
    got = file_sha256(path)
    if expected is None:
        raise DataError(f"{url} (downloaded to {path}) has no pinned sha256; its sha256 is "
                        f"{got}. Check it against the publisher's file listing (a Hugging Face "
                        "file page shows its SHA256), then set it as this entry's sha256")
    if got != expected.lower():
        raise DataError(f"{url} (downloaded to {path}): sha256 {got} does not match the pinned "
                        f"{expected}; the file changed upstream or the download is incomplete")


def _affixes(template: str | None) -> tuple[str, str]:
    if template is None:
        return "", ""
    if template.count("{problem}") != 1:
        raise ValueError("strip_template must contain {problem} exactly once")
    prefix, suffix = template.split("{problem}")
    return prefix, suffix


def verl_prompts(path: Path, template: str | None) -> list[dict[str, Any]]:
    """Rows of a verl-schema file as ``{prompt_id, prompt, answer, row}``, in file order."""
    prefix, suffix = _affixes(template)
    turns_ok = is_turns("role", "content")
    out = []
    for i, row in enumerate(iter_rows({"path": str(path)}, ["prompt", "reward_model"])):
        where = f"{path}: row {i}"
        turns = row.get("prompt")
        complaint = turns_ok(turns) if turns is not None else "is missing"
        if complaint:
            raise DataError(f"{where}: field 'prompt' {complaint}")
        users = [t["content"] for t in turns if t["role"] == "user"]
        if len(users) != 1:
            raise DataError(f"{where}: field 'prompt' has {len(users)} user turns, expected one")
        text = users[0]
        if not (text.startswith(prefix) and text.endswith(suffix)
                and len(text) > len(prefix) + len(suffix)):
            raise DataError(f"{where}: field 'prompt' does not carry the instruction of "
                            f"strip_template (expected it to start with {prefix[:40]!r} and end "
                            f"with {suffix[-40:]!r})")
        problem = text[len(prefix):len(text) - len(suffix)].strip()
        reward = row.get("reward_model")
        if not isinstance(reward, dict) or reward.get("ground_truth") is None:
            raise DataError(f"{where}: field 'reward_model.ground_truth' is missing")
        out.append({"prompt_id": prompt_id(problem), "prompt": problem,
                    "answer": str(reward["ground_truth"]).strip(), "row": i})
    if not out:
        raise DataError(f"{path}: no rows")
    return out


ROLES = ("system", "user", "assistant")


def turns_complaint(turns: Any) -> str | None:
    """What is wrong with one chat of an SFT set, or None."""
    complaint = is_turns("role", "content")(turns)
    if complaint:
        return complaint
    for j, turn in enumerate(turns):
        if turn["role"] not in ROLES:
            return f"turn {j} has role {turn['role']!r} (expected one of {', '.join(ROLES)})"
        if not turn["content"].strip():
            return f"turn {j} ({turn['role']}) has no text"
    if not any(t["role"] == "user" for t in turns):
        return "has no user turn"
    if turns[-1]["role"] != "assistant":
        return f"ends with a {turns[-1]['role']} turn, not the assistant's reply"
    return None


def sft_chats(path: Path) -> list[dict[str, Any]]:
    """Rows of a chat-per-row file as ``{prompt_id, messages}``, ``prompt_id`` the row."""
    out = []
    for i, row in enumerate(iter_rows({"path": str(path)}, ["messages"])):
        turns = row.get("messages")
        complaint = "is missing" if turns is None else turns_complaint(turns)
        if complaint:
            raise DataError(f"{path}: row {i}: field 'messages' {complaint}")
        out.append({"prompt_id": i, "messages": [{"role": t["role"], "content": t["content"]}
                                                 for t in turns]})
    if not out:
        raise DataError(f"{path}: no rows")
    return out


def fetch(source: Path, params: dict[str, Any]) -> tuple[pa.Table, dict[str, Any]]:
    cfg = typed(ReleasedParams, params, "released")
    check_sha256(source, cfg.url, cfg.sha256)
    stats: dict[str, Any] = {"url": cfg.url, "sha256": cfg.sha256, "format": cfg.format}
    if cfg.format == "verl":
        rows = verl_prompts(source, cfg.strip_template)
        stats.update(rows=len(rows), distinct_prompts=len({r["prompt_id"] for r in rows}))
        return pa.Table.from_pylist(rows, schema=SCHEMA), stats
    if cfg.format == "messages":
        if cfg.strip_template is not None:
            raise ValueError("strip_template applies to format verl only: an SFT set's chats "
                             "are kept as they are")
        chats = sft_chats(source)
        first_user = [next(t["content"] for t in c["messages"] if t["role"] == "user")
                      for c in chats]
        stats.update(rows=len(chats), distinct_prompts=len(set(first_user)))
        return pa.Table.from_pylist(chats, schema=SFT_SET), stats
    raise ValueError(f"released format {cfg.format!r} is not supported (verl, messages)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, required=True, help="the downloaded file")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--stats", type=Path, required=True)
    ap.add_argument("--params", type=json.loads, required=True)
    args = ap.parse_args(argv)
    table, stats = fetch(args.source, args.params)
    write_parquet(args.out, table)
    write_json(args.stats, stats)
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
