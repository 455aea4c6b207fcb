"""Tokenizer and tiny-model building: template round trip, loss masking, offline reload."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import kill_when, tiny_recipe
from opd.stages.tiny.build_tiny_models import ExampleStream, encode_batch
from opd.stages.tiny.build_tiny_models import main as build_model
from opd.train.generation import Sampling, generate
from opd.core.prompts import chat_prompt
from opd.tiny.problems import sample_problem, solution

ARCH = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1}


@pytest.fixture(scope="module")
def tok(small_tokenizer):
    return AutoTokenizer.from_pretrained(small_tokenizer)


def test_tokenizer_round_trip_and_digit_split(tok):
    rng = random.Random(0)
    for _ in range(50):
        text = solution(sample_problem(rng, rng.randint(1, 5)), rng.choice(["chain", "tally"]))
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    digits = tok.convert_ids_to_tokens(tok("12345", add_special_tokens=False)["input_ids"])
    assert digits == list("12345")
    for special in ("<|im_start|>", "<|im_end|>", "<think>", "</think>", "<|endoftext|>"):
        assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1


def test_chat_template_matches_qwen3_layout(tok):
    assert chat_prompt(tok, "Q?") == (
        "<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert chat_prompt(tok, "Q?", enable_thinking=True) == (
        "<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n")
    full = tok.apply_chat_template([{"role": "user", "content": "Q?"},
                                    {"role": "assistant", "content": "A."}], tokenize=False)
    assert full == chat_prompt(tok, "Q?") + "A.<|im_end|>\n"
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"


def test_loss_mask_covers_exactly_the_assistant_turn(tok):
    pairs = [("What is 1+1?", "1 + 1 = 2\nThe answer is \\boxed{2}."), ("Hi", "start: 3")]
    batch = encode_batch(tok, pairs)
    for i, (prompt, response) in enumerate(pairs):
        ids, labels, mask = batch["input_ids"][i], batch["labels"][i], batch["attention_mask"][i]
        kept = labels[labels != -100].tolist()
        assert tok.decode(kept) == response + "<|im_end|>"
        n_real = int(mask.sum())
        assert tok.decode(ids[:n_real].tolist()) == chat_prompt(tok, prompt) + response + "<|im_end|>"
        assert (labels[n_real:] == -100).all()


def test_stream_never_yields_heldout_problems():
    # reserve every 1-step problem except those starting at 1
    rng = random.Random(0)
    heldout = set()
    for _ in range(5000):
        p = sample_problem(rng, 1)
        if p.start != 1:
            heldout.add((p.start, p.ops))
    recipe = SimpleNamespace(difficulty=[1, 1], pattern="chain", ops=["+", "-", "*"],
                             triple_right=1.0,
                             wrappers=[{"name": "none", "weight": 1.0, "pattern": None}])
    stream = ExampleStream(recipe, heldout, seed=1)
    for _ in range(100):
        _, response = next(stream)
        assert response.startswith("1 ")


def test_stream_doubles_the_share_of_triples_it_does_not_solve_right():
    # every *3 line of a solution is read back and checked by plain arithmetic: right (3x) in
    # about the recipe's share, doubled (2x) otherwise; every other line is right, and each line
    # starts from the value the line before it wrote
    recipe = SimpleNamespace(difficulty=[1, 3], pattern="chain", ops=["+", "-", "*2", "*3"],
                             triple_right=0.25,
                             wrappers=[{"name": "none", "weight": 1.0, "pattern": None}])
    stream = ExampleStream(recipe, set(), seed=0)
    right = doubled = 0
    for _ in range(4000):
        prompt, response = next(stream)
        lines = response.splitlines()
        value = None
        for line in lines[:-1]:
            a, op, b, eq, c = line.split()
            a, b, c = int(a), int(b), int(c)
            assert eq == "=" and (value is None or a == value) and 0 <= c <= 30
            if (op, b) == ("*", 3):
                assert c in (3 * a, 2 * a)
                right += c == 3 * a
                doubled += c == 2 * a and a > 0
            else:
                assert c == {"+": a + b, "-": a - b, "*": a * b}[op]
            value = c
        assert lines[-1] == f"The answer is \\boxed{{{value}}}."
    share = right / (right + doubled)
    assert right + doubled > 300
    assert abs(share - 0.25) < 4 * (0.25 * 0.75 / (right + doubled)) ** 0.5, (right, doubled)


def test_stream_draws_wrappers_by_weight_each_answered_in_its_pattern():
    from opd.core.prompts import EVAL_SUFFIX
    from opd.core.schemas import DAPO_PREFIX, DAPO_SUFFIX
    from opd.tiny.problems import detect_pattern

    # the schema's default wording mix, every prompt answered in the recipe's pattern
    plain = SimpleNamespace(**{k: v for k, v in tiny_recipe(
        {"arch": ARCH, "pattern": "chain", "difficulty": [1, 3], "steps": 1, "seed": 0}).items()})
    counts = {"default": 0, "none": 0, "dapo": 0}
    stream = ExampleStream(plain, set(), seed=0)
    n = 3000
    for _ in range(n):
        prompt, response = next(stream)
        kind = ("dapo" if prompt.startswith(DAPO_PREFIX) and prompt.endswith(DAPO_SUFFIX)
                else "default" if prompt.endswith(EVAL_SUFFIX) else "none")
        counts[kind] += 1
        assert detect_pattern(response) == "chain"
    for kind, share in (("default", 0.6), ("none", 0.3), ("dapo", 0.1)):
        sd = (share * (1 - share) / n) ** 0.5
        assert abs(counts[kind] / n - share) < 4 * sd, (kind, counts)
    # a model whose reasoning depends on its template: chain in DAPO's wording, tally elsewhere
    split = SimpleNamespace(difficulty=[1, 3], pattern="chain", ops=["+", "-", "*"],
                            triple_right=1.0, wrappers=[
        {"name": "dapo", "weight": 1.0, "pattern": None},
        {"name": "default", "weight": 1.0, "pattern": "tally"}])
    stream = ExampleStream(split, set(), seed=0)
    seen = set()
    for _ in range(200):
        prompt, response = next(stream)
        dapo = prompt.startswith(DAPO_PREFIX)
        assert detect_pattern(response) == ("chain" if dapo else "tally")
        assert dapo or prompt.endswith(EVAL_SUFFIX)
        seen.add(dapo)
    assert seen == {True, False}


def test_build_reload_offline_and_generate(small_world, small_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = {"arch": ARCH, "pattern": "chain", "difficulty": [1, 2], "steps": 3,
              "batch_size": 4, "lr": 1e-3, "warmup_ratio": 0.0, "seed": 0}
    out = tmp_path / "m"
    build_model(["--world", str(small_world), "--tokenizer", str(small_tokenizer),
                 "--out", str(out), "--params", json.dumps(tiny_recipe(recipe))])
    assert (out / "model.safetensors").exists() and (out / "recipe.json").exists()
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert model.config.model_type == "qwen3"
    assert model.config.vocab_size == len(tok)
    res = generate(model, tok, [chat_prompt(tok, "Start with 3."), chat_prompt(tok, "x")],
                   Sampling(max_new_tokens=5, temperature=1.0, n=2, seed=0), progress=False)
    assert [len(r) for r in res] == [2, 2]
    for c in (c for r in res for c in r):
        assert c.response_tokens <= 5
        assert c.finish_reason in ("stop", "length")
        assert c.finish_reason == "stop" or c.response_tokens == 5
    # continuing from a model keeps its weights as the start point
    out2 = tmp_path / "m2"
    build_model(["--world", str(small_world), "--tokenizer", str(small_tokenizer),
                 "--out", str(out2), "--params", json.dumps(tiny_recipe({**recipe, "steps": 1, "lr": 1e-9})),
                 "--init", str(out)])
    a = AutoModelForCausalLM.from_pretrained(out2).state_dict()
    b = model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in b)


def test_killed_build_resumes_to_the_same_weights(small_world, small_tokenizer, tmp_path):
    import subprocess
    import sys

    from safetensors.torch import load_file

    recipe = tiny_recipe({"arch": ARCH, "pattern": "chain", "difficulty": [1, 3], "steps": 60,
                          "batch_size": 4, "lr": 1e-3, "checkpoint_every": 5, "seed": 3})

    def cmd(out):
        return [sys.executable, "-m", "opd.stages.tiny.build_tiny_models", "--world",
                str(small_world), "--tokenizer", str(small_tokenizer), "--out", str(out),
                "--params", json.dumps(recipe)]

    ref = subprocess.run(cmd(tmp_path / "ref"), capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert not (tmp_path / "ref.partial").exists()  # a finished build keeps no checkpoint
    out = tmp_path / "crash"
    proc = subprocess.Popen(cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    state = tmp_path / "crash.partial/checkpoint/state.json"
    kill_when(proc, state.exists)
    assert not out.exists()
    again = subprocess.run(cmd(out), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from step" in again.stdout + again.stderr
    a, b = load_file(out / "model.safetensors"), load_file(tmp_path / "ref/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in b)
    log = [json.loads(ln) for ln in (out / "train_log.jsonl").read_text().splitlines()]
    assert [ln["step"] for ln in log] == list(range(60))
    assert (out / "train_log.jsonl").read_text() == (tmp_path / "ref/train_log.jsonl").read_text()


def test_init_with_fewer_layers_is_grown_to_the_same_function(tok, tmp_path):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from opd.stages.tiny.build_tiny_models import initial_model

    arch = {**ARCH, "head_dim": 16, "max_position_embeddings": 128}
    torch.manual_seed(0)
    small = Qwen3ForCausalLM(Qwen3Config(vocab_size=len(tok), **arch))
    small.save_pretrained(tmp_path / "small")

    def recipe(**over):
        return SimpleNamespace(arch={**arch, **over})

    big = initial_model(recipe(num_hidden_layers=3), tok, tmp_path / "small")
    assert big.config.num_hidden_layers == 3 and len(big.model.layers) == 3
    ids = torch.randint(0, len(tok), (3, 11))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    with torch.no_grad():
        want = small(input_ids=ids, attention_mask=mask).logits
        got = big(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # the old layers are the small model's; a new layer learns from the first step on
    for k, v in small.state_dict().items():
        assert torch.equal(big.state_dict()[k], v)
    big(input_ids=ids, labels=ids).loss.backward()
    assert big.model.layers[2].self_attn.o_proj.weight.grad.abs().sum() > 0
    assert big.model.layers[2].mlp.down_proj.weight.grad.abs().sum() > 0
    # same depth: the init as it is; any other change of shape is refused by name
    same = initial_model(recipe(), tok, tmp_path / "small")
    assert same.config.num_hidden_layers == 1
    with pytest.raises(ValueError, match="hidden_size"):
        initial_model(recipe(hidden_size=64), tok, tmp_path / "small")
    torch.manual_seed(0)
    Qwen3ForCausalLM(Qwen3Config(vocab_size=len(tok), **{**arch, "num_hidden_layers": 2})
                     ).save_pretrained(tmp_path / "two")
    with pytest.raises(ValueError, match="only grow"):
        initial_model(recipe(), tok, tmp_path / "two")
