"""Run by the vLLM environment's Python (``tests/vllm_cpu/test_vllm_cpu.py``): a short OPD
run whose colocated vLLM generator is checked after every ``sync``.

After each sync the engine scores one fixed token sequence (its prompt log-probs) and so does
a ``transformers`` copy of the student holding the very tensors that were synced; both, and
how far the weights moved since the start, are written to ``--out`` as JSON lines.

    python tests/vllm_cpu/opd_sync_probe.py --student S --teacher T --prompts P.parquet \
        --run-dir DIR --params '{...}' --out checks.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def student_logprobs(model, sequence: list[int]) -> list[float]:
    """log p(token i | tokens before i) for i >= 1, by a plain forward pass."""
    with torch.no_grad():
        logp = model(torch.tensor([sequence])).logits.float().log_softmax(-1)[0]
    return [logp[i - 1, sequence[i]].item() for i in range(1, len(sequence))]


def engine_logprobs(llm, sequence: list[int]) -> list[float]:
    """The same numbers from vLLM: the prompt log-probs of the sequence."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    out = llm.generate([TokensPrompt(prompt_token_ids=sequence)],
                       SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0),
                       use_tqdm=False)[0]
    return [entry[tok].logprob for tok, entry in zip(sequence, out.prompt_logprobs)
            if entry is not None]


def main() -> None:
    ap = argparse.ArgumentParser()
    for name in ("--student", "--teacher", "--prompts", "--run-dir", "--params", "--out"):
        ap.add_argument(name, required=True)
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from opd.core.models import ModelRef
    from opd.stages.opd import opd_train
    from opd.train import engine

    tok = AutoTokenizer.from_pretrained(args.student)
    sequence = tok("Start with 4. The changes are +1, +2. What is the result? start: 4\n"
                   "+1 -> 5\n+2 -> 7\nFinal: \\boxed{7}", add_special_tokens=False)["input_ids"]
    start = student_logprobs(AutoModelForCausalLM.from_pretrained(args.student).eval(), sequence)
    out = Path(args.out)

    class CheckedRollouts(engine.VLLMRollouts):
        def sync(self, parameters):
            synced = [(name, p.detach().clone()) for name, p in parameters]
            super().sync(iter(synced))
            copy = AutoModelForCausalLM.from_pretrained(args.student).eval()
            missing, unexpected = copy.load_state_dict(dict(synced), strict=False)
            assert set(missing) <= {"lm_head.weight"} and not unexpected, (missing, unexpected)
            want = student_logprobs(copy, sequence)
            got = engine_logprobs(self.engine.llm, sequence)
            with out.open("a") as fh:
                fh.write(json.dumps({
                    "max_abs_diff": max(abs(a - b) for a, b in zip(got, want)),
                    "moved_since_start": max(abs(a - b) for a, b in zip(want, start)),
                    "tokens": len(got)}) + "\n")

    engine.VLLMRollouts = CheckedRollouts  # opd_train's make_generator builds this class
    ns = argparse.Namespace(student=ModelRef.parse(args.student),
                            teacher=ModelRef.parse(args.teacher),
                            prompts={"path": args.prompts}, out=Path(args.run_dir),
                            params=json.loads(args.params), benchmarks=None)
    opd_train.train(ns)


if __name__ == "__main__":
    main()
