"""GPU check at the paper's shapes: two OPD updates through the trainer's own pieces.

Student and teacher are randomly initialised models of the DeepSeek-R1-Distill-Qwen-1.5B
architecture (Qwen2: hidden 1,536, 28 layers, 12 heads, 2 key/value heads, MLP 8,960,
vocabulary 151,936), built locally (no download). Each update takes a batch of rollouts with
``--response-tokens`` response tokens each (7,168 by default, the official response length)
and runs what ``opd_train`` runs for it: ``prepare_student`` (activation checkpointing; FSDP2
on several processes) and ``update`` (token-budget micro-batches, teacher and student hidden
states, the hidden-state loss, backward, clipping, AdamW). The response tokens are
drawn uniformly from the vocabulary, which is what a randomly initialised model samples; the
sampling itself (vLLM on the cluster) is not part of the check. Measured: peak GPU memory
(``torch.cuda.max_memory_allocated``), seconds and tokens per second of each update, next to
the memory plan's estimate (``opd.core.plan.opd_estimate``) for the same settings.

    python benchmarks/gpu_paper_shapes.py --tokenizer results/models/tiny/student
    python benchmarks/gpu_paper_shapes.py --tokenizer results/models/tiny/student --small

``--small`` uses a small shape and short responses, to check the script on a CPU. Writes
``benchmarks/recorded/gpu_paper_shapes.md`` (tracked) on a GPU, ``results/benchmarks/`` with
``--small``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

from opd.core.config import section
from opd.core.plan import GIB, Shape, opd_estimate
from opd.stages.opd.opd_train import OPDParams, prepare_student, update
from opd.train.generation import RolloutBatch
from opd.train.pair import load_pair

R1_DISTILL_1P5B = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                       num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
                       max_position_embeddings=131072, rope_theta=10000.0,
                       tie_word_embeddings=False)
SMALL = dict(R1_DISTILL_1P5B, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, vocab_size=2048,
             max_position_embeddings=4096)


def build(shape: dict, tokenizer: str, out: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(Qwen2Config(**shape), dtype=torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(tokenizer).save_pretrained(out)
    return out


def rollouts(tok, rows: int, prompt_tokens: int, response_tokens: int, vocab: int,
             device: str, seed: int) -> RolloutBatch:
    """``rows`` rollouts with prompts of the tokenizer's own ids and uniformly drawn response
    tokens, laid out as the sampler lays them out."""
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, len(tok), (rows, prompt_tokens), generator=gen)
    response = torch.randint(0, vocab, (rows, response_tokens), generator=gen)
    ids = torch.cat([prompt, response], 1).to(device)
    return RolloutBatch(ids, torch.ones_like(ids), torch.ones_like(response).to(device),
                        prompt_tokens, [])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", required=True, help="any local tokenizer (the tiny one)")
    ap.add_argument("--small", action="store_true", help="a small shape (CPU check)")
    ap.add_argument("--rollouts", type=int, default=4)
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--response-tokens", type=int, default=7168)
    ap.add_argument("--updates", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    if not cuda and not args.small:
        raise SystemExit("no GPU: the paper shapes need one (use --small to check the script)")
    shape = SMALL if args.small else R1_DISTILL_1P5B
    response_tokens = 64 if args.small else args.response_tokens
    paper = yaml.safe_load(Path("config/paper.yaml").read_text())
    opd = section("opd", {**paper["opd"], "weight_decay": 0.01})
    params = OPDParams.from_config({**opd, "steps": args.updates, "seed": 0,
                                    "template": "{problem}",
                                    "validation": {**opd["validation"], "template": "{problem}"}})
    device = "cuda" if cuda else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        student_dir = build(shape, args.tokenizer, Path(tmp) / "student", 1)
        teacher_dir = build(shape, args.tokenizer, Path(tmp) / "teacher", 2)
        build_s = time.perf_counter() - t0
        tok, student, teacher = load_pair(str(student_dir), str(teacher_dir), on=device)
        if cuda and params.mixed_precision == "bf16":
            teacher.to(torch.bfloat16)
        prepare_student(student, params, world=1, bf16=False)
        opt = torch.optim.AdamW(student.parameters(), lr=params.lr,
                                weight_decay=params.weight_decay)
        updates = []
        for i in range(args.updates):
            batch = rollouts(tok, args.rollouts, args.prompt_tokens, response_tokens,
                             shape["vocab_size"], device, seed=i)
            tokens = int(batch.response_mask.sum())
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            parts, _, grad_norm, _ = update(student, teacher, opt, batch, params, tokens)
            if cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            updates.append({"update": i, "response_tokens": tokens, "seconds": round(seconds, 2),
                            "tokens_per_s": round(tokens / seconds, 1),
                            "peak_gib": round(torch.cuda.max_memory_allocated() / GIB, 2)
                            if cuda else None,
                            "micro_batches": len(parts), "loss": parts[0][0]["loss"],
                            "grad_norm": grad_norm})
            print(json.dumps(updates[-1]), flush=True)
    gpu_bytes = torch.cuda.get_device_properties(0).total_memory if cuda else 0
    plan = opd_estimate("gpu check", Shape.of(shape), Shape.of(shape),
                        {**opd, "generator": "transformers"}, 1, gpu_bytes)
    result = {"shape": shape, "device": torch.cuda.get_device_name(0) if cuda else f"CPU ({platform.machine()})",
              "settings": {k: opd[k] for k in ("max_tokens_per_micro_batch", "chunk_size",
                                               "activation_checkpointing", "mixed_precision")},
              "rollouts": args.rollouts, "prompt_tokens": args.prompt_tokens,
              "response_tokens": response_tokens, "build_seconds": round(build_s, 1),
              "updates": updates, "plan_gib": round(plan.total / GIB, 2),
              "plan_terms_gib": {k: round(v / GIB, 2) for k, v in plan.terms.items()}}
    out = args.out or (Path("results/benchmarks") if args.small else Path("benchmarks/recorded"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_paper_shapes.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# OPD updates at the paper's shapes on {result['device']}", "",
             f"Random {'small Qwen2' if args.small else 'R1-Distill-Qwen-1.5B'}-shaped student "
             f"and teacher (hidden "
             f"{shape['hidden_size']}, {shape['num_hidden_layers']} layers, vocabulary "
             f"{shape['vocab_size']}), {args.rollouts} rollouts x {response_tokens} response "
             f"tokens per update, settings of config/paper.yaml ({result['settings']}), one "
             "process (no sharding).", "",
             "| update | response tokens | seconds | tokens/s | peak GiB | plan GiB |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {u['update']} | {u['response_tokens']} | {u['seconds']} | {u['tokens_per_s']} "
              f"| {u['peak_gib']} | {result['plan_gib']} |" for u in updates]
    lines += ["", "The plan's terms (GiB): " + ", ".join(
        f"{k} {v}" for k, v in result["plan_terms_gib"].items()), ""]
    (out / "gpu_paper_shapes.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
