"""Training-curve figures of the OPD experiments: one PNG per group, plus long-horizon plots.

A group figure has one panel per metric (rollout accuracy, overlap ratio, overlap-token
advantage, entropy gap, student shared mass, reverse KL) against the training step, one line
per experiment: the mean over its seeds, smoothed with a centred moving average (each seed's
raw values faint behind it). The long-horizon figure of an experiment shows the same metrics by
response position bucket, at the start and at the end of training, pooled over seeds.

    python -m opd.stages.report.opd_figures --groups '{...}' \
        --metrics '{"strong_teacher": {"0": "results/opd/strong_teacher/seed0/metrics.jsonl"}}' \
        --out results/figures --long-horizon strong_teacher
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from opd.core.io import atomic_path  # noqa: E402
from opd.core.logging import read_jsonl  # noqa: E402

PANELS = [("accuracy", "rollout accuracy"), ("overlap_ratio", "top-k overlap ratio"),
          ("overlap_advantage", "overlap-token advantage"),
          ("entropy_gap", "entropy gap (teacher - student)"),
          ("shared_mass_student", "shared mass (student)"),
          ("teacher_p_at_max_student", "teacher p at the student's top shared token"),
          ("reverse_kl", "reverse KL"),
          ("shared_mass_at_disagreement", "shared mass where the top tokens differ")]


def smooth(values: list[float], width: int) -> list[float]:
    out = []
    for i in range(len(values)):
        win = [v for v in values[max(0, i - width // 2):i + width // 2 + 1] if v == v]
        out.append(sum(win) / len(win) if win else float("nan"))
    return out


def save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        # fixed metadata so reruns write identical bytes
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)


def step_mean(per_seed: list[list[float]]) -> list[float]:
    """The mean over seeds at each step (NaN where no seed has a value)."""
    out = []
    for column in zip(*per_seed):
        vals = [v for v in column if v == v]
        out.append(sum(vals) / len(vals) if vals else float("nan"))
    return out


def group_figure(title: str, runs: dict[str, list[list[dict[str, Any]]]], out: Path,
                 width: int) -> None:
    fig, axes = plt.subplots(2, 4, figsize=(17, 7), constrained_layout=True)
    for ax, (key, label) in zip(axes.flat, PANELS):
        for i, (name, seeds) in enumerate(runs.items()):
            n = min(len(lines) for lines in seeds)
            steps = [ln["step"] for ln in seeds[0][:n]]
            values = [[float("nan") if ln.get(key) is None else ln[key] for ln in lines[:n]]
                      for lines in seeds]
            color = f"C{i}"
            for v in values:
                ax.plot(steps, v, color=color, alpha=0.15, linewidth=0.7)
            ax.plot(steps, smooth(step_mean(values), width), color=color,
                    label=f"{name} ({len(seeds)} seeds)", linewidth=1.8)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    for ax in axes.flat[len(PANELS):]:
        ax.set_visible(False)
    fig.suptitle(title)
    save(fig, out)


def long_horizon_figure(name: str, seeds: list[list[dict[str, Any]]], out: Path,
                        window: int) -> None:
    def by_bucket(part: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
        acc: dict[int, list[float]] = {}
        for ln in part:
            for b in ln["buckets"]:
                if b.get(key) is not None and b[key] == b[key]:
                    acc.setdefault(b["start"], []).append(b[key])
        starts = sorted(acc)
        return starts, [sum(acc[s]) / len(acc[s]) for s in starts]

    keys = [(k, lab) for k, lab in PANELS if k != "accuracy"]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.4), constrained_layout=True)
    for ax, (key, label) in zip(axes, keys):
        start = [ln for lines in seeds for ln in lines[:window]]
        end = [ln for lines in seeds for ln in lines[-window:]]
        for part, tag, color in ((start, "start of training", "C0"),
                                 (end, "end of training", "C3")):
            x, y = by_bucket(part, key)
            ax.plot(x, y, marker="o", color=color, label=tag)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("response position (token)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{name}: metrics by response position ({len(seeds)} seeds pooled)")
    save(fig, out)


def seed_runs(paths: dict[str, str]) -> list[list[dict[str, Any]]]:
    return [read_jsonl(paths[s]) for s in sorted(paths, key=int)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", type=json.loads, required=True)
    ap.add_argument("--metrics", type=json.loads, required=True,
                    help="JSON: experiment -> {seed: its metrics.jsonl}")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--long-horizon", nargs="*", default=[])
    ap.add_argument("--smooth", type=int, default=9)
    ap.add_argument("--window", type=int, default=5)
    args = ap.parse_args(argv)
    plt.rcParams["svg.hashsalt"] = "opd"
    for gname, group in args.groups.items():
        runs = {e: seed_runs(args.metrics[e]) for e in group["experiments"]}
        group_figure(group["title"], runs, args.out / f"{gname}.png", args.smooth)
    for name in args.long_horizon:
        long_horizon_figure(name, seed_runs(args.metrics[name]),
                            args.out / f"long_horizon_{name}.png", args.window)


if __name__ == "__main__":
    main()
