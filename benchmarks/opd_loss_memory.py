"""Benchmark: peak memory and time of the OPD loss at Qwen vocabulary size (CPU).

Each measurement runs in its own process. The inputs are what a training step hands the
loss: final hidden states [1, T, 1536] of student (with gradient) and teacher, and the two LM
heads [151936, 1536] (the student's with gradient), float32, seeded. One forward + backward
follows. The memory reported is the peak resident memory *above* the inputs (VmHWM after the
step minus VmHWM with the inputs in place); every side also holds the student head's weight
gradient (891 MiB), which any training step has. Three implementations:

- ``hidden``: ``opd.train.losses.opd_loss_hidden`` (heads applied chunk by chunk, no [T, V]);
- ``chunked``: both heads applied whole, then ``opd_loss`` with ``chunk_size``;
- ``naive``: both heads applied whole, then plain full-vocabulary log-softmax formulas.

All must agree on the loss and a fixed sample of hidden-state gradient entries to 1e-5. A side
whose logits alone cannot fit in the machine's available memory is not run; the table says so.

    python benchmarks/opd_loss_memory.py [--lengths 2048 8192 32768] [--chunk 256] [--merge]

Writes results/benchmarks/opd_loss_memory.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

V = 151_936
HIDDEN = 1536
VARIANTS = ("full", "topk")
IMPLS = ("hidden", "chunked", "naive")
# float32 [T, V] tensors each side holds at least at its peak (logits of both models and the
# log-softmax of each, plus the student's gradient for the two that form logits)
LOGIT_COPIES = {"hidden": 0, "chunked": 3, "naive": 5}


def _status(field: str) -> int:
    """A /proc/self/status memory field in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024
    raise KeyError(field)


def naive_loss(s_logits, t_logits, tokens, mask, variant: str, k: int = 16):
    """Plain full-vocabulary computation (the reference formulas of docs/design.md)."""
    import torch

    logp = torch.log_softmax(s_logits, dim=-1)
    logq = torch.log_softmax(t_logits, dim=-1)
    if variant == "full":
        p = logp.exp()
        adv = (p * (logq - logp)).detach()
        ratio = torch.exp(logp - logp.detach())
        per_token = (adv * ratio).sum(-1)
    else:
        idx = logp.topk(k, dim=-1).indices
        lp, lq = logp.gather(-1, idx), logq.gather(-1, idx)
        w = lp.exp() / lp.exp().sum(-1, keepdim=True)
        adv = (w * (lq - lp)).detach()
        per_token = (adv * torch.exp(lp - lp.detach())).sum(-1)
    return -(per_token * mask).sum() / mask.sum()


def child(impl: str, variant: str, T: int, chunk: int) -> dict:
    import torch

    torch.manual_seed(0)
    s_h = torch.randn(1, T, HIDDEN).requires_grad_(True)
    t_h = torch.randn(1, T, HIDDEN)
    s_head = torch.nn.Linear(HIDDEN, V, bias=False)
    t_head = torch.nn.Linear(HIDDEN, V, bias=False).requires_grad_(False)
    with torch.no_grad():  # logits of a useful spread, as a trained head gives
        s_head.weight.normal_(0, 0.08)
        t_head.weight.normal_(0, 0.08)
    tokens = torch.randint(0, V, (1, T))
    mask = torch.ones(1, T)
    base = _status("VmHWM")
    t0 = time.perf_counter()
    if impl == "hidden":
        from opd.train.losses import opd_loss_hidden

        loss, _ = opd_loss_hidden(s_h, s_head, t_h, t_head, tokens, mask, variant=variant,
                                  top_k=16, chunk_size=chunk)
    else:
        s, t = s_head(s_h), t_head(t_h)
        if impl == "naive":
            loss = naive_loss(s, t, tokens, mask, variant)
        else:
            from opd.train.losses import opd_loss

            loss, _ = opd_loss(s, t, tokens, mask, variant=variant, top_k=16, chunk_size=chunk)
    loss.backward()
    seconds = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(1)
    pick = torch.randint(0, T * HIDDEN, (10_000,), generator=gen)
    sample = s_h.grad.reshape(-1)[pick]
    return {"impl": impl, "variant": variant, "T": T, "loss": loss.item(),
            "grad_sample": sample.tolist(), "peak_extra_mib": _status("VmHWM") - base,
            "inputs_mib": base, "seconds": round(seconds, 3)}


def available_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    raise KeyError("MemAvailable")


def run_child(impl: str, variant: str, T: int, chunk: int) -> dict:
    need = LOGIT_COPIES[impl] * T * V * 4 // 2**20
    if need > available_mib():
        return {"impl": impl, "variant": variant, "T": T,
                "failed": f"not run: needs > {need / 1024:.0f} GiB for its [T, V] tensors, "
                          f"{available_mib() / 1024:.0f} GiB available"}
    # large blocks straight from mmap and returned when freed, so that the peak is what was
    # alive at once (not what the allocator kept), the same for every side
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    proc = subprocess.run([sys.executable, __file__, "--child", impl, variant, str(T),
                           "--chunk", str(chunk)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        why = "killed (out of memory)" if proc.returncode in (-9, 137) else proc.stderr[-300:]
        return {"impl": impl, "variant": variant, "T": T, "failed": why}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(side: dict, ref: dict) -> dict:
    """Agreement of ``side`` with the reference ``ref`` (naive, else chunked)."""
    diff = max(abs(a - b) for a, b in zip(side["grad_sample"], ref["grad_sample"]))
    return {"loss_abs_diff": abs(side["loss"] - ref["loss"]), "grad_max_abs_diff": diff,
            "agree_1e-5": abs(side["loss"] - ref["loss"]) <= 1e-5 and diff <= 1e-5}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192, 32768])
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--child", nargs=3, metavar=("IMPL", "VARIANT", "T"))
    ap.add_argument("--out", type=Path, default=Path("results/benchmarks"))
    ap.add_argument("--markdown-only", action="store_true",
                    help="rewrite the Markdown table from the JSON of the last run")
    ap.add_argument("--merge", action="store_true",
                    help="keep the rows of other lengths from the JSON of an earlier run "
                         "(measure the longest sequences separately)")
    args = ap.parse_args()
    if args.markdown_only:
        result = json.loads((args.out / "opd_loss_memory.json").read_text())
        result.setdefault("chunk_size", args.chunk)
        write_markdown(result, args.out / "opd_loss_memory.md")
        return
    if args.child:
        impl, variant, T = args.child
        print(json.dumps(child(impl, variant, int(T), args.chunk)))
        return
    rows = []
    for T in args.lengths:
        for variant in VARIANTS:
            sides = {impl: run_child(impl, variant, T, args.chunk) for impl in IMPLS}
            row = {"T": T, "variant": variant, "chunk_size": args.chunk, **sides}
            ran = [i for i in IMPLS if "failed" not in sides[i]]
            ref = next((sides[i] for i in ("naive", "chunked") if i in ran), None)
            if ref is not None:
                row["agreement"] = {i: compare(sides[i], ref) for i in ran if sides[i] is not ref}
            if "hidden" in ran and "naive" in ran:
                row["memory_ratio"] = round(sides["naive"]["peak_extra_mib"]
                                            / max(1, sides["hidden"]["peak_extra_mib"]), 2)
                row["time_ratio"] = round(sides["hidden"]["seconds"] / sides["naive"]["seconds"], 2)
            for side in sides.values():
                side.pop("grad_sample", None)
            rows.append(row)
            print(json.dumps(row), flush=True)
    previous = args.out / "opd_loss_memory.json"
    if args.merge and previous.exists():
        kept = [r for r in json.loads(previous.read_text())["rows"] if r["T"] not in args.lengths]
        rows = sorted(kept + rows, key=lambda r: (r["T"], VARIANTS.index(r["variant"])))
    result = {"vocab": V, "hidden": HIDDEN, "batch": 1, "device": "cpu",
              "cpu_count": os.cpu_count(), "chunk_size": args.chunk,
              "machine": platform.machine(),
              "target": "hidden: peak <= naive/10 and <= 2 GiB at T=8192; time <= 1.3x naive",
              "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "opd_loss_memory.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, args.out / "opd_loss_memory.md")


def write_markdown(result: dict, path: Path) -> None:
    lines = ["| T | variant | hidden MiB | chunked MiB | naive MiB | naive / hidden | hidden s | "
             "chunked s | naive s | hidden / naive time | agree (1e-5) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        cell = lambda i, key: str(r[i].get(key, r[i].get("failed", "")))  # noqa: E731
        agree = all(a["agree_1e-5"] for a in r.get("agreement", {}).values()) \
            if r.get("agreement") else "-"
        lines.append(f"| {r['T']} | {r['variant']} | {cell('hidden', 'peak_extra_mib')} | "
                     f"{cell('chunked', 'peak_extra_mib')} | {cell('naive', 'peak_extra_mib')} | "
                     f"{r.get('memory_ratio', '-')} | {cell('hidden', 'seconds')} | "
                     f"{cell('chunked', 'seconds')} | {cell('naive', 'seconds')} | "
                     f"{r.get('time_ratio', '-')} | {agree} |")
    note = ("\nPeak resident memory above the inputs (hidden states [1, T, "
            f"{result['hidden']}] and two LM heads [{result['vocab']}, {result['hidden']}], "
            f"float32) during one forward + backward on {result['cpu_count']} CPU cores. Every "
            "side also holds the student head's weight gradient (891 MiB). hidden: the loss "
            f"from hidden states, chunks of {result['chunk_size']} tokens; chunked: logits formed "
            "whole, then the chunked logits loss; naive: logits and log-softmax formed whole. "
            "hidden and chunked also compute every mechanism metric. Target: "
            f"{result['target']}.\n")
    path.write_text("\n".join(lines) + "\n" + note)


if __name__ == "__main__":
    main()
