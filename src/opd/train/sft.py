"""Supervised fine-tuning pieces shared by the tiny-model builder and the cold start.

``encode_chat`` turns a chat (user turns, then the assistant reply) into token ids through the
tokenizer's own chat template and labels that cover only the assistant reply and its end of
turn; everything else is -100. ``holdout_split`` sets a seeded share of the examples aside
for an evaluation loss. ``length_grouped_batches`` makes batches of similar length in a
seeded order, so padding stays small without sorting the whole epoch.
``assistant_token_loss`` is the causal-LM loss with the LM head applied only where a label is
predicted. Learning-rate schedules live in the training core (``opd.train.trainer``).
"""

from __future__ import annotations

import random
from typing import Any

import torch

IGNORE = -100


def encode_chat(tokenizer: Any, messages: list[dict[str, str]],
                max_length: int | None = None, enable_thinking: bool = False,
                turn_end: str = "eos") -> tuple[list[int], list[int]]:
    """(input ids, labels) for a conversation whose last turn is the assistant's reply.

    The reply ends with the tokenizer's end-of-sequence token (``turn_end="eos"``) or, as
    LlamaFactory's templates do, with whatever the chat template writes after a reply
    (``"template"``: ``<|im_end|>`` and a newline for Qwen3), trained on like the reply.
    """
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("an SFT example must end with an assistant turn")
    head = tokenizer.apply_chat_template(messages[:-1], tokenize=False,
                                         add_generation_prompt=True,
                                         enable_thinking=enable_thinking)
    head_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    reply = messages[-1]["content"]
    if turn_end == "template":
        full = tokenizer.apply_chat_template(messages, tokenize=False,
                                             enable_thinking=enable_thinking)
        if not full.startswith(head + reply):
            raise ValueError("the chat template does not write the reply right after the "
                             "generation prompt; use turn_end='eos'")
        tail = full[len(head):]
    else:
        tail = reply + tokenizer.eos_token
    tail_ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    ids, labels = head_ids + tail_ids, [IGNORE] * len(head_ids) + tail_ids
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return ids, labels


def assistant_token_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``model(**batch).loss`` (the token mean of the cross-entropy over the labelled
    positions) with the LM head and the softmax applied only at the positions that predict a
    label: the prompt and padding positions, most of a short chat's, never become logits.

    For a single-process causal LM with a linear head (the tiny-model builder); a sharded model
    gathers its head inside its own forward pass, so it keeps ``model(**batch).loss``."""
    hidden = model.base_model(input_ids=batch["input_ids"],
                              attention_mask=batch["attention_mask"]).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    logits = model.get_output_embeddings()(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits.float(), targets[keep])


def holdout_split(n: int, ratio: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, held-out) indices: a seeded ``ratio`` of ``n`` examples held out (at least one
    when ``ratio`` > 0 and two or more examples exist), the rest in their order."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    k = min(n - 1, max(1, round(ratio * n))) if ratio > 0 and n > 1 else 0
    held = sorted(order[:k])
    held_set = set(held)
    return [i for i in range(n) if i not in held_set], held


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels``."""
    width = max(len(ids) for ids, _ in examples)
    ids_BT = torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _ in examples])
    mask_BT = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in examples])
    labels_BT = torch.tensor([lab + [IGNORE] * (width - len(lab)) for _, lab in examples])
    return {"input_ids": ids_BT, "attention_mask": mask_BT, "labels": labels_BT}


def grouped_by_length(items: list[Any], lengths: list[int], batch_size: int) -> list[list[Any]]:
    """``items`` sorted by length (stable) and cut into batches of ``batch_size``."""
    ordered = [items[i] for i in sorted(range(len(items)), key=lambda i: lengths[i])]
    return [ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)]


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int,
                           pool_batches: int = 16) -> list[list[int]]:
    """Indices in batches of similar length: shuffle, group within pools, shuffle the batches."""
    order = list(range(len(lengths)))
    rng = random.Random(seed)
    rng.shuffle(order)
    pool = batch_size * pool_batches
    batches = []
    for start in range(0, len(order), pool):
        chunk = order[start:start + pool]
        batches += grouped_by_length(chunk, [lengths[i] for i in chunk], batch_size)
    rng.shuffle(batches)
    return batches
