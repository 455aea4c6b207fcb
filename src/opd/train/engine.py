"""The generation engine shared by teacher rollouts, evaluation and OPD validation.

Two back ends behind one call, ``engine.generate(prompts, sampling)``:
- ``transformers``: batched ``generate`` with a KV cache and left padding (CPU or one GPU);
- ``vllm``: the back end of the paper runs (tensor parallel on GPUs); imported only when
  chosen, so the package works without it. The CPU build (``vllm-cpu``, installed by the
  test target in an environment of its own) runs the same calls on a machine without a GPU.

``engine: auto`` picks vLLM when a CUDA device is present and vLLM is installed, and says so;
on a CPU it keeps ``transformers`` (``make bench-vllm`` measures both there).
"""

from __future__ import annotations

from dataclasses import dataclass

import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Iterable, Iterator
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
                "(pip install -e '.[gpu]') or use the 'envs/vllm.yaml' conda env (on a CPU: "
                "make vllm-env), or set the engine to 'transformers'")
        if not has_cuda and not vllm_cpu_build():
            raise EngineUnavailable(
                "engine 'vllm' needs a CUDA GPU and none is visible (the installed vLLM is a "
                "GPU build); set the engine to 'transformers' to generate on CPU, or use the "
                "CPU build (make vllm-env)")
        chosen, why = "vllm", "as configured" + ("" if has_cuda else ", CPU build")
    elif requested == "auto":
        chosen = "vllm" if has_vllm and has_cuda else "transformers"
        why = ("auto: CUDA and vLLM available" if chosen == "vllm"
               else f"auto: {'no CUDA device' if not has_cuda else 'vLLM not installed'}")
    else:
        chosen, why = requested, "as configured"
    print(f"generation engine: {chosen} ({why})", file=sys.stderr)
    return chosen


def vllm_cpu_build() -> bool:
    """Whether the installed vLLM is its CPU build (the ``vllm-cpu`` distribution)."""
    try:
        importlib.metadata.distribution("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def vllm_dtype() -> str:
    """bf16 on GPUs (as the paper runs); on a CPU the float32 the tiny models are kept in, so
    that vLLM and ``transformers`` compute the same numbers."""
    return "bfloat16" if torch.cuda.is_available() else "float32"


class TransformersEngine:
    name = "transformers"

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 64):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    def generate(self, prompts: list[str], sampling: Sampling,
                 progress: bool = True) -> list[list[Completion]]:
        self.model.eval()
        return generate(self.model, self.tokenizer, prompts, sampling,
                        batch_size=self.batch_size, progress=progress)


def vllm_requests(sampling: Sampling, count: int, n: int) -> list[Any]:
    """vLLM sampling parameters for ``count`` prompts, ``n`` samples each, with a seed of its
    own per prompt (derived from ``sampling.seed``), so that each prompt has a random stream of
    its own and a chunk or step sampled again (after a resume) draws the same tokens."""
    from vllm import SamplingParams

    return [SamplingParams(n=n, temperature=sampling.temperature, top_p=sampling.top_p,
                           max_tokens=sampling.max_new_tokens,
                           seed=(sampling.seed * 1_000_003 + i) % 2**62)
            for i in range(count)]


class VLLMEngine:
    """vLLM behind the engine interface. On a GPU: bf16, tensor parallel over the job's GPUs.
    On a CPU (the ``vllm-cpu`` build): float32, eager mode and unsplit prefills, with the
    engine and its one worker in this process (no compile step, no worker start-up), a KV
    cache of ``VLLM_CPU_KVCACHE_SPACE`` GiB (1 unless set) and at most ``CPU_MEMORY_SHARE``
    of memory."""

    name = "vllm"
    CPU_MEMORY_SHARE = 0.3  # vLLM refuses to start on CPU when less than this share is free

    def __init__(self, model: ModelRef, tensor_parallel_size: int = 1, seed: int = 0,
                 dtype: str | None = None, max_model_len: int | None = None,
                 gpu_memory_utilization: float = VLLM_GENERATION_SHARE,
                 executor: str | None = None):
        on_gpu = torch.cuda.is_available()
        extra: dict[str, Any] = {}
        if not on_gpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            gpu_memory_utilization = min(gpu_memory_utilization, self.CPU_MEMORY_SHARE)
            extra["enforce_eager"] = True
            # whole prompts per step: a seeded request caught in a split prefill fails on CPU
            # ("CPU Generator does not use offset")
            extra["enable_chunked_prefill"] = False
            if tensor_parallel_size == 1 and executor is None:
                executor = "uni"
        if executor in ("uni", "external_launcher"):
            # the engine runs in this process, so that weights reach it without serialisation
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        if executor is not None:
            extra["distributed_executor_backend"] = executor
        from vllm import LLM  # optional dependency, imported only here

        self.llm = LLM(model=model.checked().location, revision=model.revision,
                       tokenizer_revision=model.revision,
                       tensor_parallel_size=tensor_parallel_size, seed=seed,
                       dtype=dtype or vllm_dtype(), max_model_len=max_model_len,
                       trust_remote_code=False,
                       gpu_memory_utilization=gpu_memory_utilization, **extra)

    def generate(self, prompts: list[str], sampling: Sampling,
                 progress: bool = True) -> list[list[Completion]]:
        outputs = self.llm.generate(prompts, vllm_requests(sampling, len(prompts), sampling.n),
                                    use_tqdm=progress)
        return [[Completion(o.text, "length" if o.finish_reason == "length" else "stop",
                            len(out.prompt_token_ids), len(o.token_ids)) for o in out.outputs]
                for out in outputs]


def with_tied_head(parameters: Iterable[tuple[str, torch.Tensor]],
                   tied: bool) -> Iterator[tuple[str, torch.Tensor]]:
    """The parameters, followed by ``lm_head.weight`` (the input embedding) for a model whose
    head is tied to it: ``named_parameters`` lists a tied tensor once, and vLLM's reload needs
    the head by name."""
    embedding = None
    for name, tensor in parameters:
        if name.endswith("embed_tokens.weight"):
            embedding = tensor
        yield name, tensor
    if tied and embedding is not None:
        yield "lm_head.weight", embedding


class VLLMRollouts:
    """The OPD student as a colocated vLLM generator, kept in step with the trained weights.

    The engine runs inside the training process (one per process, on its GPU; with several
    processes through vLLM's ``external_launcher``), so ``sync`` hands it the student's
    tensors directly. ``sample`` returns token ids laid out as ``generation.sample_batch``
    does, each rollout seeded from ``sampling.seed``; ``sync`` reloads the engine in place
    after every optimizer step (strictly on-policy: each batch is sampled from the weights
    that are trained on it).
    """

    name = "vllm"

    def __init__(self, model: ModelRef, seed: int, gpu_memory_utilization: float,
                 max_model_len: int | None = None):
        import torch.distributed as dist

        several = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.engine = VLLMEngine(model, tensor_parallel_size=1, seed=seed,
                                 max_model_len=max_model_len,
                                 gpu_memory_utilization=gpu_memory_utilization,
                                 executor="external_launcher" if several else "uni")
        config = self.engine.llm.llm_engine.model_config.hf_config
        self.tied = bool(getattr(config, "tie_word_embeddings", False))

    def sample(self, prompts: list[str], sampling: Sampling, tokenizer: Any,
               device: Any) -> Any:
        from opd.train.generation import rollout_batch

        outs = self.engine.llm.generate(prompts, vllm_requests(sampling, len(prompts), 1),
                                        use_tqdm=False)
        return rollout_batch([list(o.prompt_token_ids) for o in outs],
                             [list(o.outputs[0].token_ids) for o in outs],
                             ["length" if o.outputs[0].finish_reason == "length" else "stop"
                              for o in outs], tokenizer, device)

    def sync(self, parameters: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Reload the engine in place from the student's full parameters (in the checkpoint's
        names), e.g. ``opd.train.parallel.full_parameters(student)``, consumed one tensor at a
        time; then drop cached prompt states, computed with the old weights."""
        weights = ((name, p.detach()) for name, p in with_tied_head(parameters, self.tied))
        self.engine.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.engine.llm.reset_prefix_cache()


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

    chosen = resolve(requested)  # a back end that cannot run stops before anything loads
    ref = ModelRef.of(model)
    tokenizer = load_tokenizer(ref)
    if chosen == "vllm":
        return VLLMEngine(ref, tensor_parallel_size, seed,
                          max_model_len=max_model_len), tokenizer
    model = load_model(ref, device())
    if device() == "cuda":
        model = model.to(torch.bfloat16)
    return TransformersEngine(model, tokenizer, batch_size), tokenizer
