"""Generate the tiny synthetic math world as local parquet files in the real HF schemas.

Outputs (all under ``--out``):
    openthoughts.parquet   OpenThoughts3-1.2M layout; math rows plus code/science rows to filter
    dapo.parquet           DAPO-Math-17k layout, with DAPO's real instruction wrapper
    deepmath.parquet       DeepMath-103K layout, with planted exact and paraphrased DAPO duplicates
    deepmath_planted.parquet  ground truth for the planted rows (never inside the data itself)
    aime24/aime25/amc23.parquet  benchmark layouts (2-3 steps / 2-3 steps / 1-3 steps)
    probe.parquet          held-out problems, 5 difficulty levels, for model cards
    heldout.json           problem keys that model training must never see
    manifest.json          row counts and the seed

    python -m opd.stages.tiny.build_tiny_world --out results/world/tiny --params '{"seed": 0, ...}'
"""

from __future__ import annotations

import argparse
import json
import random
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from opd.core.config import typed
from opd.core import schemas
from opd.core.io import write_json, write_parquet
from opd.core.prompts import EVAL_SUFFIX
from opd.tiny.problems import (
    FRAME_POOLS,
    MAX_DIFFICULTY,
    SCENARIOS,
    Problem,
    paraphrase,
    render,
    sample_problem,
    solution,
)

# Wrappers some DeepMath-style copies carry; dedup must strip them.
DEEPMATH_WRAPPERS = [
    ("", ""),
    ("", EVAL_SUFFIX),
    ("Problem: ", ""),
    ("  ", "\n\n"),
]
NON_MATH = {
    "code": ["Write a function that reverses a list of {n} items.",
             "Implement a queue with two stacks and {n} operations."],
    "science": ["Explain why {n} grams of ice floats on water.",
                "Describe the life cycle of a star with {n} solar masses."],
}
TOPIC = "Mathematics -> Algebra -> Prealgebra -> Integers"


class World:
    """Seeded problem factory.

    Problems of held-out sets (benchmarks, probe) are *reserved*: no other set, and no model
    training data, ever uses their (start, ops) key. Every problem text is unique. A share
    ``triple_share`` of the problems with two or more steps is drawn among those with a *3
    step, in every set: left to chance, about one in eight would have one, too few for the
    strong teacher's new capability to show in benchmark scores.
    """

    def __init__(self, seed: int, triple_share: float):
        self.rng = random.Random(seed)
        self.triple_share = triple_share
        self.reserved: set[tuple] = set()
        self.texts: set[str] = set()

    def item(self, difficulty: int, pool: str, reserve: bool = False
             ) -> tuple[Problem, tuple[str, str, str], int, str]:
        """A fresh (problem, scenario, frame, text) with a text never handed out before."""
        triple = difficulty >= 2 and self.rng.random() < self.triple_share
        for _ in range(10_000):
            p = sample_problem(self.rng, difficulty)
            key = (p.start, p.ops)
            if key in self.reserved or (triple and not p.triples):
                continue
            scenario = self.rng.choice(SCENARIOS[pool])
            frame = self.rng.choice(FRAME_POOLS[pool])
            text = render(p, scenario, frame)
            if text in self.texts:
                continue
            self.texts.add(text)
            if reserve:
                self.reserved.add(key)
            return p, scenario, frame, text
        raise RuntimeError(f"problem space of difficulty {difficulty} ({pool}) exhausted")

    def difficulty(self, lo: int = 1, hi: int = MAX_DIFFICULTY) -> int:
        return self.rng.randint(lo, hi)

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))


def think(p: Problem, pattern: str) -> str:
    """A reasoning-trace style response as the real sets store them."""
    return f"<think>\n{solution(p, pattern)}\n</think>\n\nThe final answer is $\\boxed{{{p.answer}}}$."


def build_openthoughts(w: World, n_math: int, n_nonmath: int, n_dup: int) -> pa.Table:
    rows: list[dict[str, Any]] = []
    for _ in range(n_math):
        p, _, _, text = w.item(w.difficulty(), "story")
        rows.append({"difficulty": p.difficulty + 2, "source": "ai2-adapt-dev/openmath-2-math",
                     "domain": "math",
                     "conversations": [{"from": "human", "value": text},
                                       {"from": "gpt", "value": think(p, "chain")}]})
    for dup in w.rng.sample(rows, n_dup):  # the real set repeats some prompts
        rows.append(json.loads(json.dumps(dup)))
    for i in range(n_nonmath):
        domain = ("code", "science")[i % 2]
        text = w.rng.choice(NON_MATH[domain]).format(n=w.rng.randint(2, 99))
        rows.append({"difficulty": w.rng.randint(1, 10), "source": f"synthetic-{domain}",
                     "domain": domain,
                     "conversations": [{"from": "human", "value": text},
                                       {"from": "gpt", "value": "<think>\n...\n</think>\n\nDone."}]})
    w.rng.shuffle(rows)
    return pa.Table.from_pylist(rows, schema=schemas.OPENTHOUGHTS)


def build_dapo(w: World, n: int) -> tuple[pa.Table, list[tuple[Problem, tuple, int, str]]]:
    rows, items = [], []
    for _ in range(n):
        p, scenario, frame, text = w.item(w.difficulty(), "story")
        items.append((p, scenario, frame, text))
        rows.append({"data_source": "math_dapo",
                     "prompt": [{"content": schemas.DAPO_PREFIX + text + schemas.DAPO_SUFFIX,
                                 "role": "user"}],
                     "ability": "MATH",
                     "reward_model": {"ground_truth": str(p.answer), "style": "rule-lang"},
                     "extra_info": {"index": w.uuid()}})
    return pa.Table.from_pylist(rows, schema=schemas.DAPO), items


def deepmath_row(p: Problem, question: str) -> dict[str, Any]:
    return {"question": question, "final_answer": str(p.answer),
            "difficulty": float(p.difficulty + 2), "topic": TOPIC,
            "r1_solution_1": think(p, "chain"), "r1_solution_2": think(p, "chain"),
            "r1_solution_3": think(p, "tally")}


def build_deepmath(w: World, n_native: int, n_exact: int, n_para: int,
                   dapo_items: list) -> tuple[pa.Table, pa.Table]:
    """DeepMath rows plus a ground-truth table of planted duplicates (by row index)."""
    entries: list[tuple[dict, str, int]] = []  # (row, kind, dapo index)
    for _ in range(n_native):
        p, _, _, text = w.item(w.difficulty(), "abstract")
        entries.append((deepmath_row(p, text), "none", -1))
    picks = w.rng.sample(range(len(dapo_items)), n_exact + n_para)
    for j, idx in enumerate(picks):
        p, scenario, frame, text = dapo_items[idx]
        if j < n_exact:
            pre, post = DEEPMATH_WRAPPERS[j % len(DEEPMATH_WRAPPERS)]
            entries.append((deepmath_row(p, pre + text + post), "exact", idx))
        else:
            entries.append((deepmath_row(p, paraphrase(p, scenario, frame)), "paraphrase", idx))
    w.rng.shuffle(entries)
    table = pa.Table.from_pylist([e[0] for e in entries], schema=schemas.DEEPMATH)
    planted = pa.Table.from_pylist(
        [{"deepmath_row": i, "kind": kind, "dapo_row": idx}
         for i, (_, kind, idx) in enumerate(entries) if kind != "none"],
        schema=pa.schema([("deepmath_row", pa.int64()), ("kind", pa.string()),
                          ("dapo_row", pa.int64())]))
    return table, planted


def build_benchmarks(w: World, sizes: dict[str, int]) -> dict[str, pa.Table]:
    # the levels the tiny models are trained on; longer chains no tiny model solves
    spans = {"aime24": (2, 3), "aime25": (2, 3), "amc23": (1, 3)}
    tables = {}
    for name, (lo, hi) in spans.items():
        rows = []
        for i in range(sizes[name]):
            p, _, _, text = w.item(lo + i % (hi - lo + 1), "contest", reserve=True)
            ans = str(p.answer)
            if name == "aime24":
                rows.append({"id": 60 + i, "problem": text, "solution": solution(p, "chain"),
                             "answer": ans, "url": f"tiny://aime24/{i}", "year": "2024"})
            elif name == "aime25":
                rows.append({"problem": text, "answer": ans, "id": str(i)})
            else:
                rows.append({"id": i, "question": text, "answer": ans})
        tables[name] = pa.Table.from_pylist(rows, schema=schemas.BENCHMARKS[name])
    return tables


def build_probe(w: World, per_level: int) -> pa.Table:
    rows = []
    pools = list(FRAME_POOLS)
    for d in range(1, MAX_DIFFICULTY + 1):
        for i in range(per_level):
            p, _, _, text = w.item(d, pools[i % len(pools)], reserve=True)
            rows.append({"problem": text,
                         "answer": str(p.answer), "difficulty": d})
    schema = pa.schema([("problem", pa.string()), ("answer", pa.string()),
                        ("difficulty", pa.int64())])
    return pa.Table.from_pylist(rows, schema=schema)


@dataclass
class WorldParams:
    """Config ``tiny_world``: dataset sizes, planted duplicates, probe and benchmark sizes."""
    seed: int
    openthoughts_math: int
    openthoughts_nonmath: int
    openthoughts_duplicates: int
    dapo: int
    deepmath: int
    deepmath_exact_dups: int
    deepmath_paraphrase_dups: int
    probe_per_level: int
    triple_share: float
    benchmarks: dict[str, int]


def build(out: Path, params: dict[str, Any]) -> dict[str, int]:
    cfg = typed(WorldParams, params, "tiny_world")
    w = World(cfg.seed, cfg.triple_share)
    # Held-out sets first, so their problems are never reused by the training-like sets.
    benches = build_benchmarks(w, cfg.benchmarks)
    probe = build_probe(w, cfg.probe_per_level)
    ot = build_openthoughts(w, cfg.openthoughts_math, cfg.openthoughts_nonmath,
                            cfg.openthoughts_duplicates)
    dapo, dapo_items = build_dapo(w, cfg.dapo)
    deep, planted = build_deepmath(w, cfg.deepmath, cfg.deepmath_exact_dups,
                                   cfg.deepmath_paraphrase_dups, dapo_items)
    tables = {"openthoughts": ot, "dapo": dapo, "deepmath": deep, "deepmath_planted": planted,
              "probe": probe, **benches}
    for name, table in tables.items():
        write_parquet(out / f"{name}.parquet", table)
    write_json(out / "heldout.json", sorted([s, [list(op) for op in ops]] for s, ops in w.reserved))
    counts = {name: t.num_rows for name, t in tables.items()}
    write_json(out / "manifest.json", {"seed": cfg.seed, "rows": counts})
    return counts


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="output directory")
    ap.add_argument("--params", type=json.loads, required=True, help="tiny_world config as JSON")
    args = ap.parse_args(argv)
    counts = build(args.out, args.params)
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
