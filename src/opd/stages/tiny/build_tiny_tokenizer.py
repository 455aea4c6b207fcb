"""Train the tiny world's byte-level BPE tokenizer and give it a Qwen3-style chat template.

The pre-tokenizer follows Qwen2/Qwen3: digits are split one by one, so arithmetic is learnt
digit-wise, then bytes are mapped by the GPT-2 byte-level alphabet. Special tokens and the
chat template (with ``enable_thinking``) mirror Qwen3's, so the same prompt-building code
serves tiny and real models.

    python -m opd.stages.tiny.build_tiny_tokenizer --corpus world_dir --out tokenizer_dir --params '{...}'
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from opd.core.config import typed
from opd.core.io import atomic_dir, read_table
from opd.core.prompts import EVAL_SUFFIX
from opd.core.schemas import DAPO_PREFIX, DAPO_SUFFIX

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Qwen3-style template: user/system/assistant turns; with enable_thinking=False the generation
# prompt carries an empty think block, exactly as Qwen3's non-thinking mode does.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' if '<think>' not in message['content'] else '' }}"
    "{%- endif -%}"
    "{{- message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif -%}"
    "{%- endif -%}"
)


def corpus_texts(world_dir: Path) -> list[str]:
    """Every text of the tiny world: prompts, solutions, benchmark problems."""
    texts: list[str] = []
    ot = read_table(world_dir / "openthoughts.parquet")
    texts += [turn["value"] for conv in ot["conversations"] for turn in conv]
    dapo = read_table(world_dir / "dapo.parquet")
    texts += [msg["content"] for prompt in dapo["prompt"] for msg in prompt]
    deep = read_table(world_dir / "deepmath.parquet")
    for col in ("question", "r1_solution_1", "r1_solution_2", "r1_solution_3"):
        texts += list(deep[col])
    texts += ["<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_start|>system\n"] * 50
    texts += [EVAL_SUFFIX.strip(), DAPO_PREFIX + DAPO_SUFFIX] * 50
    for name in ("aime24", "aime25", "amc23"):
        bench = read_table(world_dir / f"{name}.parquet")
        texts += [str(v) for v in bench.iloc[:, :2].to_numpy().ravel()]
    return texts


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
        padding_side="left",
        model_max_length=4096,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


@dataclass
class TokenizerParams:
    """Config ``tiny_models.tokenizer``."""
    vocab_size: int


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=Path, required=True, help="tiny world directory")
    ap.add_argument("--out", type=Path, required=True, help="tokenizer directory to write")
    ap.add_argument("--params", type=json.loads, required=True, help="tiny_models.tokenizer config")
    args = ap.parse_args(argv)
    tokenizer = train_tokenizer(corpus_texts(args.world), typed(TokenizerParams, args.params, "tiny_models.tokenizer").vocab_size)
    with atomic_dir(args.out) as tmp:
        tokenizer.save_pretrained(tmp)
    print(f"tokenizer: {len(tokenizer)} tokens -> {args.out}")


if __name__ == "__main__":
    main()
