"""The generation engine shared by teacher rollouts, evaluation and OPD validation.

Two back ends behind one call, ``engine.generate(prompts, sampling)``:
- ``transformers``: batched ``generate`` with a KV cache and left padding (CPU or one GPU);
- ``vllm``: the GPU back end of the paper runs (tensor parallel); imported only when chosen,
  so the package works without the optional ``gpu`` extra.

``engine: auto`` picks vLLM when a CUDA device is present and vLLM is installed, and says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import importlib.util
import sys
from collections.abc import Iterable
from typing import Any, Protocol

import torch

from opd.core.models import ModelRef
from opd.train.generation import Completion, Sampling, generate
from opd.core.plan import VLLM_GENERATION_SHARE

ENGINES = ("auto", "transformers", "vllm")


class EngineUnavailable(RuntimeError):
    """The requested generation back end cannot run on this machine."""


class Engine(Protocol):
    name: str

    def generate(self, prompts: list[str], sampling: Sampling,
                 progress: bool = True) -> list[list[Completion]]: ...


def resolve(requested: str) -> str:
    """The back end to use for ``requested`` (auto / transformers / vllm), or a clear error."""
    if requested not in ENGINES:
        raise EngineUnavailable(f"unknown generation engine {requested!r}; use one of {ENGINES}")
    has_vllm = importlib.util.find_spec("vllm") is not None
    has_cuda = torch.cuda.is_available()
    if requested == "vllm":
        if not has_vllm:
            raise EngineUnavailable(
                "engine 'vllm' was requested but vLLM is not installed; install the GPU extra "
                "(pip install -e '.[gpu]') or use the 'envs/vllm.yaml' conda env, or set the "
                "engine to 'transformers'")
        if not has_cuda:
            raise EngineUnavailable("engine 'vllm' needs a CUDA GPU and none is visible; set the "
                                    "engine to 'transformers' to generate on CPU")
        return "vllm"
    if requested == "auto":
        chosen = "vllm" if has_vllm and has_cuda else "transformers"
        why = ("CUDA and vLLM available" if chosen == "vllm"
               else f"{'no CUDA device' if not has_cuda else 'vLLM not installed'}")
        print(f"generation engine: {chosen} ({why})", file=sys.stderr)
        return chosen
    return requested


class TransformersEngine:
    name = "transformers"

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 64):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    def generate(self, prompts: list[str], sampling: Sampling,
                 progress: bool = True) -> list[list[Completion]]:
        self.model.eval()
        return generate(self.model, self.tokenizer, prompts, sampling,
                        batch_size=self.batch_size, progress=progress)


class VLLMEngine:
    name = "vllm"

    def __init__(self, model: ModelRef, tensor_parallel_size: int = 1, seed: int = 0,
                 dtype: str = "bfloat16", max_model_len: int | None = None,
                 gpu_memory_utilization: float = VLLM_GENERATION_SHARE):
        from vllm import LLM  # optional GPU dependency, imported only here

        self.llm = LLM(model=model.checked().location, revision=model.revision,
                       tokenizer_revision=model.revision,
                       tensor_parallel_size=tensor_parallel_size, seed=seed,
                       dtype=dtype, max_model_len=max_model_len, trust_remote_code=False,
                       gpu_memory_utilization=gpu_memory_utilization)

    def generate(self, prompts: list[str], sampling: Sampling,
                 progress: bool = True) -> list[list[Completion]]:
        from vllm import SamplingParams

        params = SamplingParams(n=sampling.n, temperature=sampling.temperature,
                                top_p=sampling.top_p, max_tokens=sampling.max_new_tokens,
                                seed=sampling.seed)
        outputs = self.llm.generate(prompts, params, use_tqdm=progress)
        return [[Completion(o.text, "length" if o.finish_reason == "length" else "stop",
                            len(out.prompt_token_ids), len(o.token_ids)) for o in out.outputs]
                for out in outputs]


def _load_weights_on_worker(worker: Any, weights: list[tuple[str, Any]]) -> None:
    """Runs inside each vLLM worker: the model's own loader shards full tensors for its rank."""
    worker.model_runner.model.load_weights(weights=weights)


class VLLMRollouts:
    """The OPD student as a colocated vLLM generator, kept in step with the trained weights.

    ``sample`` returns token ids laid out as ``generation.sample_batch`` does; ``sync`` copies
    the current student weights into the engine after every optimizer step (strictly
    on-policy: each batch is sampled from the weights that are trained on it).
    """

    name = "vllm"

    def __init__(self, model: ModelRef, seed: int, gpu_memory_utilization: float,
                 max_model_len: int | None = None):
        self.engine = VLLMEngine(model, tensor_parallel_size=1, seed=seed,
                                 max_model_len=max_model_len,
                                 gpu_memory_utilization=gpu_memory_utilization)

    def sample(self, prompts: list[str], sampling: Sampling, tokenizer: Any,
               device: Any) -> Any:
        from vllm import SamplingParams

        from opd.train.generation import rollout_batch

        params = SamplingParams(n=1, temperature=sampling.temperature, top_p=sampling.top_p,
                                max_tokens=sampling.max_new_tokens, seed=None)
        outs = self.engine.llm.generate(prompts, params, use_tqdm=False)
        return rollout_batch([list(o.prompt_token_ids) for o in outs],
                             [list(o.outputs[0].token_ids) for o in outs],
                             ["length" if o.outputs[0].finish_reason == "length" else "stop"
                              for o in outs], tokenizer, device)

    def sync(self, parameters: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Reload the engine from the student's (full) parameters, e.g.
        ``opd.train.parallel.full_parameters(student)``."""
        weights = [(name, p.detach().to("cpu", copy=True)) for name, p in parameters]
        self.engine.llm.collective_rpc(_load_weights_on_worker, args=(weights,))
        reset = getattr(self.engine.llm, "reset_prefix_cache", None)
        if reset is not None:  # cached prompt states were computed with the old weights
            reset()


@dataclass
class EngineParams:
    """The generation engine settings a generating stage receives (config ``generation``)."""
    engine: str
    tensor_parallel_size: int
    batch_size: int


def make_engine(requested: str, model: ModelRef | str, *, batch_size: int = 64,
                tensor_parallel_size: int = 1, seed: int = 0,
                max_model_len: int | None = None) -> tuple[Engine, Any]:
    """(engine, tokenizer) for a model directory or hub id (at its revision pin)."""
    from opd.train.pair import device, load_model, load_tokenizer

    ref = ModelRef.of(model)
    tokenizer = load_tokenizer(ref)
    if resolve(requested) == "vllm":
        return VLLMEngine(ref, tensor_parallel_size, seed,
                          max_model_len=max_model_len), tokenizer
    model = load_model(ref, device())
    if device() == "cuda":
        model = model.to(torch.bfloat16)
    return TransformersEngine(model, tokenizer, batch_size), tokenizer
