"""A prompt repeated in a batch runs once: the forward passes that share it give the logits,
hidden states and gradients of the plain pass over whole sequences, and the sampling loop's
shared prefill samples what ``model.generate`` samples."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, Qwen3Config, Qwen3ForCausalLM

from opd.train.generation import RolloutBatch, Sampling, decode, distinct_rows, position_ids
from opd.train.pair import copy_rows, forward_responses, response_hidden, response_logits

V, PAD, EOS = 50, 0, 1


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                      max_position_embeddings=128, tie_word_embeddings=True,
                      pad_token_id=PAD, eos_token_id=EOS)
    return Qwen3ForCausalLM(cfg).float()


def _batch(repeats: int = 3) -> RolloutBatch:
    """Three prompts of different lengths (left-padded), each with ``repeats`` responses of
    different lengths (right-padded), rows of one prompt not adjacent."""
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(2, V, (n,), generator=gen).tolist() for n in (5, 9, 7)]
    rows = [(p, torch.randint(2, V, (int(torch.randint(1, 8, (1,), generator=gen)),),
                              generator=gen).tolist()) for _ in range(repeats) for p in prompts]
    P, L = max(len(p) for p, _ in rows), max(len(r) for _, r in rows)
    ids = [[PAD] * (P - len(p)) + p + r + [PAD] * (L - len(r)) for p, r in rows]
    attn = [[0] * (P - len(p)) + [1] * (len(p) + len(r)) + [0] * (L - len(r)) for p, r in rows]
    mask = [[1] * len(r) + [0] * (L - len(r)) for _, r in rows]
    return RolloutBatch(torch.tensor(ids), torch.tensor(attn), torch.tensor(mask), P, [])


def _plain_logits(model, batch: RolloutBatch) -> torch.Tensor:
    """The reference: one pass over the whole sequences, the logits at the positions that
    predict each response token (the last prompt position, then every response position but
    the last), row by row."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                position_ids=position_ids(batch.attention_mask)).logits
    P, L = batch.prompt_width, batch.response_mask.shape[1]
    return torch.stack([out[i, P - 1:P - 1 + L] for i in range(out.shape[0])])


def test_distinct_rows_against_a_plain_scan():
    ids = torch.tensor([[0, 3, 4], [5, 6, 7], [0, 3, 4], [0, 3, 4], [5, 6, 7], [0, 0, 4]])
    mask = (ids != 0).long()
    first, copies = distinct_rows(ids, mask)
    expected_first, expected_copies = [], []
    for i, row in enumerate(ids.tolist()):
        match = [k for k, f in enumerate(expected_first) if ids[f].tolist() == row]
        if not match:
            expected_first.append(i)
            match = [len(expected_first) - 1]
        expected_copies.append(match[0])
    assert first.tolist() == expected_first == [0, 1, 5]
    assert copies.tolist() == expected_copies
    assert torch.equal(ids[first][copies], ids)


def test_shared_prompt_logits_and_gradients_equal_the_plain_pass(model):
    batch = _batch()
    assert forward_responses(model, batch, 1).copies is not None  # the prompts are shared
    ref = _plain_logits(model, batch)
    ours = response_logits(model, batch)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    hidden, head = response_hidden(model, batch)
    torch.testing.assert_close(head(hidden), ref, atol=1e-5, rtol=1e-5)

    def grads(logits):
        model.zero_grad(set_to_none=True)
        m = batch.response_mask.unsqueeze(-1)
        (torch.log_softmax(logits, -1) * m).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    ref_g, ours_g = grads(_plain_logits(model, batch)), grads(response_logits(model, batch))
    for name in ref_g:
        torch.testing.assert_close(ours_g[name], ref_g[name], atol=1e-4, rtol=1e-4)


def test_distinct_prompts_take_the_single_pass(model):
    batch = _batch(repeats=1)
    assert forward_responses(model, batch, 1).copies is None
    torch.testing.assert_close(response_logits(model, batch), _plain_logits(model, batch))


def test_shared_prefill_decodes_what_generate_decodes(model):
    batch = _batch()
    P = batch.prompt_width
    ids, attn = batch.input_ids[:, :P], batch.attention_mask[:, :P]
    ref = model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=12, do_sample=False,
                         eos_token_id=EOS, pad_token_id=PAD)[:, P:]
    ours = decode(model, ids, attn, Sampling(max_new_tokens=12, temperature=0.0), EOS, PAD)
    assert torch.equal(ours, ref[:, :ours.shape[1]])


def test_activation_checkpointing_takes_the_single_pass(model):
    # transformers drops the cache of a checkpointed layer, so sharing would lose the prompt
    model.activation_checkpointing_enable({"use_reentrant": False})
    try:
        model.train()
        batch = _batch()
        assert forward_responses(model, batch, 1).copies is None
        torch.testing.assert_close(response_logits(model, batch), _plain_logits(model, batch))
    finally:
        model.activation_checkpointing_disable()
        model.eval()


def test_copy_rows_matches_the_cache_own_row_selection():
    """``copy_rows`` gives the rows ``DynamicCache.batch_select_indices`` gives, and the
    same gradients back to the prompt's keys and values (each the sum over its copies)."""
    rows = torch.tensor([0, 1, 0, 2, 1, 0])
    caches, leaves = [], []
    for _ in range(2):
        cache = DynamicCache()
        torch.manual_seed(0)
        kv = [torch.randn(3, 2, 5, 4).requires_grad_() for _ in range(4)]
        cache.update(kv[0] * 1, kv[1] * 1, 0)
        cache.update(kv[2] * 1, kv[3] * 1, 1)
        caches.append(cache)
        leaves.append(kv)
    caches[0].batch_select_indices(rows)
    copy_rows(caches[1], rows)
    weight = torch.randn(6, 2, 5, 4)
    for cache in caches:
        sum(((layer.keys + 2 * layer.values) * weight).sum() for layer in cache.layers).backward()
    for a, b in zip(caches[0].layers, caches[1].layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    for a, b in zip(*leaves):
        torch.testing.assert_close(a.grad, b.grad)
    # each prompt row's gradient is the sum over the rows copied from it
    expected = torch.stack([weight[rows == i].sum(0) for i in range(3)])
    torch.testing.assert_close(leaves[1][0].grad, expected)
