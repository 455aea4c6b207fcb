"""Two OPD updates on one fixed batch of rollouts, each process taking its share, as the
trainer takes them (``prepare_student``, then ``update``); run with ``torchrun`` for
several processes (the student sharded with FSDP2) or plainly for one.

    python sharded_probe.py STUDENT TEACHER PARAMS_JSON OUT

Writes to OUT (process 0): the loss of each update and the full weights after them.
"""

from __future__ import annotations

import json
import sys

import torch
from accelerate import Accelerator

from opd.core.prompts import chat_prompt
from opd.stages.opd.opd_train import OPDParams, prepare_student, update
from opd.train.generation import RolloutBatch, Sampling, sample_batch
from opd.train.pair import load_pair
from opd.train.parallel import full_state_dict


def main(student_dir: str, teacher_dir: str, params: str, out: str) -> None:
    acc = Accelerator(cpu=True)
    world, rank = acc.num_processes, acc.process_index
    cfg = OPDParams.from_config(json.loads(params))
    tok, student, teacher = load_pair(student_dir, teacher_dir)
    torch.manual_seed(0)  # every process samples the same batch from the same weights
    texts = [chat_prompt(tok, f"Start with {i}. The changes are +1, +{i % 3}.") for i in range(7)]
    batch = sample_batch(student.eval(), tok, texts, Sampling(max_new_tokens=10, temperature=1.0))
    total = int(batch.response_mask.sum())
    rows = torch.arange(rank, len(texts), world)   # uneven shares: 4 and 3 rollouts
    mine = RolloutBatch(batch.input_ids[rows], batch.attention_mask[rows],
                        batch.response_mask[rows], batch.prompt_width, [])
    prepare_student(student, cfg, world, bf16=False)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    losses = []
    for _ in range(2):
        parts, _, _, _ = update(student, teacher, opt, mine, cfg, total)
        loss = torch.tensor(sum(m["loss"] * w["loss"] for m, w in parts), dtype=torch.float64)
        if world > 1:
            torch.distributed.all_reduce(loss)
        losses.append(float(loss) / total)
    weights = full_state_dict(student)
    if rank == 0:
        torch.save({"losses": losses, "weights": weights}, out)


if __name__ == "__main__":
    main(*sys.argv[1:5])
