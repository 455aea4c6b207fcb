"""Supervised fine-tuning pieces shared by the tiny-model builder and the cold start.

``encode_chat`` turns a chat (user turns, then the assistant reply) into token ids through the
tokenizer's own chat template and labels that cover only the assistant reply and its end of
turn; everything else is -100. ``length_grouped_batches`` makes batches of similar length in a
seeded order, so padding stays small without sorting the whole epoch.
"""

from __future__ import annotations

import math
import random
from typing import Any

import torch

IGNORE = -100


def encode_chat(tokenizer: Any, messages: list[dict[str, str]],
                max_length: int | None = None) -> tuple[list[int], list[int]]:
    """(input ids, labels) for a conversation whose last turn is the assistant's reply."""
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("an SFT example must end with an assistant turn")
    head = tokenizer.apply_chat_template(messages[:-1], tokenize=False,
                                         add_generation_prompt=True, enable_thinking=False)
    head_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    tail_ids = tokenizer(messages[-1]["content"] + tokenizer.eos_token,
                         add_special_tokens=False)["input_ids"]
    ids, labels = head_ids + tail_ids, [IGNORE] * len(head_ids) + tail_ids
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return ids, labels


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels``."""
    width = max(len(ids) for ids, _ in examples)
    ids_BT = torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _ in examples])
    mask_BT = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in examples])
    labels_BT = torch.tensor([lab + [IGNORE] * (width - len(lab)) for _, lab in examples])
    return {"input_ids": ids_BT, "attention_mask": mask_BT, "labels": labels_BT}


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int,
                           pool_batches: int = 16) -> list[list[int]]:
    """Indices in batches of similar length: shuffle, sort within pools, shuffle the batches."""
    order = list(range(len(lengths)))
    rng = random.Random(seed)
    rng.shuffle(order)
    pool = batch_size * pool_batches
    batches = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start:start + pool], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def warmup_cosine(step: int, total: int, warmup_ratio: float, floor: float = 0.0) -> float:
    """LR multiplier: linear warm-up, then cosine decay from 1 to ``floor``."""
    warm = max(1, math.ceil(warmup_ratio * total))
    if step < warm:
        return (step + 1) / warm
    frac = min(1.0, (step - warm) / max(1, total - warm))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac))
