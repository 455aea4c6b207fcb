"""Table of the tiny models (Markdown + CSV) and the check of their intended orderings.

    python -m opd.stages.tiny.tiny_models_table --cards a.card.json b.card.json ... --md T.md --csv T.csv \
        --checks orderings.json --params '[{"claim": ..., "a": ..., "b": ..., ...}]'
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pandas as pd

from opd.core.claims import checked
from opd.core.io import atomic_path, write_json, write_text


METRICS = {  # check metric -> (card section, key)
    "probe_all": ("probe", "accuracy"),
    "probe_easy": ("probe", "easy_accuracy"),
    "probe_hard": ("probe", "hard_accuracy"),
    "probe_triple": ("probe", "triple_accuracy"),
    "pattern_chain": ("patterns", "chain"),
    "pattern_tally": ("patterns", "tally"),
}


def metric(card: dict[str, Any], name: str) -> float:
    section, key = METRICS[name]
    return card[section][key]


def run_checks(cards: dict[str, dict[str, Any]], checks: list[dict[str, Any]]) -> list[dict]:
    results = []
    for chk in checks:
        if chk["a"] not in cards or chk["b"] not in cards:
            missing = [m for m in (chk["a"], chk["b"]) if m not in cards]
            raise KeyError(f"check {chk['claim']!r} names unknown model(s): {missing}")
        results.append(checked(chk, metric(cards[chk["a"]], chk["metric"]),
                               metric(cards[chk["b"]], chk["metric"])))
    return results


def table(cards: dict[str, dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for name, c in cards.items():
        row = {"model": name, "role": c["recipe"]["role"],
               "pattern": c["recipe"]["pattern"],
               "chain_lengths": f"{c['recipe']['difficulty'][0]}-{c['recipe']['difficulty'][1]}",
               "parameters": c["recipe"]["parameters"],
               "probe": c["probe"]["accuracy"]}
        row.update({f"probe_d{d}": v for d, v in c["probe"]["by_difficulty"].items()})
        row.update({name_: b["accuracy"] for name_, b in c["benchmarks"].items()})
        # wall-clock times stay in the model cards: tables are byte-identical across runs
        row.update({"chain_share": c["patterns"]["chain"], "tally_share": c["patterns"]["tally"]})
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(df: pd.DataFrame, checks: list[dict[str, Any]]) -> str:
    cols = list(df.columns)
    lines = ["# Tiny models", "",
             "Greedy accuracy on the probe set (40 problems per chain length) and the tiny "
             "benchmarks; `chain_share`/`tally_share`: fraction of probe answers in each "
             "thinking pattern.", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v)
                                       for v in r.tolist()) + " |")
    lines += ["", "## Intended orderings", "", "| claim | a | b | metric | a value | b value | holds |",
              "|---|---|---|---|---|---|---|"]
    for c in checks:
        lines.append(f"| {c['claim']} | {c['a']} | {c['b']} | {c['metric']} {c['op']} "
                     f"| {c['measured_a']:.3f} | {c['measured_b']:.3f} | {'yes' if c['holds'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cards", type=Path, nargs="+", required=True)
    ap.add_argument("--md", type=Path, required=True)
    ap.add_argument("--csv", type=Path, required=True)
    ap.add_argument("--checks", type=Path, required=True)
    ap.add_argument("--params", type=json.loads, default=[], help="list of checks as JSON")
    args = ap.parse_args(argv)
    cards = {json.loads(p.read_text())["model"]: json.loads(p.read_text()) for p in args.cards}
    checks = run_checks(cards, args.params)
    df = table(cards)
    with atomic_path(args.csv) as tmp:
        df.to_csv(tmp, index=False, float_format="%.4f")
    write_text(args.md, markdown(df, checks))
    write_json(args.checks, {"all_hold": all(c["holds"] for c in checks), "checks": checks})
    for c in checks:
        print(("ok  " if c["holds"] else "FAIL") + f" {c['claim']}: {c['measured_a']:.3f} "
              f"{c['op']} {c['measured_b']:.3f}")


if __name__ == "__main__":
    main()
