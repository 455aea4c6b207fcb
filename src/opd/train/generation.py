"""Batched sampling with ``transformers`` models (CPU or one GPU).

``sample_batch`` returns the token ids exactly as sampled (left-padded prompt, response, pad
after the end of sequence), which training uses directly; ``generate`` wraps it for
evaluation and returns decoded completions with finish reasons and token counts.

``decode`` is the sampling loop: one prefill (each distinct prompt once), then one token per
step through the model's key/value cache, and a sequence that has ended leaves the batch (its
rows are dropped from the cache), so late steps only run the sequences still going. A Qwen3
model on CPU takes its decode steps through ``Qwen3Step``, which gives the same logits up to
float rounding with less per-call cost, on a ``StepCache`` that writes each new token in
place. Greedy decoding picks the same tokens as ``model.generate``; sampling draws from the
same distribution (temperature, then nucleus ``top_p``) by inverse transform, one uniform
number per sequence and step. A model sharded over processes (``synced``) uses
``model.generate(synced_gpus=True)`` instead, whose processes keep stepping together until
every one has finished.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm
from transformers import DynamicCache

from opd.train.qwen3_step import Qwen3Step, StepCache


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


@dataclass
class RolloutBatch:
    """Sampled sequences: ``input_ids``/``attention_mask`` [N, P + L]; ``response_mask``
    [N, L] marks generated tokens up to and including the end-of-sequence token."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    prompt_width: int
    completions: list[Completion]

    @property
    def response_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_width:]


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as ``generate`` uses them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def distinct_rows(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows of ``ids`` [N, P] (with their ``mask``) that differ: ``first`` [U], the index
    of each distinct row's first occurrence in order, and ``copies`` [N], for each row the
    position in ``first`` of the row equal to it (``ids[first][copies]`` equals ``ids``)."""
    seen: dict[bytes, int] = {}
    first, copies = [], []
    for i, row in enumerate(torch.cat([ids, mask.to(ids.dtype)], 1).cpu().numpy()):
        key = row.tobytes()
        if key not in seen:
            seen[key] = len(first)
            first.append(i)
        copies.append(seen[key])
    as_index = lambda x: torch.tensor(x, dtype=torch.long, device=ids.device)  # noqa: E731
    return as_index(first), as_index(copies)


# the most probable tokens a row's nucleus is looked for in before the whole vocabulary is sorted
NUCLEUS_CANDIDATES = 64


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """``probs`` [N, V] with every token outside its row's nucleus set to 0: the nucleus is
    the smallest set of most probable tokens whose mass reaches ``top_p`` (a token goes when
    the tokens more probable than it already reach it; the most probable one always stays).

    The nucleus is looked for among each row's ``NUCLEUS_CANDIDATES`` most probable tokens,
    which is much cheaper than sorting the vocabulary. Where a row's nucleus does not close
    among them, or the last token kept ties with the first token dropped (an order among
    equal probabilities would choose), the whole vocabulary is sorted. Both ways sum the
    same probabilities in the same order; on CPU, where a prefix sum does not depend on what
    follows it, they give the same tensor bit for bit."""
    k = min(NUCLEUS_CANDIDATES, probs.shape[-1])
    top, order = probs.topk(k, dim=-1)
    drop = top.cumsum(-1) - top >= top_p
    kept = (~drop).sum(-1, keepdim=True)          # >= 1: the first token is never dropped
    closed = drop[:, -1]
    last_kept = top.gather(-1, kept - 1).squeeze(-1)
    first_dropped = top.gather(-1, kept.clamp_max(k - 1)).squeeze(-1)
    if not bool((closed & (last_kept > first_dropped)).all()):
        top, order = probs.sort(-1, descending=True)
        drop = top.cumsum(-1) - top >= top_p
    return torch.zeros_like(probs).scatter_(-1, order, top.masked_fill(drop, 0.0))


def pick(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """The next token of each row of ``logits`` [N, V]: the argmax at temperature 0, else a
    draw from softmax(logits / temperature) restricted to the ``nucleus`` of ``top_p``."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        probs = nucleus(probs, top_p)
    cdf = probs.cumsum(-1)
    u = torch.rand(cdf.shape[0], 1, dtype=cdf.dtype, device=cdf.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_max(cdf.shape[1] - 1)


@torch.no_grad()
def decode(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
           sampling: Sampling, eos: int, pad: int) -> torch.Tensor:
    """Response token ids [N, L] for left-padded prompts: up to ``max_new_tokens`` per row,
    the end-of-sequence token included, ``pad`` after it; L is the longest response."""
    n = input_ids.shape[0]
    tokens = torch.full((n, sampling.max_new_tokens), pad, dtype=torch.long,
                        device=input_ids.device)
    if sampling.max_new_tokens == 0 or n == 0:
        return tokens[:, :0]
    positions = position_ids(attention_mask)
    cache = DynamicCache(config=model.config)
    # a prompt repeated in the batch (n responses each) is prefilled once, its cache rows copied
    first, copies = distinct_rows(input_ids, attention_mask)
    logits = model(input_ids=input_ids[first], attention_mask=attention_mask[first],
                   position_ids=positions[first], past_key_values=cache, use_cache=True,
                   logits_to_keep=1).logits[copies, -1]
    cache.batch_select_indices(copies)
    step = Qwen3Step(model) if Qwen3Step.supports(model) else None
    if step is not None:
        cache = StepCache(cache)   # written in place, step by step
    rows = torch.arange(n, device=input_ids.device)   # the batch rows still going
    mask, position = attention_mask, positions[:, -1] + 1
    used = 0
    for t in range(sampling.max_new_tokens):
        nxt = pick(logits, sampling.temperature, sampling.top_p)
        tokens[rows, t] = nxt
        used = t + 1
        going = nxt != eos
        if t + 1 == sampling.max_new_tokens or not bool(going.any()):
            break
        if not bool(going.all()):
            keep = going.nonzero().squeeze(1)
            rows, mask, position, nxt = rows[keep], mask[keep], position[keep], nxt[keep]
            cache.batch_select_indices(keep)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        if step is not None:
            logits = step(nxt[:, None], mask, position[:, None], cache)
        else:
            logits = model(input_ids=nxt[:, None], attention_mask=mask,
                           position_ids=position[:, None], past_key_values=cache,
                           use_cache=True).logits[:, -1]
        position = position + 1
    return tokens[:, :used]


def tokenized(tokenizer: Any, prompts: list[str], device: Any) -> dict[str, torch.Tensor]:
    """Left-padded ``input_ids`` and ``attention_mask`` of ``prompts``, each distinct prompt
    tokenized once (a batch repeats every prompt for its n responses)."""
    tokenizer.padding_side = "left"
    distinct = list(dict.fromkeys(prompts))
    enc = tokenizer(distinct, return_tensors="pt", padding=True, add_special_tokens=False)
    enc = {k: enc[k] for k in ("input_ids", "attention_mask")}
    if len(distinct) < len(prompts):
        where = {p: i for i, p in enumerate(distinct)}
        rows = torch.tensor([where[p] for p in prompts])
        enc = {k: v.index_select(0, rows) for k, v in enc.items()}
    return {k: v.to(device) for k, v in enc.items()}


@torch.no_grad()
def sample_batch(model: Any, tokenizer: Any, prompts: list[str], sampling: Sampling,
                 synced: bool = False) -> RolloutBatch:
    """One batch of already chat-formatted prompts sampled by ``decode`` (no repetition: n is
    1 here). ``synced``: the model is sharded over processes, which all keep stepping until
    every one has finished (``opd.train.parallel``), through ``model.generate``."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    enc = tokenized(tokenizer, prompts, model.device)
    if synced:
        greedy = sampling.temperature == 0
        gen = model.generate(
            **enc, max_new_tokens=sampling.max_new_tokens, do_sample=not greedy,
            temperature=None if greedy else sampling.temperature,
            top_p=None if greedy else sampling.top_p, top_k=None if greedy else 0,
            eos_token_id=eos, pad_token_id=pad, synced_gpus=True)
    else:
        gen = torch.cat([enc["input_ids"], decode(model, enc["input_ids"],
                                                  enc["attention_mask"], sampling, eos, pad)], 1)
    width = enc["input_ids"].shape[1]
    resp = gen[:, width:]
    is_eos = resp == eos
    # tokens after the first end-of-sequence are padding
    after = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
    response_mask = (~after).long()
    if resp.shape[1] == 0:
        response_mask = resp.new_zeros(resp.shape)
    completions = []
    for row, m, plen in zip(resp.tolist(), response_mask.tolist(), enc["attention_mask"].sum(1).tolist()):
        n = sum(m)
        stop = n > 0 and row[n - 1] == eos
        ids = row[:n - 1] if stop else row[:n]
        completions.append(Completion(tokenizer.decode(ids, skip_special_tokens=True),
                                      "stop" if stop else "length", int(plen), len(ids)))
    attention = torch.cat([enc["attention_mask"], response_mask.to(enc["attention_mask"].dtype)], 1)
    return RolloutBatch(gen, attention, response_mask, width, completions)


def generate(model: Any, tokenizer: Any, prompts: list[str], sampling: Sampling,
             batch_size: int = 64, progress: bool = True,
             synced: bool = False) -> list[list[Completion]]:
    """``sampling.n`` completions for each prompt (already chat-formatted). ``synced``: as
    for ``sample_batch``; every process must then make the same number of calls."""
    flat = [p for p in prompts for _ in range(sampling.n)]
    torch.manual_seed(sampling.seed)
    out: list[Completion] = []
    for start in tqdm(range(0, len(flat), batch_size), desc="generate", disable=not progress):
        out += sample_batch(model, tokenizer, flat[start:start + batch_size], sampling,
                            synced).completions
    return [out[i * sampling.n:(i + 1) * sampling.n] for i in range(len(prompts))]


def rollout_batch(prompt_ids: list[list[int]], response_ids: list[list[int]],
                  finish_reasons: list[str], tokenizer: Any,
                  device: str | torch.device = "cpu") -> RolloutBatch:
    """A ``RolloutBatch`` laid out as ``sample_batch`` lays it out, from token ids sampled
    elsewhere (vLLM): prompts left-padded, responses right-padded, a response that stopped
    ends with the end-of-sequence token (added when the engine left it out)."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    responses = [list(r) + [eos] if f == "stop" and (not r or r[-1] != eos) else list(r)
                 for r, f in zip(response_ids, finish_reasons)]
    width = max(len(p) for p in prompt_ids)
    length = max((len(r) for r in responses), default=0)
    ids, attn, mask, completions = [], [], [], []
    for p, r, f in zip(prompt_ids, responses, finish_reasons):
        ids.append([pad] * (width - len(p)) + list(p) + r + [pad] * (length - len(r)))
        attn.append([0] * (width - len(p)) + [1] * len(p) + [1] * len(r) + [0] * (length - len(r)))
        mask.append([1] * len(r) + [0] * (length - len(r)))
        text_ids = r[:-1] if f == "stop" else r
        completions.append(Completion(tokenizer.decode(text_ids, skip_special_tokens=True),
                                      "stop" if f == "stop" else "length", len(p), len(text_ids)))
    as_tensor = lambda rows: torch.tensor(rows, dtype=torch.long, device=device)  # noqa: E731
    return RolloutBatch(as_tensor(ids), as_tensor(attn), as_tensor(mask), width, completions)


def micro_batches(batch: RolloutBatch, max_tokens: int) -> list[RolloutBatch]:
    """The rollouts grouped by length into micro-batches of at most ``max_tokens`` padded
    tokens each (rows x the group's longest prompt + longest response, padding columns no row
    needs trimmed off); a sequence longer than the budget goes alone. Rollouts without
    response tokens are left out. The grouping does not change the update: every micro-batch
    is weighted by its share of the step's tokens."""
    P = batch.prompt_width
    prompt_len = batch.attention_mask[:, :P].sum(1).tolist()
    resp_len = batch.response_mask.sum(1).tolist()
    order = sorted((i for i in range(len(resp_len)) if resp_len[i]),
                   key=lambda i: (prompt_len[i] + resp_len[i], i))
    groups: list[list[int]] = []
    width = (0, 0)
    for i in order:
        grown = (max(width[0], prompt_len[i]), max(width[1], resp_len[i]))
        if groups and (len(groups[-1]) + 1) * sum(grown) <= max_tokens:
            groups[-1].append(i)
            width = grown
        else:
            groups.append([i])
            width = (prompt_len[i], resp_len[i])
    out = []
    for g in groups:
        idx = torch.tensor(g, device=batch.input_ids.device)
        p = int(max(prompt_len[i] for i in g))
        r = int(max(resp_len[i] for i in g))
        cols = slice(P - p, P + r)
        out.append(RolloutBatch(batch.input_ids[idx][:, cols], batch.attention_mask[idx][:, cols],
                                batch.response_mask[idx][:, :r], p, []))
    return out
