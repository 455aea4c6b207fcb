"""Teacher rollouts for the off-policy cold start: one shard of a prompt set.

Shard ``i`` of ``n`` takes the prompts whose row index is ``i`` modulo ``n``, so a cluster runs
all shards at once. The shard is generated in chunks of ``chunk_prompts`` prompts; each chunk
has its own seed and is appended to ``<out>.partial.jsonl`` (flushed and synced) as soon as it
is done. A rerun after a crash skips every chunk already there, so nothing is regenerated and
the final shard is identical to an uninterrupted run's. With ``retries: N`` a prompt none of
whose responses passes the filters (``opd.core.filters``) is sampled again, up to N more times.

    python -m opd.stages.rollouts.teacher_rollouts --model M --prompts '{"path": ...}' --shard 0 --num-shards 4 \
        --out results/rollouts/NAME/shard-0.parquet --params '{...}'
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from tqdm import tqdm

from opd.core.cli import parse_stage_args
from opd.core.config import typed
from opd.core.data import load_prompt_set
from opd.train.engine import EngineParams, make_engine
from opd.core.filters import FilterRules, reject_reason
from opd.train.generation import Sampling
from opd.train.trainer import run_identity
from opd.core.io import write_parquet
from opd.core.prompts import apply_template, chat_prompt
from opd.core.models import ModelRef


ROLLOUT_SCHEMA = pa.schema([
    ("prompt_id", pa.int64()), ("prompt", pa.string()), ("answer", pa.string()),
    ("attempt", pa.int64()), ("sample", pa.int64()), ("response", pa.string()),
    ("finish_reason", pa.string()), ("prompt_tokens", pa.int64()),
    ("response_tokens", pa.int64()), ("seed", pa.int64()), ("reject_reason", pa.string()),
])


def shard_indices(n_rows: int, shard: int, num_shards: int) -> list[int]:
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} is not in [0, {num_shards})")
    return list(range(shard, n_rows, num_shards))


def chunk_seed(seed: int, shard: int, chunk: int, attempt: int) -> int:
    return (seed * 1_000_003 + shard * 10_007 + chunk * 101 + attempt) % (2**31)


def read_partial(path: Path, identity: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
    """Chunks already written by this very run (its first line holds the run's identity:
    settings, content of the model and prompts, code); a line torn by a crash (the last one)
    is ignored, and chunks of another run are set aside."""
    done: dict[int, list[dict[str, Any]]] = {}
    if not path.exists():
        return done
    lines = path.read_text().splitlines()
    try:
        head = json.loads(lines[0]) if lines else {}
    except json.JSONDecodeError:
        head = {}
    if head.get("identity") != identity:
        print(f"{path}: chunks of another run (settings, model, prompts or code differ); "
              "set aside")
        path.unlink()
        return done
    for line in lines[1:]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break
        done[record["chunk"]] = record["rows"]
    return done


@dataclass
class RolloutParams(EngineParams):
    """A rollout set (config ``rollouts.<name>``, template resolved) with the generation
    engine and the filters; every default comes from the config schema."""
    teacher: str
    prompts: str
    template: str
    shards: int
    responses_per_prompt: int
    temperature: float
    top_p: float
    max_new_tokens: int
    chunk_prompts: int
    retries: int
    keep_per_prompt: int
    seed: int
    filters: dict[str, int]


def rollout_chunk(engine: Any, tok: Any, rows: list[tuple[int, str, str | None]],
                  cfg: RolloutParams, shard: int, chunk: int,
                  thinking: bool = False) -> list[dict[str, Any]]:
    """Responses for one chunk of (prompt id, problem, answer), retrying rejected prompts."""
    rules = FilterRules.from_config(cfg.filters)
    out: list[dict[str, Any]] = []
    pending = rows
    for attempt in range(cfg.retries + 1):
        if not pending:
            break
        seed = chunk_seed(cfg.seed, shard, chunk, attempt)
        sampling = Sampling(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                            top_p=cfg.top_p, n=cfg.responses_per_prompt, seed=seed)
        prompts = [chat_prompt(tok, apply_template(cfg.template, p), thinking)
                   for _, p, _ in pending]
        results = engine.generate(prompts, sampling, progress=False)
        retry = []
        for (pid, problem, answer), completions in zip(pending, results):
            reasons = [reject_reason(c.text, c.finish_reason, rules) for c in completions]
            for j, (c, why) in enumerate(zip(completions, reasons)):
                out.append({"prompt_id": pid, "prompt": problem, "answer": answer,
                            "attempt": attempt, "sample": j, "response": c.text,
                            "finish_reason": c.finish_reason, "prompt_tokens": c.prompt_tokens,
                            "response_tokens": c.response_tokens, "seed": seed,
                            "reject_reason": why})
            if all(r is not None for r in reasons):
                retry.append((pid, problem, answer))
        pending = retry
    return out


def run_shard(args: argparse.Namespace) -> int:
    cfg = typed(RolloutParams, args.params, "rollouts")
    prompts = load_prompt_set(args.prompts)
    ids = shard_indices(len(prompts), args.shard, args.num_shards)
    size = cfg.chunk_prompts
    chunks = [ids[i:i + size] for i in range(0, len(ids), size)]
    partial = args.out.with_name(args.out.name + ".partial.jsonl")
    partial.parent.mkdir(parents=True, exist_ok=True)
    identity = run_identity({"params": args.params, "shard": args.shard,
                             "num_shards": args.num_shards, "model": str(args.model),
                             "prompts": args.prompts},
                            {"model": args.model.location, "prompts": args.prompts["path"]})
    done = read_partial(partial, identity)
    if done:
        print(f"resuming shard {args.shard}: {len(done)} of {len(chunks)} chunks already written")
    # (re)write the identity and the chunks kept, without a possibly torn last line
    partial.write_text(json.dumps({"identity": identity}) + "\n" + "".join(
        json.dumps({"chunk": c, "rows": r}) + "\n" for c, r in sorted(done.items())))
    engine, tok = make_engine(cfg.engine, args.model, batch_size=cfg.batch_size,
                              tensor_parallel_size=cfg.tensor_parallel_size, seed=cfg.seed)
    with partial.open("a") as fh:
        for c in tqdm(range(len(chunks)), desc=f"shard {args.shard}", initial=0):
            if c in done:
                continue
            rows = [(i, prompts["prompt"][i], prompts["answer"][i]) for i in chunks[c]]
            done[c] = rollout_chunk(engine, tok, rows, cfg, args.shard, c, args.model.thinking)
            fh.write(json.dumps({"chunk": c, "rows": done[c]}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    rows = [r for c in sorted(done) for r in done[c]]
    write_parquet(args.out, pa.Table.from_pylist(rows, schema=ROLLOUT_SCHEMA))
    partial.unlink()
    return len(rows)



def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=ModelRef.parse, required=True,
                    help="teacher model directory or hub id (or the workflow's JSON spec)")
    ap.add_argument("--prompts", type=json.loads, required=True, help="prompt set spec (JSON)")
    ap.add_argument("--shard", type=int, required=True)
    ap.add_argument("--num-shards", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = parse_stage_args(ap, argv, threads=1)
    print(json.dumps({"shard": args.shard, "rows": run_shard(args)}))


if __name__ == "__main__":
    main()
