"""SFT helpers: chat-template round trip, assistant-only labels, batching, schedule."""

from __future__ import annotations

import math

import pytest
from transformers import AutoTokenizer

from opd.train.sft import IGNORE, collate, encode_chat, length_grouped_batches

CHAT = [{"role": "user", "content": "Start with 4. Add 3. What is the result?"},
        {"role": "assistant", "content": "4 + 3 = 7\nThe answer is \\boxed{7}."}]


@pytest.fixture(scope="module")
def tok(small_tokenizer):
    return AutoTokenizer.from_pretrained(small_tokenizer)


def test_encoding_round_trips_through_the_chat_template(tok):
    ids, _ = encode_chat(tok, CHAT)
    full = tok.apply_chat_template(CHAT, tokenize=False, enable_thinking=False)
    # the template closes the assistant turn with the end-of-turn token (plus a newline)
    assert tok.decode(ids) == full.rstrip("\n")


def test_labels_cover_the_assistant_reply_only(tok):
    ids, labels = encode_chat(tok, CHAT)
    assert len(ids) == len(labels)
    first = next(i for i, lab in enumerate(labels) if lab != IGNORE)
    assert all(lab == IGNORE for lab in labels[:first])
    assert labels[first:] == ids[first:]
    assert tok.decode(ids[first:]) == CHAT[1]["content"] + tok.eos_token
    prompt = tok.apply_chat_template(CHAT[:1], tokenize=False, add_generation_prompt=True,
                                     enable_thinking=False)
    assert tok.decode(ids[:first]) == prompt


def test_cutoff_and_bad_examples(tok):
    ids, labels = encode_chat(tok, CHAT, max_length=10)
    assert len(ids) == len(labels) == 10
    with pytest.raises(ValueError, match="assistant"):
        encode_chat(tok, CHAT[:1])


def test_collate_pads_right_and_masks_padding():
    batch = collate([([5, 6, 7], [IGNORE, 6, 7]), ([8], [8])], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]


def test_length_grouped_batches_cover_everything_once():
    lengths = [(i * 37) % 101 for i in range(250)]
    batches = length_grouped_batches(lengths, batch_size=8, seed=3, pool_batches=4)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(250))
    assert all(len(b) == 8 for b in batches[:-1] if len(b) != 250 % 8)
    assert batches == length_grouped_batches(lengths, batch_size=8, seed=3, pool_batches=4)
    # grouping: padding is far below that of random batches of the same size
    def waste(bs):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in bs)
    random_batches = [list(range(i, min(i + 8, 250))) for i in range(0, 250, 8)]
    assert waste(batches) < 0.5 * waste(random_batches)


def test_replies_can_end_as_the_chat_template_ends_them(tok):
    messages = [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]
    ids, labels = encode_chat(tok, messages, turn_end="template")
    full = tok.apply_chat_template(messages, tokenize=False)
    assert tok.decode(ids) == full
    assert tok.decode([t for t in labels if t != IGNORE]) == "A.<|im_end|>\n"


def test_holdout_split_against_a_plain_count():
    from opd.train.sft import holdout_split

    train, held = holdout_split(40, 0.05, seed=3)
    assert len(held) == 2 and sorted(train + held) == list(range(40))
    assert holdout_split(40, 0.05, seed=3) == (train, held)
    assert holdout_split(40, 0.0, seed=3) == (list(range(40)), [])
    assert len(holdout_split(5, 0.05, seed=0)[1]) == 1      # at least one when asked


def test_assistant_token_loss_against_a_plain_loop_and_the_models_own_loss(tok):
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from opd.train.sft import assistant_token_loss

    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id))
    chats = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}]
             for q, a in [("Start with 4. Add 3.", "4 + 3 = 7\n\\boxed{7}"),
                          ("Start with 12. Subtract 5. Double it.", "12 - 5 = 7\n7 * 2 = 14"),
                          ("Q?", "A.")]]
    batch = collate([encode_chat(tok, c) for c in chats], tok.pad_token_id)
    assert (batch["attention_mask"] == 0).any()          # padding is in the batch

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    ours = assistant_token_loss(model, batch)
    ours_grads = grads(ours)
    # a plain loop over every labelled token of the full logits
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    terms = [-torch.log_softmax(logits[b, t - 1], -1)[batch["labels"][b, t]]
             for b in range(len(chats)) for t in range(1, batch["labels"].shape[1])
             if batch["labels"][b, t] != IGNORE]
    plain = torch.stack(terms).mean()
    plain_grads = grads(plain)
    own = model(**batch).loss
    assert len(terms) == int((batch["labels"] != IGNORE).sum())
    torch.testing.assert_close(ours, plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours, own.detach(), rtol=1e-5, atol=1e-6)
    for a, b in zip(ours_grads, plain_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
