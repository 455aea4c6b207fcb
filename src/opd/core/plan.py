"""Memory planner: the peak per-GPU memory of every GPU job, estimated before anything runs.

A model's shape comes from its ``config.json`` (hidden size, layers, heads, key/value heads,
head size, MLP width, vocabulary, tied embeddings). Each job's estimate is a sum of named
terms in bytes; the workflow fails the dry run, naming the job and its largest terms, when
the sum exceeds the GPU's memory. The terms follow what the code does:

- OPD (``opd_train``): on N GPUs the student is sharded with FSDP2 (``opd.train.parallel``):
  each GPU holds 1/N of its fp32 weights, gradients and AdamW's two moments, plus the
  parameters gathered for computing (bf16): the embeddings, final norm and LM head for the
  whole step and two decoder layers at a time (one computing, one prefetched), with their
  unsharded gradients before they are reduced. On one GPU the student is whole. Every GPU
  holds the teacher in bf16 (replicated), the colocated vLLM engine's share of the GPU, the
  activations of one micro-batch (``max_tokens_per_micro_batch`` tokens; with activation
  checkpointing one saved hidden state per layer plus one layer's activations), and the
  hidden-state loss: one chunk of vocabulary-wide tensors, the student head's gradient and
  both models' final hidden states.
- cold-start SFT: the student in fp32 with gradient and AdamW state (gradients and optimizer
  state sharded over the job's GPUs), bf16 activations of one per-device batch (no
  checkpointing) and its float32 logits with their gradient.
- diagnosis: both models in bf16, the KV cache of generating every sampled sequence at once,
  then metrics micro-batch by micro-batch.
- generation (evaluation, rollouts, prompt selection): vLLM's share of each GPU, which must
  hold the weights (tensor parallel over the job's GPUs) with room for the KV cache.

Estimates are deliberately plain; ``tests/core/test_plan.py`` checks the activation and loss
terms against a measured CPU peak of a small Qwen3 model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GIB = 2**30
OVERHEAD = 2 * GIB  # CUDA context, allocator slack, communication buffers
LOSS_COPIES = 5     # vocabulary-wide float32 tensors alive at once per loss chunk (measured)
VLLM_GENERATION_SHARE = 0.85  # gpu_memory_utilization of the generation engine
SHAPE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "intermediate_size", "vocab_size")


class PlanError(ValueError):
    """A job does not fit, or a model's shape is unknown; the message names both."""


@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool

    @classmethod
    def of(cls, cfg: dict[str, Any]) -> "Shape":
        missing = [k for k in SHAPE_KEYS if cfg.get(k) is None]
        if missing:
            raise PlanError(f"model shape lacks {', '.join(missing)}")
        heads = int(cfg["num_attention_heads"])
        return cls(int(cfg["hidden_size"]), int(cfg["num_hidden_layers"]), heads,
                   int(cfg["num_key_value_heads"]),
                   int(cfg.get("head_dim") or cfg["hidden_size"] // heads),
                   int(cfg["intermediate_size"]), int(cfg["vocab_size"]),
                   bool(cfg.get("tie_word_embeddings", False)))

    @property
    def params(self) -> int:
        return self.layers * self.layer_params + self.outer_params

    @property
    def layer_params(self) -> int:
        """One decoder layer: attention, MLP, two norms, q/k norms or biases."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return self.hidden * (2 * q + 2 * kv) + 3 * self.hidden * self.intermediate \
            + 2 * self.hidden + 2 * self.head_dim   # + q/k norms (Qwen3) or biases (Qwen2)

    @property
    def outer_params(self) -> int:
        """Outside the decoder layers: embeddings, LM head (unless tied), final norm."""
        return (1 if self.tied else 2) * self.vocab * self.hidden + self.hidden

    def layer_activation_bytes(self, tokens: int, elem: int) -> int:
        """Saved activations of one decoder layer for ``tokens`` tokens (SDPA / flash
        attention, no [T, T] scores): norms, q/k/v before and after rotary embedding, the
        attention output, the MLP's gate, up, activation and product, residuals. The
        coefficients were fitted to the measured peak of a small Qwen3 on CPU
        (tests/core/test_plan.py)."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        per_token = 6 * self.hidden + 2 * q + 2 * kv + 5 * self.intermediate
        return tokens * per_token * elem


def model_shape(spec: dict[str, Any]) -> Shape:
    """A registry model's shape: its ``shape`` entry, else its local ``config.json``."""
    if spec.get("shape"):
        return Shape.of(spec["shape"])
    path = Path(spec.get("path", "")) / "config.json"
    if spec.get("path") and path.exists():
        return Shape.of(json.loads(path.read_text()))
    where = spec.get("path") or spec.get("hub_id")
    raise PlanError(f"the shape of {where} is unknown: give models.<name>.shape (the "
                    f"config.json fields {', '.join(SHAPE_KEYS)})")


@dataclass
class Estimate:
    job: str
    gpus: int
    gpu_bytes: int
    terms: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.terms.values())

    @property
    def fits(self) -> bool:
        return self.total <= self.gpu_bytes

    def line(self) -> str:
        top = sorted(self.terms.items(), key=lambda kv: -kv[1])[:4]
        parts = ", ".join(f"{k} {v / GIB:.1f}" for k, v in top)
        mark = "fits" if self.fits else "DOES NOT FIT"
        return (f"{self.job}: {self.total / GIB:.1f} of {self.gpu_bytes / GIB:.0f} GiB per GPU "
                f"x {self.gpus} ({mark}; largest terms GiB: {parts})")


def activation_bytes(shape: Shape, tokens: int, elem: int, checkpointing: bool) -> int:
    """A student's activations for one micro-batch of ``tokens`` tokens."""
    layer = shape.layer_activation_bytes(tokens, elem)
    if not checkpointing:
        return shape.layers * layer
    return shape.layers * tokens * shape.hidden * elem + layer


def loss_bytes(student: Shape, teacher: Shape, tokens: int, chunk: int) -> int:
    """The hidden-state loss: one chunk of vocabulary-wide float32 tensors, the student head's
    float32 gradient, and both models' final hidden states (float32) for the micro-batch."""
    chunk = min(chunk, tokens)
    return (LOSS_COPIES * chunk * max(student.vocab, teacher.vocab) * 4
            + student.vocab * student.hidden * 4
            + 3 * tokens * (student.hidden + teacher.hidden) * 4)


def opd_estimate(job: str, student: Shape, teacher: Shape, opd: dict[str, Any], gpus: int,
                 gpu_bytes: int) -> Estimate:
    tokens = opd["max_tokens_per_micro_batch"]
    if gpus > 1:  # FSDP2: 1/N shards, plus what is gathered for computing
        gathered = student.outer_params + 2 * student.layer_params
        terms = {
            "student weights fp32 (1/N)": 4 * student.params // gpus,
            "student gradients fp32 (1/N)": 4 * student.params // gpus,
            "AdamW moments (1/N)": 8 * student.params // gpus,
            "gathered parameters bf16": 2 * gathered,
            "gathered gradients (bf16 + fp32 reduce)": 6 * gathered,
        }
    else:
        terms = {
            "student weights fp32": 4 * student.params,
            "student gradients fp32": 4 * student.params,
            "AdamW moments": 8 * student.params,
        }
    terms |= {
        "teacher weights bf16": 2 * teacher.params,
        "activations": activation_bytes(student, tokens, 2, opd["activation_checkpointing"]),
        "teacher forward (one layer)": teacher.layer_activation_bytes(tokens, 2),
        "loss": loss_bytes(student, teacher, tokens, opd["chunk_size"] or tokens),
        "overhead": OVERHEAD,
    }
    if opd["generator"] == "vllm":
        terms["vLLM share"] = int(opd["vllm_gpu_memory_utilization"] * gpu_bytes)
    return Estimate(job, gpus, gpu_bytes, terms)


def sft_estimate(job: str, student: Shape, spec: dict[str, Any], gpus: int,
                 gpu_bytes: int) -> Estimate:
    tokens = spec["batch_size"] * spec["max_length"]
    terms = {
        "student weights fp32": 4 * student.params,
        "gradients + AdamW (sharded)": 12 * student.params // max(1, gpus),
        "activations": activation_bytes(student, tokens, 2, False),
        "logits fp32 (+ gradient)": 2 * tokens * student.vocab * 4,
        "overhead": OVERHEAD,
    }
    return Estimate(job, gpus, gpu_bytes, terms)


def kv_bytes_per_token(shape: Shape, elem: int) -> int:
    return 2 * shape.layers * shape.kv_heads * shape.head_dim * elem


def diagnose_estimate(job: str, student: Shape, teacher: Shape, sequences: int, length: int,
                      opd: dict[str, Any], gpus: int, gpu_bytes: int) -> Estimate:
    """Both models in bf16; each generates all ``sequences`` at once with a KV cache of
    ``length`` tokens each, then metrics run micro-batch by micro-batch."""
    tokens = opd["max_tokens_per_micro_batch"]
    biggest = max(student, teacher, key=lambda m: kv_bytes_per_token(m, 2))
    terms = {
        "student weights bf16": 2 * student.params,
        "teacher weights bf16": 2 * teacher.params,
        "generation KV cache bf16": sequences * length * kv_bytes_per_token(biggest, 2),
        "forward (one layer)": max(student, teacher, key=lambda m: m.hidden)
        .layer_activation_bytes(tokens, 2),
        "loss": loss_bytes(student, teacher, tokens, opd["chunk_size"] or tokens),
        "overhead": OVERHEAD,
    }
    return Estimate(job, gpus, gpu_bytes, terms)


def generation_estimate(job: str, model: Shape, share: float, gpus: int,
                        gpu_bytes: int) -> Estimate:
    """vLLM may use ``share`` of each GPU; the weights (bf16, tensor parallel) must leave at
    least a quarter of it for the KV cache."""
    weights = 2 * model.params // max(1, gpus)
    terms = {"vLLM weights bf16 (per GPU)": weights,
             "KV cache (at least 1/4 of the share)": int(share * gpu_bytes / 4),
             "overhead": OVERHEAD}
    return Estimate(job, gpus, gpu_bytes, terms)


def _resources(config: dict[str, Any], rule: str) -> tuple[int, int]:
    """(GPUs, bytes per GPU) of a rule from config ``resources``."""
    merged = {**config["resources"]["default"], **config["resources"]["rules"].get(rule, {})}
    gpus = int(merged.get("gpu") or 0)
    if gpus and not merged.get("gpu_memory_gb"):
        raise PlanError(f"resources: {rule} asks for GPUs; give gpu_memory_gb (in "
                        "resources.default or resources.rules.{rule}) for the memory plan")
    return gpus, int((merged.get("gpu_memory_gb") or 0) * GIB)


def plan(config: dict[str, Any]) -> list[Estimate]:
    """Every GPU job of a validated config with its estimate (CPU jobs are not planned)."""
    models = config["models"]
    shape = {name: model_shape(spec) for name, spec in models.items()
             if spec.get("shape") or (spec.get("path") and
                                      (Path(spec["path"]) / "config.json").exists())}

    def of(name: str, role: str) -> Shape:
        if name not in shape:
            model_shape(models[name])  # raises, naming the model
        return shape[name]

    out: list[Estimate] = []
    gpus, mem = _resources(config, "opd_train")
    if gpus:
        for name, exp in config["experiments"].items():
            opd = {**config["opd"], **exp["opd"]}
            out.append(opd_estimate(f"opd_train {name}", of(exp["student"], "student"),
                                    of(exp["teacher"], "teacher"), opd, gpus, mem))
    gpus, mem = _resources(config, "diagnose_pair")
    if gpus:
        diag = config["diagnose"]
        sequences = diag["n_prompts"] * diag["responses_per_prompt"]
        for name, exp in config["experiments"].items():
            opd = {**config["opd"], **exp["opd"]}
            length = opd["max_prompt_tokens"] + opd["max_response_tokens"]
            out.append(diagnose_estimate(f"diagnose_pair {name}", of(exp["student"], "student"),
                                         of(exp["teacher"], "teacher"), sequences, length, opd,
                                         gpus, mem))
    gpus, mem = _resources(config, "cold_start_sft")
    if gpus:
        for name, spec in config["cold_start"].items():
            out.append(sft_estimate(f"cold_start_sft {name}", of(spec["student"], "student"),
                                    spec, gpus, mem))
    share = VLLM_GENERATION_SHARE
    generating = [("evaluate", m, models.get(m) and m) for m in config["evaluation"]["models"]]
    generating += [("evaluate", e, config["experiments"][e]["student"])
                   for e in config["experiments"]]
    generating += [("teacher_rollouts", r, spec["teacher"])
                   for r, spec in config["rollouts"].items()]
    for s, spec in config["prompt_selection"].items():
        generating += [("select_prompts", s, spec[k]) for k in ("teacher", "student") if spec[k]]
    for rule, job, model in generating:
        gpus, mem = _resources(config, rule)
        if gpus:
            out.append(generation_estimate(f"{rule} {job} ({model})", of(model, "model"),
                                           share, gpus, mem))
    return out


def check(config: dict[str, Any]) -> list[Estimate]:
    """The plan, or PlanError naming every job that does not fit."""
    estimates = plan(config)
    bad = [e for e in estimates if not e.fits]
    if bad:
        raise PlanError("GPU memory plan: these jobs do not fit\n  "
                        + "\n  ".join(e.line() for e in bad))
    return estimates
