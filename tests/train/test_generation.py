"""The sampling loop: greedy tokens equal ``model.generate``'s, sampled tokens follow the
temperature and nucleus distribution written out by hand, ended sequences are padded."""

from __future__ import annotations

import json
import math

import pytest
import torch

from opd.stages.tiny.build_tiny_models import main as build_model
from opd.train.generation import Sampling, decode, pick, sample_batch
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


def test_greedy_pick_is_the_argmax():
    logits = torch.tensor([[0.1, 3.0, -1.0], [5.0, 4.9, 0.0]])
    assert pick(logits, 0.0, 1.0).tolist() == [1, 0]
