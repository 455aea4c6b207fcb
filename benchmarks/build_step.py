"""Benchmark: a tiny-model build's training steps with logits at assistant positions only,
and on one thread against two.

The first ``--steps`` steps of a built model's own recipe (default ``student``, from the
built ``base``, one thread), once with ``opd.train.sft.assistant_token_loss`` (the builder's
loss: LM head and softmax only where a label is predicted) and once with the model's own
``model(**batch).loss`` (logits at every position), the two sides alternating ``--rounds``
times. Both sides see the same seeded batches; their loss logs must agree to 1e-4. Then the
builder's loss on one thread against two, alternating likewise, and whether the two build
the same weights bit for bit (on some CPUs another thread count rounds a few sums
differently; recipes set a build's ``threads``).

    python benchmarks/build_step.py [--model student] [--steps 120] [--rounds 4]

Needs the tiny models (make run). Writes results/benchmarks/build_step.json and .md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

import opd.stages.tiny.build_tiny_models as builder
from opd.core.config import typed
from opd.train.sft import assistant_token_loss

SIDES = {"assistant positions": assistant_token_loss,
         "every position (model's own loss)": lambda model, batch: model(**batch).loss}


def run_side(loss_fn, recipe, tok, heldout, init: Path | None, work: Path
             ) -> tuple[float, list[float], dict[str, torch.Tensor]]:
    """Seconds for the recipe's steps with ``loss_fn`` as the builder's loss, the losses and
    the trained weights."""
    shutil.rmtree(work, ignore_errors=True)
    t0 = time.perf_counter()
    model, _ = builder.train(recipe, tok, heldout, init, work, {"benchmark": work.name}, loss_fn)
    seconds = time.perf_counter() - t0
    lines = [json.loads(line) for line in (work / "train_log.jsonl").open() if line.strip()]
    losses = [line["loss"] for line in lines if "loss" in line]
    return seconds, losses, model.state_dict()


def thread_counts(recipe, tok, heldout, init: Path | None, tmp: Path, rounds: int
                  ) -> tuple[dict[int, list[float]], bool]:
    """The builder's steps on one thread and on two, alternating: seconds per round, and
    whether the two build bit-identical weights."""
    times: dict[int, list[float]] = {1: [], 2: []}
    weights: dict[int, dict[str, torch.Tensor]] = {}
    for r in range(rounds):
        for threads in times:
            torch.set_num_threads(threads)
            seconds, _, weights[threads] = run_side(assistant_token_loss, recipe, tok, heldout,
                                                    init, tmp / f"threads{threads}")
            times[threads].append(seconds)
            print(f"round {r}: {threads} thread(s): {seconds:.1f} s", flush=True)
    torch.set_num_threads(1)
    same = all(torch.equal(weights[1][k], weights[2][k]) for k in weights[1])
    return times, same


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, default=Path("results/models/tiny"))
    ap.add_argument("--world", type=Path, default=Path("results/world/tiny"))
    ap.add_argument("--model", default="student")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("results/benchmarks"))
    args = ap.parse_args()
    recipe_file = args.models / args.model / "recipe.json"
    if not recipe_file.exists():
        raise SystemExit(f"{recipe_file} is missing: build the tiny models first (make run)")
    torch.set_num_threads(1)
    params = json.loads(recipe_file.read_text())
    for key in ("final_loss", "train_seconds", "parameters"):   # the build's own stats
        params.pop(key, None)
    params.update(steps=args.steps, checkpoint_every=args.steps + 1)
    recipe = typed(builder.Recipe, params, f"tiny_models.models.{args.model}")
    tok = AutoTokenizer.from_pretrained(args.models / "tokenizer")
    heldout = builder.heldout_problems(args.world)
    init = args.models / recipe.init if recipe.init else None
    times: dict[str, list[float]] = {side: [] for side in SIDES}
    logs: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for i, (side, fn) in enumerate(SIDES.items()):
                seconds, logs[side], _ = run_side(fn, recipe, tok, heldout, init,
                                                  Path(tmp) / f"side{i}")
                times[side].append(seconds)
                print(f"round {r}: {side}: {seconds:.1f} s", flush=True)
        by_threads, same_weights = thread_counts(recipe, tok, heldout, init, Path(tmp),
                                                 args.rounds)
    ours, own = (logs[s] for s in SIDES)
    worst = max(abs(a - b) for a, b in zip(ours, own))
    if len(ours) != len(own) or worst > 1e-4:
        raise SystemExit(f"the two losses disagree: largest difference {worst:.2e}")
    medians = {side: statistics.median(t) for side, t in times.items()}
    saved = 1 - medians["assistant positions"] / medians["every position (model's own loss)"]
    thread_medians = {t: statistics.median(v) for t, v in by_threads.items()}
    result = {"model": args.model, "steps": args.steps, "rounds": args.rounds, "threads": 1,
              "seconds": times, "median_seconds": medians, "time_saved": saved,
              "largest_loss_difference": worst,
              "by_threads": {"seconds": by_threads, "median_seconds": thread_medians,
                             "speedup_two_threads": thread_medians[1] / thread_medians[2],
                             "same_weights": same_weights}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "build_step.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = [f"| {side} | {medians[side]:.1f} | {medians[side] / args.steps * 1000:.0f} | "
            f"{', '.join(f'{t:.1f}' for t in times[side])} |" for side in SIDES]
    (args.out / "build_step.md").write_text("\n".join([
        f"The first {args.steps} steps of the `{args.model}` build (its own recipe, one thread), "
        f"the two sides alternating {args.rounds} times on the same batches.", "",
        "| builder loss, logits at | median s | ms per step | every round s |",
        "|---|---|---|---|", *rows, "",
        f"Time saved: {saved:.0%}. The two losses' logs differ by at most {worst:.1e}.", "",
        f"The same steps with the builder's loss on one thread and on two, alternating "
        f"{args.rounds} times:", "",
        "| threads | median s | every round s |", "|---|---|---|",
        *[f"| {t} | {thread_medians[t]:.1f} | {', '.join(f'{x:.1f}' for x in v)} |"
          for t, v in by_threads.items()], "",
        f"Two threads: {thread_medians[1] / thread_medians[2]:.2f}x the speed of one; the "
        f"weights they build are {'bit-identical' if same_weights else 'not bit-identical'} "
        "on this machine."]) + "\n")
    print((args.out / "build_step.md").read_text())


if __name__ == "__main__":
    main()
