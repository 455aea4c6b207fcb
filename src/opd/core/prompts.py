"""Prompt wrappers and chat formatting shared by training, rollouts and evaluation."""

from __future__ import annotations

from typing import Any

# The evaluation instruction used by the paper's benchmarks (appended to the problem).
EVAL_SUFFIX = " Please reason step by step, and put your final answer within \\boxed{}."


def chat_prompt(tokenizer: Any, user_text: str, enable_thinking: bool = False) -> str:
    """The generation prompt for one user turn, through the tokenizer's own chat template."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": user_text}],
        tokenize=False,
        add_generation_prompt=True,
        enable_thinking=enable_thinking,
    )


def apply_template(template: str, problem: str) -> str:
    """Fill ``{problem}`` in a prompt template; other braces (e.g. ``\\boxed{}``) stay as they are."""
    if "{problem}" not in template:
        raise ValueError(f"prompt template {template!r} has no {{problem}} placeholder")
    return template.replace("{problem}", problem)
