"""Batched text generation with ``transformers`` (CPU or one GPU).

Left padding, KV cache, per-call sampling parameters; returns the decoded completions,
their finish reasons and token counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    seed: int = 0


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "stop" (end of sequence) or "length" (hit max_new_tokens)
    prompt_tokens: int
    response_tokens: int


@torch.no_grad()
def generate(model: Any, tokenizer: Any, prompts: list[str], sampling: Sampling,
             batch_size: int = 64, progress: bool = True) -> list[list[Completion]]:
    """``sampling.n`` completions for each prompt (already chat-formatted)."""
    tokenizer.padding_side = "left"
    eos = tokenizer.eos_token_id
    flat = [p for p in prompts for _ in range(sampling.n)]
    out: list[Completion] = []
    torch.manual_seed(sampling.seed)
    greedy = sampling.temperature == 0
    for start in tqdm(range(0, len(flat), batch_size), desc="generate", disable=not progress):
        chunk = flat[start:start + batch_size]
        enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(model.device) for k, v in enc.items()}
        gen = model.generate(
            **enc, max_new_tokens=sampling.max_new_tokens, do_sample=not greedy,
            temperature=None if greedy else sampling.temperature,
            top_p=None if greedy else sampling.top_p, top_k=None if greedy else 0,
            eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
        new = gen[:, enc["input_ids"].shape[1]:].tolist()
        prompt_lens = enc["attention_mask"].sum(1).tolist()
        for ids, plen in zip(new, prompt_lens):
            stop = eos in ids
            ids = ids[:ids.index(eos)] if stop else ids
            out.append(Completion(tokenizer.decode(ids, skip_special_tokens=True),
                                  "stop" if stop else "length", int(plen), len(ids)))
    return [out[i * sampling.n:(i + 1) * sampling.n] for i in range(len(prompts))]
