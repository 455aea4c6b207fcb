"""A released data file (config ``released.<name>``), checked and flattened into a prompt table.

The official repository ships its training prompts and evaluation sets as parquet files in
verl's schema: a chat list in ``prompt`` whose user turn is the problem already wrapped in an
instruction, and the gold answer in ``reward_model.ground_truth``. The rule hands this stage the
downloaded file (Snakemake's HTTP storage, or the offline cache). The stage

1. checks the file's sha256 against the pinned one and stops, naming the URL, on a mismatch;
2. takes each row's single user turn and strips the instruction of ``strip_template`` (a
   template with ``{problem}``), so that the experiment's template puts the same text back --
   a row whose turn does not carry that instruction stops the stage, naming the row;
3. writes ``prompt_id, prompt, answer, row`` in file order (a prompt set, or a benchmark with
   ``problem_field: prompt``) and a stats JSON.

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

SCHEMA = pa.schema([("prompt_id", pa.string()), ("prompt", pa.string()), ("answer", pa.string()),
                    ("row", pa.int64())])


@dataclass
class ReleasedParams:
    """Config ``released.<name>`` with its template resolved to text (or None)."""
    url: str
    sha256: str
    format: str
    strip_template: str | None


def check_sha256(path: Path, url: str, expected: str) -> None:
    got = file_sha256(path)
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


def fetch(source: Path, params: dict[str, Any]) -> tuple[pa.Table, dict[str, Any]]:
    cfg = typed(ReleasedParams, params, "released")
    check_sha256(source, cfg.url, cfg.sha256)
    if cfg.format != "verl":
        raise ValueError(f"released format {cfg.format!r} is not supported (verl)")
    rows = verl_prompts(source, cfg.strip_template)
    stats = {"url": cfg.url, "sha256": cfg.sha256, "rows": len(rows),
             "distinct_prompts": len({r["prompt_id"] for r in rows})}
    return pa.Table.from_pylist(rows, schema=SCHEMA), stats


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
