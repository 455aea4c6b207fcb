"""A teacher/student pair: loading both models and checking that they share a tokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache
from transformers.cache_utils import DynamicLayer

from opd.core.models import ModelRef
from opd.train.generation import RolloutBatch, distinct_rows, position_ids
from opd.train.parallel import sharded


class TokenizerMismatch(ValueError):
    """Teacher and student do not share a tokenizer (OPD compares them token by token)."""


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(model: ModelRef | str, on: str) -> Any:
    """A causal LM in float32 (the master weights) at its revision, never running remote
    code."""
    ref = ModelRef.of(model).checked()
    model = AutoModelForCausalLM.from_pretrained(ref.location, dtype=torch.float32,
                                                 trust_remote_code=False, **ref.load_kwargs())
    return model.to(on)


def load_tokenizer(model: ModelRef | str) -> Any:
    ref = ModelRef.of(model).checked()
    return AutoTokenizer.from_pretrained(ref.location, **ref.load_kwargs())


def check_same_tokenizer(student_tok: Any, teacher_tok: Any, student: str, teacher: str) -> None:
    vs, vt = student_tok.get_vocab(), teacher_tok.get_vocab()
    if vs != vt:
        differ = len(set(vs.items()) - set(vt.items()))
        raise TokenizerMismatch(
            f"teacher {teacher} and student {student} do not share a tokenizer "
            f"({len(vs)} vs {len(vt)} tokens, {differ} student entries differ); OPD scores the "
            "student's own tokens with the teacher, so both must use the same vocabulary")


def load_pair(student: ModelRef | str, teacher: ModelRef | str, student_weights: str | None = None,
              on: str | torch.device | None = None) -> tuple[Any, Any, Any]:
    """(tokenizer, student, frozen teacher) on ``on`` (default: the default device), after the
    tokenizer check.

    ``student_weights`` loads the student from a local directory instead (a checkpoint to
    resume from).
    """
    tok = load_tokenizer(student)
    check_same_tokenizer(tok, load_tokenizer(teacher), str(student), str(teacher))
    on = on or device()
    weights = ModelRef(student_weights, True) if student_weights else ModelRef.of(student)
    student_model = load_model(weights, on)
    teacher_model = load_model(teacher, on).eval().requires_grad_(False)
    return tok, student_model, teacher_model


def copy_rows(cache: DynamicCache, rows: torch.Tensor) -> None:
    """``cache.batch_select_indices(rows)`` by ``index_select``: the same values, and in the
    backward pass the same sums, which ``index_add`` forms on CPU several times faster than
    advanced indexing's ``index_put`` with accumulation, and with several threads in the
    same order every run (an update on 2 threads repeats bit for bit)."""
    for layer in cache.layers:
        if type(layer) is not DynamicLayer:  # a layer with more state keeps its own method
            layer.batch_select_indices(rows)
        elif layer.get_seq_length() > 0:
            layer.keys = layer.keys.index_select(0, rows)
            layer.values = layer.values.index_select(0, rows)


@dataclass
class Passes:
    """The model's outputs over a batch: ``outputs`` of one pass over whole sequences, or of
    two (each distinct prompt, then every response on top of its prompt's copied cache) with
    ``copies``, the distinct prompt of each row."""
    outputs: list[Any]
    copies: torch.Tensor | None = None


def forward_responses(model: Any, batch: RolloutBatch, logits_to_keep: int) -> Passes:
    """The model's forward pass over ``batch``'s sequences, whose last ``logits_to_keep``
    positions get logits. A prompt repeated in the batch (the n responses of one prompt) runs
    once: its keys and values are copied to each of its responses, which run on top of them,
    and gradients flow back through the copies. One pass over whole sequences when no prompt
    repeats, the model is sharded (FSDP2 gathers a sharded model's weights once per pass) or
    checkpoints its activations (``transformers`` then drops the cache)."""
    P = batch.prompt_width
    positions = position_ids(batch.attention_mask)
    single = sharded(model) or getattr(model, "is_activation_checkpointing", False) or P == 0
    if not single:
        first, copies = distinct_rows(batch.input_ids[:, :P], batch.attention_mask[:, :P])
        single = len(first) == len(copies)
    if single:
        return Passes([model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                             position_ids=positions, logits_to_keep=logits_to_keep)])
    cache = DynamicCache(config=model.config)
    prompts = model(input_ids=batch.input_ids[first, :P],
                    attention_mask=batch.attention_mask[first, :P],
                    position_ids=positions[first, :P], past_key_values=cache, use_cache=True,
                    logits_to_keep=1)
    copy_rows(cache, copies)
    responses = model(input_ids=batch.input_ids[:, P:], attention_mask=batch.attention_mask,
                      position_ids=positions[:, P:], past_key_values=cache, use_cache=True,
                      logits_to_keep=max(logits_to_keep - 1, 1))
    return Passes([prompts, responses], copies)


def response_logits(model: Any, batch: RolloutBatch) -> torch.Tensor:
    """Logits [N, L, V] that predicted each response token."""
    L = batch.response_mask.shape[1]
    passes = forward_responses(model, batch, L + 1)
    if passes.copies is None:
        return passes.outputs[0].logits[:, :-1]
    # the last prompt position predicts the first response token
    prompts, responses = passes.outputs
    return torch.cat([prompts.logits[passes.copies], responses.logits[:, :-1]], 1)


def response_hidden(model: Any, batch: RolloutBatch) -> tuple[torch.Tensor, Any]:
    """Final hidden states [N, L, H] at the positions that predicted each response token, and
    the LM head that turns them into logits: ``head(hidden)`` equals ``response_logits``
    without the [N, L, V] tensor being formed.

    The model's own forward pass runs (logits for the last position only) and the decoder's
    output is taken on the way: a model sharded with FSDP2 gathers its embeddings, norm and
    head only in that pass, and reduces their gradients after it."""
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        raise TypeError(f"{type(model).__name__}: the OPD loss needs a linear LM head, "
                        f"found {type(head).__name__}")
    if getattr(model.config, "final_logit_softcapping", None):
        raise ValueError(f"{type(model).__name__} caps its logits; the hidden-state loss would "
                         "differ from the model's own distribution")
    L = batch.response_mask.shape[1]
    seen: list[torch.Tensor] = []
    hook = model.base_model.register_forward_hook(
        lambda _m, _args, out: seen.append(out.last_hidden_state))
    try:
        copies = forward_responses(model, batch, 1).copies
    finally:
        hook.remove()
    if copies is None:
        return seen[0][:, -(L + 1):-1], head
    return torch.cat([seen[0][:, -1:].index_select(0, copies), seen[1][:, :-1]], 1), head
