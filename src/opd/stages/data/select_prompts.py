"""Teacher-aligned prompt selection: keep the prompts a teacher can actually teach.

The teacher answers every prompt of a prompt set ``n`` times (the OPD template, sampling
settings from config). A prompt's score is the teacher's accuracy on it; with a student given,
the score is the teacher's accuracy minus the student's (what the teacher knows that the
student does not yet). Prompts with a score of at least ``min_score`` are kept, best first,
up to ``max_prompts``; ties keep the prompt-set order. Prompts without a gold answer cannot be
scored and are dropped (counted in the stats).

Writes the selected prompts (the prompt set's rows with ``teacher_accuracy``, and
``student_accuracy`` when scored against a student, plus ``score``) and a stats JSON.

    python -m opd.stages.data.select_prompts --prompts '{"path": ...}' --teacher T [--student S] \
        --out results/data/selected/NAME.parquet --stats NAME.stats.json --params '{...}'
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from opd.core.cli import parse_stage_args
from opd.core.config import typed
from opd.core.data import DataError, describe, load_prompt_set
from opd.train.engine import EngineParams, make_engine
from opd.train.generation import Sampling
from opd.core.grading import is_correct
from opd.core.io import write_json, write_parquet
from opd.core.prompts import apply_template, chat_prompt
from opd.core.models import ModelRef


@dataclass
class SelectionParams(EngineParams):
    """A selection (config ``prompt_selection.<name>``, template resolved) with the generation
    engine; every default comes from the config schema."""
    prompts: str
    teacher: str
    student: str | None
    template: str
    n: int
    temperature: float
    top_p: float
    max_new_tokens: int
    min_score: float
    max_prompts: int | None
    seed: int


def accuracy(model: ModelRef | str, prompts: pd.DataFrame, cfg: SelectionParams) -> list[float]:
    """Mean correctness of ``cfg.n`` samples per prompt."""
    engine, tok = make_engine(cfg.engine, model, batch_size=cfg.batch_size,
                              tensor_parallel_size=cfg.tensor_parallel_size, seed=cfg.seed)
    sampling = Sampling(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                        top_p=cfg.top_p, n=cfg.n, seed=cfg.seed)
    thinking = ModelRef.of(model).thinking
    texts = [chat_prompt(tok, apply_template(cfg.template, p), thinking)
             for p in prompts["prompt"]]
    completions = engine.generate(texts, sampling)
    return [sum(is_correct(c.text, gold) for c in cs) / len(cs)
            for cs, gold in zip(completions, prompts["answer"])]


def rank(scored: pd.DataFrame, min_score: float, max_prompts: int | None) -> pd.DataFrame:
    """Rows with ``score >= min_score``, best first (stable), at most ``max_prompts``."""
    kept = scored[scored["score"] >= min_score].sort_values("score", ascending=False,
                                                             kind="stable")
    return kept if max_prompts is None else kept.head(max_prompts)


def select(spec: dict[str, Any], teacher: str, student: str | None,
           params: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    cfg = typed(SelectionParams, params, "prompt_selection")
    prompts = load_prompt_set(spec)
    graded = prompts[prompts["answer"].notna()].reset_index(drop=True)
    if graded.empty:
        raise DataError(f"{describe(spec)}: no prompt has a gold answer; nothing to score")
    graded["teacher_accuracy"] = accuracy(teacher, graded, cfg)
    graded["score"] = graded["teacher_accuracy"]
    if student is not None:
        graded["student_accuracy"] = accuracy(student, graded, cfg)
        graded["score"] = graded["teacher_accuracy"] - graded["student_accuracy"]
    kept = rank(graded, cfg.min_score, cfg.max_prompts)
    if kept.empty:
        raise DataError(f"{describe(spec)}: no prompt reaches score {cfg.min_score} "
                        f"(best {graded['score'].max():.3f}); lower select.min_score")
    stats = {"prompts_in": int(len(prompts)), "without_answer": int(len(prompts) - len(graded)),
             "kept": int(len(kept)), "score": "teacher - student" if student else "teacher",
             "teacher_accuracy_all": round(float(graded["teacher_accuracy"].mean()), 4),
             "teacher_accuracy_kept": round(float(kept["teacher_accuracy"].mean()), 4)}
    if student is not None:
        stats["student_accuracy_all"] = round(float(graded["student_accuracy"].mean()), 4)
        stats["student_accuracy_kept"] = round(float(kept["student_accuracy"].mean()), 4)
    return kept.reset_index(drop=True), stats


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=json.loads, required=True, help="prompt set spec (JSON)")
    ap.add_argument("--teacher", type=ModelRef.parse, required=True,
                    help="teacher model directory or hub id (or the workflow's JSON spec)")
    ap.add_argument("--student", type=ModelRef.parse, default=None,
                    help="score teacher minus this student")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--stats", type=Path, required=True)
    args = parse_stage_args(ap, argv, threads=1)
    kept, stats = select(args.prompts, args.teacher, args.student, args.params)
    write_parquet(args.out, pa.Table.from_pandas(kept, preserve_index=False))
    write_json(args.stats, stats)
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
