"""Measured peak memory of one OPD forward + backward of a small Qwen3 pair on CPU (a helper
run in its own process by test_plan.py): prints the shape and the peak above the models."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from opd.train.losses import opd_loss_hidden


def peak_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise KeyError("VmHWM")


def main() -> None:
    shape, tokens, chunk = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    torch.manual_seed(0)
    torch.set_num_threads(1)
    student = Qwen3ForCausalLM(Qwen3Config(**shape, attn_implementation="sdpa")).train()
    teacher = Qwen3ForCausalLM(Qwen3Config(**shape, attn_implementation="sdpa"))
    teacher.requires_grad_(False)
    ids = torch.randint(0, shape["vocab_size"], (1, tokens))
    mask = torch.ones(1, tokens, dtype=torch.long)
    base = peak_bytes()
    hidden = student.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
    with torch.no_grad():
        t_hidden = teacher.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
    loss, _ = opd_loss_hidden(hidden, student.get_output_embeddings(), t_hidden,
                              teacher.get_output_embeddings(), ids, mask.float(),
                              variant="full", chunk_size=chunk)
    loss.backward()
    print(json.dumps({"peak": peak_bytes() - base,
                      "params": sum(p.numel() for p in student.parameters())}))


if __name__ == "__main__":
    main()
