"""Pre-flight compatibility check of a teacher/student pair, before spending GPU hours.

On a sample of the experiment's prompts, the student generates rollouts and the teacher
scores them: initial top-k overlap, shared probability mass, entropy gap and reverse KL at
step 0 (as the paper finds, initial overlap predicts whether OPD succeeds). The teacher also
answers the same prompts: its accuracy on prompts the student never solves measures what it
can offer that the student lacks. The verdict, with thresholds from config:

- "thinking-pattern mismatch": overlap below ``min_overlap``, or a student top-k mass on the
  shared tokens below ``min_shared_mass`` (the paper finds 97-99% in successful runs);
- "no new capability": the teacher solves fewer than ``min_new_capability`` of the prompts the
  student fails on;
- "compatible" otherwise.

    python -m opd.stages.opd.diagnose_pair --student S --teacher T --prompts '{...}' --out D.json --params '{...}'
"""

from __future__ import annotations

import argparse
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from opd.core.cli import parse_stage_args
from opd.core.config import typed
from opd.core.data import load_prompt_set
from opd.train.generation import RolloutBatch, Sampling, micro_batches, sample_batch
from opd.core.grading import is_correct
from opd.core.io import write_json
from opd.train.losses import METRICS, opd_loss_hidden, weighted_means
from opd.train.pair import load_pair, response_hidden
from opd.core.prompts import apply_template, chat_prompt
from opd.core.models import ModelRef


def accuracy_by_prompt(batch: RolloutBatch, answers: list[str | None], n: int) -> list[bool | None]:
    """Whether any of a prompt's ``n`` responses is correct (None without a reference)."""
    out = []
    for i, ans in enumerate(answers):
        outs = batch.completions[i * n:(i + 1) * n]
        out.append(None if ans is None else any(is_correct(c.text, ans) for c in outs))
    return out


@dataclass
class DiagnoseParams:
    """Config ``diagnose`` with the experiment's seed, template and OPD sampling settings;
    every default comes from the config schema."""
    n_prompts: int
    responses_per_prompt: int
    min_overlap: float
    min_shared_mass: float
    min_new_capability: float
    seed: int
    template: str
    max_response_tokens: int
    temperature: float
    teacher_temperature: float
    top_k: int
    chunk_size: int | None
    max_tokens_per_micro_batch: int


@torch.no_grad()
def pair_metrics(student: Any, teacher: Any, batch: RolloutBatch, cfg: DiagnoseParams
                 ) -> dict[str, float]:
    """Mechanism metrics of the student's rollouts, micro-batch by micro-batch through the
    hidden-state loss (no [B, T, V] logits), pooled by their weights."""
    parts = []
    for mb in micro_batches(batch, cfg.max_tokens_per_micro_batch):
        s_hidden, s_head = response_hidden(student, mb)
        t_hidden, t_head = response_hidden(teacher, mb)
        _, metrics = opd_loss_hidden(s_hidden, s_head, t_hidden, t_head, mb.response_ids,
                                     mb.response_mask, variant="topk", top_k=cfg.top_k,
                                     teacher_temperature=cfg.teacher_temperature,
                                     chunk_size=cfg.chunk_size)
        weights = metrics.pop("weights")
        metrics.pop("buckets", None)
        parts.append((metrics, weights))
    pooled = weighted_means(parts)
    return {k: pooled.get(k, math.nan) for k in METRICS}


@torch.no_grad()
def diagnose(args: argparse.Namespace) -> dict[str, Any]:
    cfg = typed(DiagnoseParams, args.params, "diagnose")
    torch.manual_seed(cfg.seed)
    tok, student, teacher = load_pair(args.student, args.teacher)
    student.eval()
    if student.device.type == "cuda":  # no training here: bf16 weights and KV cache suffice
        student.to(torch.bfloat16)
        teacher.to(torch.bfloat16)
    prompts = load_prompt_set(args.prompts)
    picks = sorted(random.Random(cfg.seed).sample(range(len(prompts)),
                                                     min(cfg.n_prompts, len(prompts))))
    rows, n = prompts.iloc[picks], cfg.responses_per_prompt
    texts = [chat_prompt(tok, apply_template(cfg.template, p), args.student.thinking)
             for p in rows["prompt"]]
    flat = [t for t in texts for _ in range(n)]
    sampling = Sampling(max_new_tokens=cfg.max_response_tokens, temperature=cfg.temperature,
                        seed=cfg.seed)
    s_batch = sample_batch(student, tok, flat, sampling)
    metrics = pair_metrics(student, teacher, s_batch, cfg)
    t_batch = sample_batch(teacher, tok, flat, sampling)
    answers = list(rows["answer"])
    s_ok, t_ok = accuracy_by_prompt(s_batch, answers, n), accuracy_by_prompt(t_batch, answers, n)
    graded = [(s, t) for s, t in zip(s_ok, t_ok) if s is not None]
    unsolved = [t for s, t in graded if not s]
    report = {
        "student": str(args.student), "teacher": str(args.teacher), "prompts": len(rows),
        "responses_per_prompt": n,
        **{k: v for k, v in metrics.items() if k not in ("buckets", "weights")},
        "student_solved": sum(s for s, _ in graded) / len(graded) if graded else None,
        "teacher_solved": sum(t for _, t in graded) / len(graded) if graded else None,
        "student_unsolved_prompts": len(unsolved),
        "teacher_on_student_unsolved": sum(unsolved) / len(unsolved) if unsolved else None,
        "thresholds": {"min_overlap": cfg.min_overlap, "min_shared_mass": cfg.min_shared_mass,
                       "min_new_capability": cfg.min_new_capability},
    }
    new_cap = report["teacher_on_student_unsolved"]
    overlap, mass = report["overlap_ratio"], report["shared_mass_student"]
    if (math.isnan(overlap) or overlap < cfg.min_overlap
            or math.isnan(mass) or mass < cfg.min_shared_mass):
        verdict = "thinking-pattern mismatch"
    elif new_cap is not None and new_cap < cfg.min_new_capability:
        verdict = "no new capability"
    else:
        verdict = "compatible"
    report["verdict"] = verdict
    report["verdict_line"] = (
        f"{verdict}: overlap {report['overlap_ratio']:.3f}, shared mass "
        f"{report['shared_mass_student']:.3f} ({report['shared_mass_at_disagreement']:.3f} where "
        f"the top tokens differ), reverse KL {report['reverse_kl']:.3f}, teacher "
        f"solves {0 if new_cap is None else new_cap:.2f} of the student's unsolved prompts")
    return report


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", type=ModelRef.parse, required=True)
    ap.add_argument("--teacher", type=ModelRef.parse, required=True)
    ap.add_argument("--prompts", type=json.loads, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = parse_stage_args(ap, argv)
    report = diagnose(args)
    write_json(args.out, report)
    print(report["verdict_line"])


if __name__ == "__main__":
    main()
