"""Check: two disjoint seed sets reach the same verdict on every claim of the tiny world.

Copies the workflow into a scratch directory and runs the tiny pipeline there twice: with
``seeds=[0, 1, 2]`` and with ``seeds=[3, 4, 5]`` (the world, models, data and rollouts are
built once and shared; each seed set trains and evaluates its own runs). After each run its
``results/tables/claims.json`` is kept, and the verdicts are compared claim by claim. Another
CPU's numerics move a run the way another seed does, so agreement here is what lets a claim's
verdict stand on any machine.

    python benchmarks/seed_agreement.py [--cores all] [--keep DIR]
    python benchmarks/seed_agreement.py --claims A/claims.json B/claims.json   # compare only

Writes results/benchmarks/seed_agreement.json and .md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SEED_SETS = ([0, 1, 2], [3, 4, 5])


def run_seeds(work: Path, snakemake: str, cores: str, seeds: list[int]) -> dict:
    proc = subprocess.run([snakemake, "--cores", cores, "--config", f"seeds={seeds}"],
                          cwd=work, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"pipeline with seeds {seeds} failed in {work}:\n{proc.stderr[-3000:]}")
    return json.loads((work / "results/tables/claims.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cores", default="all")
    ap.add_argument("--out", type=Path, default=REPO / "results/benchmarks")
    ap.add_argument("--keep", type=Path, default=None, help="run in this (new) directory")
    ap.add_argument("--claims", type=Path, nargs=2, default=None,
                    help="compare these two claims.json files (one per seed set) instead")
    args = ap.parse_args()
    if args.claims:
        runs = [json.loads(p.read_text()) for p in args.claims]
    else:
        snakemake = str(Path(sys.executable).with_name("snakemake"))
        with tempfile.TemporaryDirectory() as tmp:
            work = args.keep or Path(tmp)
            work.mkdir(parents=True, exist_ok=True)
            for item in ("Snakefile", "workflow", "config", "envs"):
                src = REPO / item
                (shutil.copytree if src.is_dir() else shutil.copy)(src, work / item)
            runs = [run_seeds(work, snakemake, args.cores, seeds) for seeds in SEED_SETS]
    write(agreement(runs), args.out)


def agreement(runs: list[dict]) -> dict:
    """Claim by claim, the two seed sets' verdicts and intervals and whether they agree."""
    names = [[c["claim"] for c in r["claims"]] for r in runs]
    if names[0] != names[1]:
        raise SystemExit("the two runs judged different claims")
    rows = []
    for a, b in zip(*(r["claims"] for r in runs)):
        rows.append({"group": a["group"], "claim": a["claim"], "verdicts": [a["verdict"], b["verdict"]],
                     "differences": [a["difference"], b["difference"]],
                     "agree": a["verdict"] == b["verdict"]})
    return {"seed_sets": [r["seeds"] for r in runs], "claims": rows,
            "agree": sum(r["agree"] for r in rows), "total": len(rows),
            "all_hold": all(v == "holds" for r in rows for v in r["verdicts"])}


def write(result: dict, out: Path) -> None:
    rows, sets = result["claims"], result["seed_sets"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "seed_agreement.json").write_text(json.dumps(result, indent=1) + "\n")
    fmt = lambda d: f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"  # noqa: E731
    lines = [f"Verdicts of every tiny claim with seeds {sets[0]} and {sets[1]}: "
             f"{result['agree']} of {result['total']} agree.", "",
             f"| group | claim | seeds {sets[0]} | seeds {sets[1]} | agree |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['group']} | {r['claim']} | {r['verdicts'][0]}: {fmt(r['differences'][0])} | "
              f"{r['verdicts'][1]}: {fmt(r['differences'][1])} | {'yes' if r['agree'] else '**no**'} |"
              for r in rows]
    (out / "seed_agreement.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
