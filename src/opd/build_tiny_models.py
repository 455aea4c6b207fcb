"""Build one tiny Qwen3-architecture causal LM of the tiny world by a short supervised run.

Each model follows a *recipe* from config: an architecture size, a thinking pattern, the
difficulty levels it sees, the number of steps, and optionally a model to start from (so a
"distilled student" continues its base, and the "no new knowledge" teacher continues the
student on the student's own data). Training examples are generated on the fly from the
world's problem generator, never using a held-out (benchmark or probe) problem. The loss
covers assistant tokens only.

    python -m opd.build_tiny_models --world W --tokenizer T --out results/models/tiny/NAME \
        --params '{"arch": {...}, "pattern": "chain", ...}' [--init results/models/tiny/BASE]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, Qwen3Config
from transformers import Qwen3ForCausalLM

from opd.io import atomic_dir
from opd.prompts import EVAL_SUFFIX
from opd.schemas import DAPO_PREFIX, DAPO_SUFFIX
from opd.sft import collate, encode_chat
from opd.tiny.problems import FRAME_POOLS, OPS, SCENARIOS, render, sample_problem, solution

WRAPPERS = [("", EVAL_SUFFIX), ("", ""), (DAPO_PREFIX, DAPO_SUFFIX)]
WRAPPER_WEIGHTS = [0.6, 0.3, 0.1]


def make_config(arch: dict[str, int], tokenizer: Any) -> Qwen3Config:
    heads = arch["num_attention_heads"]
    return Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=arch["hidden_size"],
        intermediate_size=arch["intermediate_size"],
        num_hidden_layers=arch["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=arch["num_key_value_heads"],
        head_dim=arch["hidden_size"] // heads,
        max_position_embeddings=arch.get("max_position_embeddings", 1024),
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


class ExampleStream:
    """Seeded stream of (prompt, response) pairs for one recipe."""

    def __init__(self, recipe: dict[str, Any], heldout: set[tuple], seed: int):
        self.rng = random.Random(seed)
        self.levels = list(range(recipe["difficulty"][0], recipe["difficulty"][1] + 1))
        self.pattern = recipe["pattern"]
        self.ops = tuple(recipe.get("ops", OPS))
        self.heldout = heldout

    def __next__(self) -> tuple[str, str]:
        while True:
            p = sample_problem(self.rng, self.rng.choice(self.levels), self.ops)
            if (p.start, p.ops) not in self.heldout:
                break
        pool = self.rng.choice(list(FRAME_POOLS))
        text = render(p, self.rng.choice(SCENARIOS[pool]), self.rng.choice(FRAME_POOLS[pool]))
        pre, post = self.rng.choices(WRAPPERS, WRAPPER_WEIGHTS)[0]
        return pre + text + post, solution(p, self.pattern)


def bucketed(stream: ExampleStream, batch_size: int, rng: random.Random,
             pool_batches: int = 8) -> Iterator[list[tuple[str, str]]]:
    """Batches of similar length: draw a pool, sort it by length, emit its batches shuffled."""
    while True:
        pool = sorted((next(stream) for _ in range(batch_size * pool_batches)),
                      key=lambda pr: len(pr[0]) + len(pr[1]))
        chunks = [pool[i:i + batch_size] for i in range(0, len(pool), batch_size)]
        rng.shuffle(chunks)
        yield from chunks


def encode_batch(tokenizer: Any, pairs: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Right-padded input ids, attention mask and labels masked to the assistant turn."""
    chats = [[{"role": "user", "content": p}, {"role": "assistant", "content": r}]
             for p, r in pairs]
    return collate([encode_chat(tokenizer, c) for c in chats], tokenizer.pad_token_id)


def lr_at(step: int, recipe: dict[str, Any]) -> float:
    """Linear warm-up then cosine decay to 10% of the peak."""
    warm = max(1, int(recipe["warmup_ratio"] * recipe["steps"]))
    if step < warm:
        return recipe["lr"] * (step + 1) / warm
    frac = (step - warm) / max(1, recipe["steps"] - warm)
    return recipe["lr"] * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def train(recipe: dict[str, Any], tokenizer: Any, heldout: set[tuple],
          init: Path | None) -> tuple[Qwen3ForCausalLM, dict[str, Any]]:
    torch.manual_seed(recipe["seed"])
    if init is not None:
        model = AutoModelForCausalLM.from_pretrained(init, dtype=torch.float32,
                                                     trust_remote_code=False)
    else:
        model = Qwen3ForCausalLM(make_config(recipe["arch"], tokenizer))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=0.01,
                            betas=(0.9, 0.98))
    batches = bucketed(ExampleStream(recipe, heldout, recipe["seed"]), recipe["batch_size"],
                       random.Random(recipe["seed"] + 1))
    t0, losses = time.time(), []
    bar = tqdm(range(recipe["steps"]), desc="train", mininterval=5)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, recipe)
        batch = encode_batch(tokenizer, next(batches))
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.3f}")
    stats = {"final_loss": sum(losses[-50:]) / len(losses[-50:]),
             "train_seconds": round(time.time() - t0, 1),
             "parameters": sum(p.numel() for p in model.parameters())}
    return model, stats


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=Path, required=True)
    ap.add_argument("--tokenizer", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--params", type=json.loads, required=True, help="model recipe as JSON")
    ap.add_argument("--init", type=Path, default=None, help="model directory to continue from")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    heldout = {(s, tuple(tuple(op) for op in ops))
               for s, ops in json.loads((args.world / "heldout.json").read_text())}
    model, stats = train(args.params, tokenizer, heldout, args.init)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        do_sample=True, temperature=1.0, top_p=1.0, top_k=0)
    with atomic_dir(args.out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "recipe.json").write_text(json.dumps({**args.params, **stats}, indent=2) + "\n")
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
