"""The sampling loop: greedy tokens equal ``model.generate``'s, sampled tokens follow the
temperature and nucleus distribution written out by hand, ended sequences are padded; the
lean Qwen3 decode step gives the ``transformers`` forward's logits up to float rounding, and
its attention equals attention written out as a loop."""

from __future__ import annotations

import json
import math

import pytest
import torch

from opd.stages.tiny.build_tiny_models import main as build_model
from opd.train.generation import (NUCLEUS_CANDIDATES, Sampling, decode, nucleus, pick,
                                  position_ids, sample_batch, tokenized)
from opd.train.qwen3_step import Qwen3Step, StepCache, attend
from conftest import tiny_recipe

ARCH = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 1}


@pytest.fixture(scope="module")
def model_and_tokenizer(small_world, small_tokenizer, tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("gen") / "m"
    recipe = {"arch": ARCH, "pattern": "chain", "difficulty": [1, 2], "steps": 30,
              "batch_size": 8, "lr": 3e-3, "warmup_ratio": 0.0, "seed": 0}
    build_model(["--world", str(small_world), "--tokenizer", str(small_tokenizer), "--out",
                 str(out), "--params", json.dumps(tiny_recipe(recipe))])
    return AutoModelForCausalLM.from_pretrained(out).eval(), AutoTokenizer.from_pretrained(out)


def _prompts(tok):
    from opd.core.prompts import chat_prompt

    # different lengths, so the batch is left-padded
    return [chat_prompt(tok, "Start with 3." + " Then add 1." * k) for k in range(6)]


def test_greedy_decoding_matches_model_generate(model_and_tokenizer):
    model, tok = model_and_tokenizer
    tok.padding_side = "left"
    enc = tok(_prompts(tok), return_tensors="pt", padding=True, add_special_tokens=False)
    eos, pad = tok.eos_token_id, tok.pad_token_id
    ref = model.generate(**enc, max_new_tokens=24, do_sample=False, eos_token_id=eos,
                         pad_token_id=pad)[:, enc["input_ids"].shape[1]:]
    ours = decode(model, enc["input_ids"], enc["attention_mask"],
                  Sampling(max_new_tokens=24, temperature=0.0), eos, pad)
    assert torch.equal(ours, ref)


def test_repeated_prompts_are_tokenized_as_the_whole_batch_pads_them(model_and_tokenizer):
    _, tok = model_and_tokenizer
    tok.padding_side = "left"
    prompts = _prompts(tok)
    batch = [prompts[i] for i in (3, 0, 3, 5, 0, 3, 1, 5)]  # repeats, not grouped
    ref = tok(batch, return_tensors="pt", padding=True, add_special_tokens=False)
    ours = tokenized(tok, batch, "cpu")
    assert set(ours) == {"input_ids", "attention_mask"}
    for key in ours:
        assert torch.equal(ours[key], ref[key])


def test_ended_sequences_are_padded_and_masked(model_and_tokenizer):
    model, tok = model_and_tokenizer
    torch.manual_seed(0)
    batch = sample_batch(model, tok, _prompts(tok), Sampling(max_new_tokens=24, temperature=1.0))
    eos, pad = tok.eos_token_id, tok.pad_token_id
    for row, mask, c in zip(batch.response_ids.tolist(), batch.response_mask.tolist(),
                            batch.completions):
        n = sum(mask)
        assert mask == [1] * n + [0] * (len(mask) - n)
        assert all(t == pad for t in row[n:])
        assert (c.finish_reason == "stop") == (row[n - 1] == eos)
        assert c.response_tokens == n - (c.finish_reason == "stop")
    # the batch is as wide as its longest response
    assert max(sum(m) for m in batch.response_mask.tolist()) == batch.response_ids.shape[1]


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 1.0), (1.0, 0.8)])
def test_sampling_follows_the_tempered_nucleus_distribution(temperature, top_p):
    logits = torch.tensor([2.0, 1.5, 1.0, 0.0, -1.0, -3.0])
    # by hand: softmax(logits / T), then the most probable tokens until their mass reaches top_p
    w = [math.exp(x / temperature) for x in logits.tolist()]
    p = [x / sum(w) for x in w]
    kept, mass = [], 0.0
    for i in sorted(range(len(p)), key=lambda i: -p[i]):
        if mass >= top_p:
            break
        kept.append(i)
        mass += p[i]
    expected = [p[i] / mass if i in kept else 0.0 for i in range(len(p))]
    torch.manual_seed(0)
    n = 200_000
    draws = pick(logits.expand(n, -1), temperature, top_p)
    freq = torch.bincount(draws, minlength=len(p)).double() / n
    for f, e in zip(freq.tolist(), expected):
        assert abs(f - e) <= 4 * math.sqrt(max(e * (1 - e), 1e-12) / n) + 1e-9, (freq, expected)


def _nucleus_by_hand(row: list[float], top_p: float) -> list[float]:
    kept, mass = set(), 0.0
    for i in sorted(range(len(row)), key=lambda i: -row[i]):
        if mass >= top_p:
            break
        kept.add(i)
        mass += row[i]
    return [p if i in kept else 0.0 for i, p in enumerate(row)]


def test_nucleus_keeps_the_most_probable_tokens_until_their_mass_reaches_top_p():
    torch.manual_seed(0)
    vocab = 4 * NUCLEUS_CANDIDATES
    # peaked rows close their nucleus among a few candidates; flat ones need most of the
    # vocabulary, more tokens than the candidates
    peaked = torch.softmax(torch.randn(6, vocab, dtype=torch.float64) * 6, -1)
    flat = torch.softmax(torch.randn(3, vocab, dtype=torch.float64) * 0.1, -1)
    for probs in (peaked, flat, torch.cat([peaked, flat])):
        for top_p in (0.5, 0.9, 0.99):
            got = nucleus(probs, top_p)
            expected = torch.tensor([_nucleus_by_hand(r, top_p) for r in probs.tolist()],
                                    dtype=torch.float64)
            assert torch.equal(got, expected), (top_p, (got != expected).sum())
    assert (nucleus(flat, 0.9) > 0).sum(-1).min() > NUCLEUS_CANDIDATES


def test_nucleus_with_equal_probabilities_at_its_edge_keeps_as_many_as_the_mass_needs():
    # three tokens of 1/8 after 3/8 and 1/4: reaching 0.7 needs one of them, 0.8 two
    row = [0.375, 0.25, 0.125, 0.125, 0.125] + [0.0] * (2 * NUCLEUS_CANDIDATES)
    probs = torch.tensor([row, row[2:] + row[:2]], dtype=torch.float64)
    for top_p, ties_kept in ((0.7, 1), (0.8, 2), (0.9, 3)):
        got = nucleus(probs, top_p)
        for r, shift in zip(got.tolist(), (0, 2)):
            r = r[-shift:] + r[:-shift] if shift else r
            assert r[:2] == [0.375, 0.25] and sum(r[5:]) == 0.0
            assert sorted(r[2:5]) == [0.0] * (3 - ties_kept) + [0.125] * ties_kept


def test_greedy_pick_is_the_argmax():
    logits = torch.tensor([[0.1, 3.0, -1.0], [5.0, 4.9, 0.0]])
    assert pick(logits, 0.0, 1.0).tolist() == [1, 0]


def _step_both_ways(model, enc, steps: int, drop_at: int | None, room: int | None = None
                    ) -> None:
    """Feed the same random tokens through ``Qwen3Step`` and the ``transformers`` forward,
    each with its own cache, and compare the logits of every step (float rounding apart: the
    attention sums in another order); at ``drop_at`` the
    first row leaves the batch (its cache rows dropped), as an ended sequence does. With
    ``room``, ``Qwen3Step`` writes to a ``StepCache`` that grows ``room`` positions at a time."""
    from transformers import DynamicCache

    ids, mask = enc["input_ids"], enc["attention_mask"]
    pos = position_ids(mask)
    caches = [DynamicCache(config=model.config) for _ in range(2)]
    with torch.no_grad():
        for c in caches:
            model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=c,
                  use_cache=True)
    if room is not None:
        caches[1] = StepCache(caches[1], room)
    step = Qwen3Step(model)
    gen = torch.Generator().manual_seed(0)
    position = pos[:, -1:] + 1
    for t in range(steps):
        if t == drop_at:
            keep = torch.arange(1, mask.shape[0])
            for c in caches:
                c.batch_select_indices(keep)
            mask, position = mask[keep], position[keep]
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
        nxt = torch.randint(0, model.config.vocab_size, (mask.shape[0], 1), generator=gen)
        with torch.no_grad():
            ref = model(input_ids=nxt, attention_mask=mask, position_ids=position,
                        past_key_values=caches[0], use_cache=True).logits[:, -1]
        ours = step(nxt, mask, position, caches[1])
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5, msg=f"step {t}")
        position = position + 1


@pytest.mark.parametrize("room", [None, 3])
@pytest.mark.parametrize("padded", [True, False])
def test_qwen3_step_gives_the_transformers_logits(model_and_tokenizer, padded, room):
    model, tok = model_and_tokenizer
    assert Qwen3Step.supports(model)
    prompts = _prompts(tok) if padded else [_prompts(tok)[2]] * 3
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    assert bool((enc["attention_mask"] == 0).any()) == padded
    # padded: the row with the shortest prompt leaves, the rest still hold padding; a
    # StepCache of room 3 grows on steps 0, 3, 6, ..., around the drop at step 7
    _step_both_ways(model, enc, steps=20, drop_at=7, room=room)


def test_qwen3_step_covers_grouped_and_plain_heads(small_world, small_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "m"
    arch = {**ARCH, "num_key_value_heads": 2}   # one key head per query head
    recipe = {"arch": arch, "pattern": "chain", "difficulty": [1, 2], "steps": 2,
              "batch_size": 4, "lr": 3e-3, "warmup_ratio": 0.0, "seed": 0}
    build_model(["--world", str(small_world), "--tokenizer", str(small_tokenizer), "--out",
                 str(out), "--params", json.dumps(tiny_recipe(recipe))])
    model, tok = AutoModelForCausalLM.from_pretrained(out).eval(), AutoTokenizer.from_pretrained(out)
    tok.padding_side = "left"
    enc = tok(_prompts(tok), return_tensors="pt", padding=True, add_special_tokens=False)
    _step_both_ways(model, enc, steps=8, drop_at=3, room=2)


def _attention_by_loop(q, k, v, mask, scale):
    """softmax over the unmasked keys of q . k * scale, times v, one row and query head at a
    time; query head h reads key head h // (H / G)."""
    n, heads, _, d = q.shape
    out = torch.zeros(n, heads, 1, d, dtype=torch.float64)
    for r in range(n):
        for h in range(heads):
            g = h // (heads // k.shape[1])
            keys = [j for j in range(k.shape[2]) if mask[r, j]]
            s = [sum(q[r, h, 0, i].item() * k[r, g, j, i].item() for i in range(d)) * scale
                 for j in keys]
            top = max(s)
            w = [math.exp(x - top) for x in s]
            for j, wj in zip(keys, w):
                out[r, h, 0] += wj / sum(w) * v[r, g, j].double()
    return out


@pytest.mark.parametrize("heads, groups", [(4, 2), (2, 2), (3, 1)])
@pytest.mark.parametrize("padded", [True, False])
def test_attend_is_softmax_attention_over_the_unmasked_keys(heads, groups, padded):
    gen = torch.Generator().manual_seed(heads + groups)
    n, keys, d = 3, 5, 4
    q = torch.randn(n, heads, 1, d, generator=gen)
    k, v = torch.randn(2, n, groups, keys, d, generator=gen)
    mask = torch.ones(n, keys, dtype=torch.long)
    if padded:
        mask[0, :2] = 0   # left padding: the first row's first two keys
        mask[2, :1] = 0
    bias = torch.zeros(n, keys).masked_fill(mask == 0, float("-inf"))[:, None, None, :]
    ours = attend(q, k, v, bias if padded else None, 0.5)
    torch.testing.assert_close(ours.double(), _attention_by_loop(q, k, v, mask, 0.5),
                               rtol=0, atol=1e-6)


def test_qwen3_step_is_used_only_where_it_matches(model_and_tokenizer, monkeypatch):
    model, _ = model_and_tokenizer
    assert Qwen3Step.supports(model)
    model.train()
    assert not Qwen3Step.supports(model)   # dropout and the like: the module stack decides
    model.eval()
    model.config._attn_implementation = "eager"
    try:
        assert not Qwen3Step.supports(model)
    finally:
        model.config._attn_implementation = "sdpa"
    with pytest.raises(ValueError, match="one token per row"):
        Qwen3Step(model)(torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2),
                         torch.zeros(1, 2, dtype=torch.long), None)


def test_sampled_tokens_are_the_same_with_and_without_the_lean_step(model_and_tokenizer,
                                                                   monkeypatch):
    model, tok = model_and_tokenizer
    sampling = Sampling(max_new_tokens=24, temperature=1.0)

    def sample() -> torch.Tensor:
        torch.manual_seed(3)
        return sample_batch(model, tok, _prompts(tok) * 2, sampling).input_ids

    lean = sample()
    monkeypatch.setattr(Qwen3Step, "supports", staticmethod(lambda model: False))
    # the logits differ by float rounding only, far less than the draws' distance from a
    # boundary between two tokens
    assert torch.equal(sample(), lean)
