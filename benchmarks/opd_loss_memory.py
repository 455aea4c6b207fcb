"""Benchmark: peak memory and time of the OPD loss at Qwen vocabulary size (CPU).

Each measurement runs in its own process: random student/teacher logits [1, T, 151936]
(float32, seeded) are allocated first, then one forward + backward of the loss runs. The
memory reported is the peak resident memory *above* the inputs (VmHWM after the step minus
VmHWM with the inputs in place), i.e. what the loss itself needs. ``ours`` is
``opd.train.losses.opd_loss`` with ``chunk_size``; ``naive`` is a direct implementation that
materialises full-vocabulary log-softmax tensors for both models. Both sides must agree on
the loss and on a fixed sample of gradient entries to 1e-5.

    python benchmarks/opd_loss_memory.py [--lengths 1024 2048 4096] [--chunk 256]

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
VARIANTS = ("full", "topk")


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
    s = (torch.randn(1, T, V) * 3).requires_grad_(True)
    t = torch.randn(1, T, V) * 3
    tokens = torch.randint(0, V, (1, T))
    mask = torch.ones(1, T)
    base = _status("VmHWM")
    t0 = time.perf_counter()
    if impl == "naive":
        loss = naive_loss(s, t, tokens, mask, variant)
    else:
        from opd.train.losses import opd_loss

        loss, _ = opd_loss(s, t, tokens, mask, variant=variant, top_k=16, chunk_size=chunk)
    loss.backward()
    seconds = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(1)
    pick = torch.randint(0, T * V, (10_000,), generator=gen)
    sample = s.grad.reshape(-1)[pick]
    return {"impl": impl, "variant": variant, "T": T, "loss": loss.item(),
            "grad_sample": sample.tolist(), "peak_extra_mib": _status("VmHWM") - base,
            "inputs_mib": base, "seconds": round(seconds, 3)}


def run_child(impl: str, variant: str, T: int, chunk: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", impl, variant, str(T),
                           "--chunk", str(chunk)], capture_output=True, text=True)
    if proc.returncode != 0:
        why = "killed (out of memory)" if proc.returncode in (-9, 137) else proc.stderr[-300:]
        return {"impl": impl, "variant": variant, "T": T, "failed": why}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--child", nargs=3, metavar=("IMPL", "VARIANT", "T"))
    ap.add_argument("--out", type=Path, default=Path("results/benchmarks"))
    ap.add_argument("--markdown-only", action="store_true",
                    help="rewrite the Markdown table from the JSON of the last run")
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
            ours = run_child("ours", variant, T, args.chunk)
            naive = run_child("naive", variant, T, args.chunk)
            row = {"T": T, "variant": variant, "chunk_size": args.chunk, "ours": ours,
                   "naive": naive}
            if "failed" not in ours and "failed" not in naive:
                diff = max(abs(a - b) for a, b in zip(ours["grad_sample"], naive["grad_sample"]))
                row["loss_abs_diff"] = abs(ours["loss"] - naive["loss"])
                row["grad_max_abs_diff"] = diff
                scale = max(abs(b) for b in naive["grad_sample"]) or 1.0
                row["grad_max_rel_diff"] = diff / scale
                row["agree_1e-5"] = row["loss_abs_diff"] <= 1e-5 and diff <= 1e-5
                row["memory_ratio"] = round(naive["peak_extra_mib"] / max(1, ours["peak_extra_mib"]), 2)
                row["time_ratio"] = round(naive["seconds"] / ours["seconds"], 2)
            for side in (ours, naive):
                side.pop("grad_sample", None)
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {"vocab": V, "batch": 1, "device": "cpu", "cpu_count": os.cpu_count(),
              "chunk_size": args.chunk,
              "machine": platform.machine(), "target": "naive/ours peak memory >= 8 for full",
              "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "opd_loss_memory.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, args.out / "opd_loss_memory.md")


def write_markdown(result: dict, path: Path) -> None:
    lines = ["| T | variant | ours peak MiB | naive peak MiB | memory ratio | ratio beyond the "
             "logits' gradient | ours s | naive s | agree (1e-5) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        ours, naive = r["ours"], r["naive"]
        grad = r["T"] * result["vocab"] * 4 / 2**20   # the input gradient both sides must hold
        beyond = "-"
        if "failed" not in ours and "failed" not in naive:
            beyond = f"{(naive['peak_extra_mib'] - grad) / max(1.0, ours['peak_extra_mib'] - grad):.1f}"
        cell = lambda side, key: str(side.get(key, side.get("failed", "")))  # noqa: E731
        lines.append(f"| {r['T']} | {r['variant']} | {cell(ours, 'peak_extra_mib')} | "
                     f"{cell(naive, 'peak_extra_mib')} | {r.get('memory_ratio', '-')} | {beyond} | "
                     f"{cell(ours, 'seconds')} | {cell(naive, 'seconds')} | "
                     f"{r.get('agree_1e-5', '-')} |")
    note = ("\nPeak resident memory above the inputs (two [1, T, 151936] float32 logit tensors) "
            f"during one forward + backward on {result['cpu_count']} CPU cores; ours uses "
            f"chunk_size {result['chunk_size']} and also computes every mechanism metric. Both "
            "sides must hold the gradient of the student logits ([1, T, 151936] float32), which "
            "bounds the overall ratio; the column before the timings leaves it out. Target: "
            ">= 8x lower peak memory than naive for full-vocab.\n")
    path.write_text("\n".join(lines) + "\n" + note)


if __name__ == "__main__":
    main()
