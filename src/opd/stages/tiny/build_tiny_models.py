"""Build one tiny Qwen3-architecture causal LM of the tiny world by a short supervised run.

Each model follows a *recipe* from config: an architecture size, a thinking pattern, the
difficulty levels and operations it sees (and how often its solutions get a ``*3`` step right,
the others doubled), the number of steps, and optionally a model to start from (so a
"distilled student" continues its base, and the "no new knowledge" teacher continues the
student on the student's own data; an init with fewer layers than the recipe's arch is grown
to it, a larger model of the same family). Training examples are generated on the fly from the
world's problem generator, never using a held-out (benchmark or probe) problem. The loss
covers assistant tokens only, and only their positions get logits. The run uses the training
core: warm-up + cosine to 10% of the peak rate, a JSONL log (copied into the model directory
as ``train_log.jsonl``) and checkpoints in ``<out>.partial/`` from which a killed build
resumes exactly. The build computes on the recipe's ``threads``, whatever the machine's core
count: on some CPUs another thread count rounds a few sums differently and so builds another
model.

    python -m opd.stages.tiny.build_tiny_models --world W --tokenizer T --out results/models/tiny/NAME \
        --params '{"arch": {...}, "pattern": "chain", ...}' [--init results/models/tiny/BASE]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, Qwen3Config
from transformers import Qwen3ForCausalLM

from opd.core.cli import parse_stage_args
from opd.core.config import typed
from opd.core.io import atomic_dir
from opd.core.prompts import EVAL_SUFFIX
from opd.core.schemas import DAPO_PREFIX, DAPO_SUFFIX
from opd.train.sft import assistant_token_loss, collate, encode_chat, grouped_by_length
from opd.train.trainer import (Checkpoint, RunLog, load_torch_state, lr_at, rng_state,
                               run_identity, save_torch_state, set_lr, set_rng_state)
from opd.tiny.problems import (FRAME_POOLS, SCENARIOS, doubled_triples, render, sample_problem,
                               solution)

WRAPPERS = {"default": ("", EVAL_SUFFIX), "none": ("", ""), "dapo": (DAPO_PREFIX, DAPO_SUFFIX)}
LR_FLOOR = 0.1  # the cosine decays to 10% of the peak rate
LossFn = Callable[[Any, dict[str, torch.Tensor]], torch.Tensor]


@dataclass
class Recipe:
    """A tiny model's recipe (config ``tiny_models.models.<name>`` with its arch resolved);
    every default comes from the config schema."""
    arch: dict[str, int]
    init: str | None
    pattern: str
    difficulty: list[int]
    ops: list[str]
    steps: int
    triple_right: float
    batch_size: int
    lr: float
    warmup_ratio: float
    checkpoint_every: int
    threads: int
    seed: int
    role: str
    wrappers: list[dict[str, Any]]


def make_config(arch: dict[str, int], tokenizer: Any) -> Qwen3Config:
    return Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=arch["hidden_size"],
        intermediate_size=arch["intermediate_size"],
        num_hidden_layers=arch["num_hidden_layers"],
        num_attention_heads=arch["num_attention_heads"],
        num_key_value_heads=arch["num_key_value_heads"],
        head_dim=arch["head_dim"],
        max_position_embeddings=arch["max_position_embeddings"],
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


class ExampleStream:
    """Seeded stream of (prompt, response) pairs for one recipe."""

    def __init__(self, recipe: Recipe, heldout: set[tuple], seed: int):
        self.rng = random.Random(seed)
        self.levels = list(range(recipe.difficulty[0], recipe.difficulty[1] + 1))
        self.ops = tuple(recipe.ops)
        self.triple_right = recipe.triple_right
        self.heldout = heldout
        # (prefix, suffix, pattern) per wrapper: a wrapper may be answered in its own pattern
        self.wrappers = [(*WRAPPERS[w["name"]], w["pattern"] or recipe.pattern)
                         for w in recipe.wrappers]
        self.weights = [w["weight"] for w in recipe.wrappers]

    def __next__(self) -> tuple[str, str]:
        while True:
            p = sample_problem(self.rng, self.rng.choice(self.levels), self.ops)
            if (p.start, p.ops) in self.heldout:
                continue
            if self.triple_right == 1:  # every step right, and no random draw for it
                values = p.values()
                break
            values = doubled_triples(p, self.rng, self.triple_right)  # draws at *3 steps only
            if values is not None:
                break
        pool = self.rng.choice(list(FRAME_POOLS))
        text = render(p, self.rng.choice(SCENARIOS[pool]), self.rng.choice(FRAME_POOLS[pool]))
        pre, post, pattern = self.rng.choices(self.wrappers, self.weights)[0]
        return pre + text + post, solution(p, pattern, values)


def bucketed(stream: ExampleStream, batch_size: int, rng: random.Random,
             pool_batches: int = 8) -> Iterator[list[tuple[str, str]]]:
    """Batches of similar length: draw a pool, group it by length, emit its batches shuffled."""
    while True:
        pool = [next(stream) for _ in range(batch_size * pool_batches)]
        chunks = grouped_by_length(pool, [len(p) + len(r) for p, r in pool], batch_size)
        rng.shuffle(chunks)
        yield from chunks


def encode_batch(tokenizer: Any, pairs: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Right-padded input ids, attention mask and labels masked to the assistant turn."""
    chats = [[{"role": "user", "content": p}, {"role": "assistant", "content": r}]
             for p, r in pairs]
    return collate([encode_chat(tokenizer, c) for c in chats], tokenizer.pad_token_id)


def grown(model: Qwen3ForCausalLM, num_layers: int) -> Qwen3ForCausalLM:
    """``model`` deepened to ``num_layers`` layers computing the same function: the new layers
    (freshly initialised, on top) have zero output projections (attention ``o_proj``, MLP
    ``down_proj``), so each adds nothing to the residual stream until training moves them."""
    spec = {k: v for k, v in model.config.to_dict().items() if k != "layer_types"}
    deeper = Qwen3ForCausalLM(Qwen3Config(**{**spec, "num_hidden_layers": num_layers}))
    state = deeper.state_dict()
    state.update(model.state_dict())
    for i in range(model.config.num_hidden_layers, num_layers):
        for name in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
            state[f"model.layers.{i}.{name}"].zero_()
    deeper.load_state_dict(state)
    return deeper


def initial_model(recipe: Recipe, tokenizer: Any, init: Path | None) -> Qwen3ForCausalLM:
    """A fresh model of the recipe's arch, or the ``init`` model; an ``init`` with fewer layers
    than the arch is grown to it (same family, larger: it starts as the smaller model)."""
    if init is None:
        return Qwen3ForCausalLM(make_config(recipe.arch, tokenizer))
    model = AutoModelForCausalLM.from_pretrained(init, dtype=torch.float32,
                                                 trust_remote_code=False)
    have = model.config
    for key, want in recipe.arch.items():
        if key != "num_hidden_layers" and getattr(have, key) != want:
            raise ValueError(f"tiny_models: the recipe's arch has {key}={want} but its init "
                             f"model {init} has {getattr(have, key)}; only num_hidden_layers "
                             "may grow")
    if recipe.arch["num_hidden_layers"] < have.num_hidden_layers:
        raise ValueError(f"tiny_models: the recipe's arch has num_hidden_layers="
                         f"{recipe.arch['num_hidden_layers']}, fewer than its init model {init} "
                         f"({have.num_hidden_layers}); a model can only grow")
    if recipe.arch["num_hidden_layers"] > have.num_hidden_layers:
        model = grown(model, recipe.arch["num_hidden_layers"])
    return model


def train(recipe: Recipe, tokenizer: Any, heldout: set[tuple], init: Path | None,
          work: Path, identity: dict[str, Any], loss_fn: LossFn = assistant_token_loss
          ) -> tuple[Qwen3ForCausalLM, dict[str, Any]]:
    """Train in ``work`` (log and checkpoint); a checkpoint of the same ``identity`` (recipe,
    content of the initial weights, tokenizer and world, code) is resumed, replaying the
    seeded example stream to its position. ``loss_fn(model, batch)`` is the training loss
    (a benchmark passes the model's own to compare)."""
    torch.manual_seed(recipe.seed)
    ckpt = Checkpoint(work / "checkpoint", identity)
    resumed = ckpt.find()
    model = initial_model(recipe, tokenizer, ckpt.current if resumed else init)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.01,
                            betas=(0.9, 0.98))
    batches = bucketed(ExampleStream(recipe, heldout, recipe.seed), recipe.batch_size,
                       random.Random(recipe.seed + 1))
    start = 0
    if resumed:
        blob = load_torch_state(ckpt.current / "trainer_state.pt")
        opt.load_state_dict(blob["optimizer"])
        set_rng_state(blob["rng"][0])
        start = resumed["step"]
        for _ in range(start):  # the stream is seeded: replay it to the checkpoint's position
            next(batches)
        print(f"resuming from step {start}")
    log = RunLog(work / "train_log.jsonl", None, "build", start_step=start,
                 resume_text=ckpt.log_text() if resumed else None)
    model.train()
    t0, losses = time.time(), [ln["loss"] for ln in log.lines()]
    bar = tqdm(range(start, recipe.steps), desc="train", mininterval=5, initial=start,
               total=recipe.steps)
    for step in bar:
        lr = lr_at(step, recipe.lr, recipe.steps, "cosine", recipe.warmup_ratio, LR_FLOOR)
        set_lr(opt, lr)
        batch = encode_batch(tokenizer, next(batches))
        loss = loss_fn(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        log.write({"step": step, "loss": losses[-1], "lr": lr}, step)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.3f}")
        if (step + 1) % recipe.checkpoint_every == 0 and step + 1 < recipe.steps:
            def write(tmp: Path) -> None:
                model.save_pretrained(tmp, safe_serialization=True)
                save_torch_state(tmp / "trainer_state.pt", opt.state_dict(), [rng_state()])
            ckpt.save(step + 1, write, log.path)
    stats = {"final_loss": sum(losses[-50:]) / len(losses[-50:]),
             "train_seconds": round(time.time() - t0, 1),
             "parameters": sum(p.numel() for p in model.parameters())}
    return model, stats


def heldout_problems(world: Path) -> set[tuple]:
    """The world's held-out (benchmark and probe) problems as (start, steps) keys."""
    return {(s, tuple(tuple(op) for op in ops))
            for s, ops in json.loads((world / "heldout.json").read_text())}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=Path, required=True)
    ap.add_argument("--tokenizer", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--init", type=Path, default=None, help="model directory to continue from")
    args = parse_stage_args(ap, argv, params_help="model recipe as JSON")
    recipe = typed(Recipe, args.params, "tiny_models.models")
    if args.threads is not None and args.threads != recipe.threads:
        raise SystemExit(f"--threads {args.threads} differs from the recipe's threads "
                         f"({recipe.threads}), which decide the build's arithmetic")
    torch.set_num_threads(recipe.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    heldout = heldout_problems(args.world)
    work = args.out.with_name(args.out.name + ".partial")
    identity = run_identity(args.params, {"init": args.init, "tokenizer": args.tokenizer,
                                          "heldout": args.world / "heldout.json"})
    model, stats = train(recipe, tokenizer, heldout, args.init, work, identity)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        do_sample=True, temperature=1.0, top_p=1.0, top_k=0)
    with atomic_dir(args.out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "recipe.json").write_text(json.dumps({**args.params, **stats}, indent=2) + "\n")
        shutil.copy(work / "train_log.jsonl", tmp / "train_log.jsonl")
    shutil.rmtree(work)
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
