"""On-policy distillation objectives and mechanism metrics.

Conventions (docs/design.md): ``student_logits[b, t]`` is the distribution from which
``tokens[b, t]`` was sampled (already shifted); p = softmax(student), q = softmax(teacher),
both over the full vocabulary. For a support set S_t and weights w_t,

    A_t(v) = w_t(v) * (log q_t(v) - log p_t(v))          (detached)
    loss   = -token_mean( sum_{v in S_t} min(r A, clip(r, 1-eps, 1+eps) A) ),
    r_t(v) = exp(log p_t(v) - old log p_t(v))            (ratio 1 when no old log-probs)

Variants: ``sampled`` (S_t = {y_t}, w = 1), ``topk`` (S_t = the student's / teacher's top-k,
their intersection, union or symmetric difference), ``full`` (S_t = the vocabulary). Weights
(as the official implementation): ``student_p`` (p renormalised over S_t), ``teacher_p`` (q
likewise), ``none`` (uniform, 1/|S_t|); on the symmetric difference the official code does not
renormalise (raw p or q, and 1 for ``none``); ``unit`` is weight 1 everywhere. Log-probs are
never renormalised over S_t. With ``full`` + ``student_p`` the value is the token-mean reverse
KL(p || q) and the gradient is exactly its gradient.

``chunk_size`` processes the sequence in slices: teacher log-probs are computed without
autograd and the student's log-softmax is recomputed in the backward pass (activation
checkpointing), so no full [B, T, V] float32 log-softmax copy is kept for either model.

``opd_loss_hidden`` takes final hidden states and the two LM heads instead of logits. Chunk by
chunk of positions it applies each head, computes the metrics, the loss and the gradient of
the loss with respect to that chunk's student logits, and folds it at once into the gradients
of the student's hidden states and head (as fused linear + cross-entropy kernels do); the
backward pass only scales them. No tensor wider than one chunk of the vocabulary ever exists,
and the head's matrix products run once each, as in a plain implementation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

VARIANTS = ("sampled", "topk", "full")
SUPPORTS = ("student", "teacher", "intersection", "union", "symmetric_difference")
WEIGHTINGS = ("student_p", "teacher_p", "none", "unit")
METRICS = ("overlap_ratio", "overlap_advantage", "nonoverlap_advantage", "overlap_logratio",
           "nonoverlap_logratio", "entropy_student", "entropy_teacher", "entropy_gap",
           "shared_mass_student", "shared_mass_teacher", "max_student_p_intersection",
           "teacher_p_at_max_student", "advantage_at_max_student", "max_teacher_p_intersection",
           "student_p_at_max_teacher", "advantage_at_max_teacher", "reverse_kl",
           "shared_mass_at_disagreement")


@dataclass
class _Support:
    idx_BCM: torch.Tensor | None  # vocabulary ids of the support; None = whole vocabulary
    valid_BCM: torch.Tensor | None  # which entries of idx are real members (float 0/1); None = all


def _support(variant: str, support: str, logp_BCV: torch.Tensor, logq_BCV: torch.Tensor,
             tokens_BC: torch.Tensor, top_k: int) -> _Support:
    if variant == "sampled":
        idx = tokens_BC.unsqueeze(-1)
        return _Support(idx, torch.ones_like(idx, dtype=logp_BCV.dtype))
    if variant == "full":
        return _Support(None, None)
    top_s = logp_BCV.topk(top_k, dim=-1).indices
    top_t = logq_BCV.topk(top_k, dim=-1).indices
    if support == "student":
        return _Support(top_s, torch.ones_like(top_s, dtype=logp_BCV.dtype))
    if support == "teacher":
        return _Support(top_t, torch.ones_like(top_t, dtype=logp_BCV.dtype))
    in_t = (top_s.unsqueeze(-1) == top_t.unsqueeze(-2)).any(-1)
    if support == "intersection":
        return _Support(top_s, in_t.to(logp_BCV.dtype))
    in_s = (top_t.unsqueeze(-1) == top_s.unsqueeze(-2)).any(-1)
    idx = torch.cat([top_s, top_t], dim=-1)
    if support == "union":  # the student's top-k plus the teacher's tokens not already in it
        valid = torch.cat([torch.ones_like(in_s), ~in_s], dim=-1)
    else:  # symmetric difference: each side's tokens the other side's top-k lacks
        valid = torch.cat([~in_t, ~in_s], dim=-1)
    return _Support(idx, valid.to(logp_BCV.dtype))


def _take(x_BCV: torch.Tensor, idx_BCM: torch.Tensor | None) -> torch.Tensor:
    return x_BCV if idx_BCM is None else x_BCV.gather(-1, idx_BCM)


def _advantage(logp_g: torch.Tensor, logq_g: torch.Tensor, valid: torch.Tensor | None,
               variant: str, support: str, weighting: str) -> torch.Tensor:
    """A_t(v) = w_t(v) (log q_t(v) - log p_t(v)) on the support. Weights, as the official
    code computes them: ``student_p`` / ``teacher_p`` renormalised over the support (raw p or
    q on the symmetric difference), ``none`` uniform 1/|S_t| (1 on the symmetric difference),
    ``unit`` 1 everywhere."""
    if valid is None:  # the whole vocabulary: probabilities already sum to 1 over it
        if weighting == "unit":
            return logq_g - logp_g
        if weighting == "none":
            return (logq_g - logp_g) / logq_g.shape[-1]
        return (logq_g - logp_g).mul_((logp_g if weighting == "student_p" else logq_g).exp())
    if variant == "sampled" or weighting == "unit":
        w = valid
    elif weighting == "none":
        w = valid if support == "symmetric_difference" else \
            valid / valid.sum(-1, keepdim=True).clamp_min(1.0)
    else:
        base = logp_g if weighting == "student_p" else logq_g
        mass = base.exp() * valid
        w = mass if support == "symmetric_difference" else \
            mass / mass.sum(-1, keepdim=True).clamp_min(1e-30)
    return w * (logq_g - logp_g) * valid


def _surrogate(student_BCV: torch.Tensor, idx_BCM: torch.Tensor | None, adv: torch.Tensor,
               valid: torch.Tensor | None, old_g: torch.Tensor | None, clip: float) -> torch.Tensor:
    """Per-token policy-gradient loss ``-sum_v min(r A, clip(r) A)``, shape [B, C]."""
    logp = _take(torch.log_softmax(student_BCV.float(), dim=-1), idx_BCM)
    if old_g is None:
        # on-policy: r = 1 in value, so clipping never binds and min(rA, clip(r)A) = rA
        surr = torch.exp(logp - logp.detach()) * adv
    else:
        ratio = torch.exp(logp - old_g)
        surr = torch.minimum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
    return -(surr if valid is None else surr * valid).sum(-1)


def _objective(stu: torch.Tensor, logp: torch.Tensor, logq: torch.Tensor, tokens: torch.Tensor,
               old: torch.Tensor | None, mask: torch.Tensor, variant: str, support: str,
               weighting: str, top_k: int, clip: float) -> torch.Tensor:
    """Masked sum of the per-token surrogate over one chunk, given its (detached) log-probs."""
    with torch.no_grad():
        sup = _support(variant, support, logp, logq, tokens, top_k)
        adv = _advantage(_take(logp, sup.idx_BCM), _take(logq, sup.idx_BCM), sup.valid_BCM,
                         variant, support, weighting)
        old_g = None
        if old is not None:
            old = old.float()
            old_g = old.unsqueeze(-1) if old.dim() == 2 else _take(old, sup.idx_BCM)
    per_tok = _surrogate(stu, sup.idx_BCM, adv, sup.valid_BCM, old_g, clip)
    return (per_tok * mask).sum()


def _chunk_objective(stu: torch.Tensor, tea: torch.Tensor, *rest: object) -> torch.Tensor:
    """``_objective`` computing the log-probs itself, so that under activation checkpointing
    the backward pass recomputes them instead of keeping them."""
    with torch.no_grad():
        logq = teacher_logprobs(tea, stu.shape[-1])
        logp = torch.log_softmax(stu.detach().float(), dim=-1)
    return _objective(stu, logp, logq, *rest)


@torch.no_grad()
def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum(a * b, -1) without forming the product (a batched matrix product that ``einsum``
    lays out several times faster on CPU than one of [1, V] x [V, 1] per row)."""
    return torch.einsum("...v,...v->...", a, b)


def _metrics(logp: torch.Tensor, logq: torch.Tensor, top_k: int
             ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Mechanism metrics as the official trainer defines them, on the student's top-k set with
    the training advantage of the official default objective (student support, ``student_p``
    weights): A(v) = p(v) / sum_{top-k} p * (log q(v) - log p(v)).

    Returns per-token values [B, C] (NaN where undefined) and, for metrics pooled over
    (position, token) entries, their per-token entry counts as weights: the overlap-token
    advantage is the mean of A over every entry of the intersection, the non-overlap advantage
    likewise over the student-only entries. Shared mass (the mass p, and q, puts on the
    intersection) and the high-probability alignment metrics (the student's most probable
    token of the intersection: its p, q and A there; likewise from the teacher's side) are
    averaged over positions whose intersection is not empty. ``overlap_logratio`` and
    ``nonoverlap_logratio`` are the unweighted per-position means of log q - log p.

    One metric is ours, not the official trainer's: ``shared_mass_at_disagreement``, the mass p
    puts on the intersection (0 when it is empty) at the positions where the student's and the
    teacher's most probable tokens differ. The mass it misses is what an objective on the
    intersection alone never sees: a student token the teacher's top-k rules out.
    """
    top_s = logp.topk(top_k, dim=-1).indices
    top_t = logq.topk(top_k, dim=-1).indices
    inter = (top_s.unsqueeze(-1) == top_t.unsqueeze(-2)).any(-1)            # [B, C, k]
    interf = inter.float()
    lp_s, lq_s = logp.gather(-1, top_s), logq.gather(-1, top_s)
    p_s, q_s = lp_s.exp(), lq_s.exp()
    ratio_s = lq_s - lp_s                                                    # log q - log p
    adv = p_s / p_s.sum(-1, keepdim=True) * ratio_s                          # training A
    n_in, n_out = interf.sum(-1), (1 - interf).sum(-1)
    nan = torch.tensor(float("nan"), device=logp.device)
    some = n_in > 0

    def on_inter(x: torch.Tensor) -> torch.Tensor:
        return torch.where(some, x, nan)

    def at(idx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return on_inter(x.gather(-1, idx.unsqueeze(-1)).squeeze(-1))

    neg = torch.tensor(-1.0, device=logp.device)
    max_s = torch.where(inter, p_s, neg).argmax(-1)                          # within top-k
    max_t = torch.where(inter, q_s, neg).argmax(-1)
    disagree = top_s[..., 0] != top_t[..., 0]                                # argmaxes differ
    shared_p = (p_s * interf).sum(-1)
    # vocabulary-wide sums as row dot products: one [B, C, V] temporary at a time
    p = logp.exp()
    p_logp, p_logq = _rowdot(p, logp), _rowdot(p, logq)
    del p
    q = logq.exp()
    h_q = -_rowdot(q, logq)
    del q
    h_p = -p_logp
    values = {
        "overlap_ratio": n_in / top_k,
        "overlap_advantage": torch.where(some, (adv * interf).sum(-1) / n_in.clamp_min(1), nan),
        "nonoverlap_advantage": torch.where(n_out > 0, (adv * (1 - interf)).sum(-1)
                                            / n_out.clamp_min(1), nan),
        "overlap_logratio": torch.where(some, (ratio_s * interf).sum(-1) / n_in.clamp_min(1), nan),
        "nonoverlap_logratio": torch.where(n_out > 0, (ratio_s * (1 - interf)).sum(-1)
                                           / n_out.clamp_min(1), nan),
        "entropy_student": h_p,
        "entropy_teacher": h_q,
        "entropy_gap": h_q - h_p,
        "shared_mass_student": on_inter(shared_p),
        "shared_mass_teacher": on_inter((q_s * interf).sum(-1)),
        "max_student_p_intersection": at(max_s, p_s),
        "teacher_p_at_max_student": at(max_s, q_s),
        "advantage_at_max_student": at(max_s, adv),
        "max_teacher_p_intersection": at(max_t, q_s),
        "student_p_at_max_teacher": at(max_t, p_s),
        "advantage_at_max_teacher": at(max_t, adv),
        "reverse_kl": p_logp - p_logq,
        "shared_mass_at_disagreement": torch.where(disagree, shared_p, nan),
    }
    return values, {"overlap_advantage": n_in, "nonoverlap_advantage": n_out}


@dataclass
class _Accumulator:
    """Weighted sums and weights of every metric, overall and per position bucket (weight 1
    per valid token, or the metric's own per-token entry count)."""

    bucket_size: int | None
    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, float] = field(default_factory=dict)
    buckets: dict[int, dict[str, list[float]]] = field(default_factory=dict)

    def add(self, per_tok: dict[str, torch.Tensor], weights: dict[str, torch.Tensor],
            mask_BC: torch.Tensor, start: int, positions: torch.Tensor | None = None) -> None:
        """One chunk's per-token values; its response positions are ``start`` onwards, or
        ``positions`` [B, C] when the chunk gathers tokens from several places. Every metric
        at once: values and weights stacked [M, valid tokens], summed per bucket by index."""
        names = list(per_tok)
        mask = mask_BC.bool()
        v = torch.stack([per_tok[n][mask] for n in names]).double()          # [M, N]
        w = torch.stack([weights[n][mask].double() if n in weights
                         else torch.ones_like(v[0]) for n in names])
        ok = ~torch.isnan(v)
        w = torch.where(ok, w, 0.0)
        vw = torch.where(ok, v, 0.0) * w
        for name, s_, c_ in zip(names, vw.sum(1).tolist(), w.sum(1).tolist()):
            self.sums[name] = self.sums.get(name, 0.0) + s_
            self.counts[name] = self.counts.get(name, 0.0) + c_
        if not self.bucket_size or not v.shape[1]:
            return
        pos = (positions if positions is not None else
               torch.arange(start, start + mask.shape[1], device=mask.device).expand_as(mask))
        ids, inverse = torch.unique(pos[mask] // self.bucket_size, return_inverse=True)
        sums = vw.new_zeros(len(names), len(ids)).index_add_(1, inverse, vw).T.tolist()
        counts = w.new_zeros(len(names), len(ids)).index_add_(1, inverse, w).T.tolist()
        for b, bucket_sums, bucket_counts in zip(ids.tolist(), sums, counts):
            bucket = self.buckets.setdefault(int(b), {})
            for name, s_, c_ in zip(names, bucket_sums, bucket_counts):
                slot = bucket.setdefault(name, [0.0, 0.0])
                slot[0] += s_
                slot[1] += c_

    def result(self) -> dict[str, object]:
        """Each metric's mean, the weights behind it (``weights``, to pool micro-batches and
        processes) and, with a bucket size, the same per bucket of response positions."""
        out: dict[str, object] = {n: (self.sums[n] / self.counts[n] if self.counts[n] else math.nan)
                                  for n in METRICS}
        out["weights"] = {n: self.counts[n] for n in METRICS}
        if self.bucket_size:
            out["buckets"] = [
                {"bucket": b, "start": b * self.bucket_size,
                 "tokens": int(vals["reverse_kl"][1]),
                 **{n: (vals[n][0] / vals[n][1] if vals.get(n, [0, 0])[1] else math.nan)
                    for n in METRICS},
                 "weights": {n: vals.get(n, [0, 0])[1] for n in METRICS}}
                for b, vals in sorted(self.buckets.items())]
        return out


def teacher_logprobs(logits: torch.Tensor, width: int) -> torch.Tensor:
    """The teacher's log-probs over its own full head, on the student's ``width`` entries.

    Checkpoints of one tokenizer may pad their heads differently (R1-Distill-Qwen-7B has
    152,064 rows, the 1.5B 151,936): the teacher normalises over all of its rows, as its own
    sampler does, and the entries beyond the student's head are never produced."""
    return torch.log_softmax(logits.float(), dim=-1)[..., :width]


def _check(variant: str, support: str, weighting: str, top_k: int, V: int,
           old_logprobs: torch.Tensor | None) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if support not in SUPPORTS:
        raise ValueError(f"support must be one of {SUPPORTS}, got {support!r}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if variant == "topk" and top_k > V:
        raise ValueError(f"top_k={top_k} exceeds the vocabulary size {V}")
    if old_logprobs is not None and old_logprobs.dim() == 2 and variant != "sampled":
        raise ValueError("per-token old_logprobs [B, T] only fit variant='sampled'; "
                         "pass [B, T, V] old log-probs for top-k and full")


def weighted_means(parts: list[tuple[dict[str, float], dict[str, float]]]) -> dict[str, float]:
    """Each metric pooled over micro-batches (and processes): its values weighted by what
    stands behind each (valid tokens, or a pooled metric's entries). A metric undefined (NaN)
    in a micro-batch is averaged over the others only; one undefined everywhere is left out."""
    sums: dict[str, list[float]] = {}
    for metrics, weights in parts:
        for k, v in metrics.items():
            if not math.isnan(v) and weights[k] > 0:
                acc = sums.setdefault(k, [0.0, 0.0])
                acc[0] += v * weights[k]
                acc[1] += weights[k]
    return {k: num / den for k, (num, den) in sums.items()}


def opd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tokens: torch.Tensor,
             mask: torch.Tensor, *, variant: str, top_k: int = 16, support: str = "student",
             weighting: str = "student_p", old_logprobs: torch.Tensor | None = None,
             clip_range: float = 0.2, chunk_size: int | None = None,
             bucket_size: int | None = None) -> tuple[torch.Tensor, dict[str, object]]:
    """OPD loss (token mean over ``mask``) and mechanism metrics.

    Shapes: logits [B, T, V], tokens and mask [B, T]. ``old_logprobs``: [B, T] log-probs of
    the sampled tokens (``sampled``) or [B, T, V] full log-probs (any variant), from the
    policy that generated the batch. ``bucket_size`` adds per-position metric buckets.
    """
    if student_logits.shape[:2] != teacher_logits.shape[:2] or \
            teacher_logits.shape[-1] < student_logits.shape[-1]:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} do not fit: the same tokens, and a "
                         "teacher head at least as wide as the student's (one tokenizer)")
    B, T, V = student_logits.shape
    _check(variant, support, weighting, top_k, V, old_logprobs)
    mask_f = mask.to(torch.float32)
    n_tokens = mask_f.sum().clamp_min(1.0)
    step = chunk_size or T
    acc = _Accumulator(bucket_size)
    total = student_logits.new_zeros((), dtype=torch.float32)
    for s in range(0, T, step):
        stu, tea, m = (student_logits[:, s:s + step], teacher_logits[:, s:s + step],
                       mask_f[:, s:s + step])
        old = None if old_logprobs is None else old_logprobs[:, s:s + step]
        with torch.no_grad():
            logq = teacher_logprobs(tea, V)
            logp = torch.log_softmax(stu.detach().float(), dim=-1)
            acc.add(*_metrics(logp, logq, min(top_k, V)), m, s)
        rest = (tokens[:, s:s + step], old, m, variant, support, weighting, top_k, clip_range)
        if chunk_size and stu.requires_grad:
            del logq, logp  # recomputed in the backward pass: nothing vocabulary-wide is kept
            total = total + checkpoint(_chunk_objective, stu, tea, *rest, use_reentrant=False)
        else:
            total = total + _objective(stu, logp, logq, *rest)
            del logq, logp
    return total / n_tokens, acc.result()


@dataclass
class _HiddenRun:
    """What the fused pass needs besides the tensors it differentiates."""
    tokens: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor
    old: torch.Tensor | None
    settings: tuple
    temperature: float
    teacher_temperature: float
    chunk: int
    acc: _Accumulator


def _scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits`` in float32 divided by ``temperature``, without a second copy."""
    out = logits.float()
    return out if temperature == 1.0 else out.div_(temperature)


def _on_policy_chunk(logprobs: list[torch.Tensor], tokens: torch.Tensor,
                     mask: torch.Tensor, variant: str, support: str, weighting: str,
                     top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunk's masked loss sum and its gradient with respect to the student's logits when
    the ratio is 1: loss = -sum_v A(v) log p(v) in gradient, so d/dz = p * sum_v A(v) - A at
    its ids. ``logprobs`` ([log p, log q]) is emptied: log q is freed as soon as the advantage
    exists and log p becomes the gradient in place."""
    logp, logq = logprobs
    logprobs.clear()
    sup = _support(variant, support, logp, logq, tokens, top_k)
    adv = _advantage(_take(logp, sup.idx_BCM), _take(logq, sup.idx_BCM), sup.valid_BCM,
                     variant, support, weighting)
    del logq
    adv.mul_(mask.unsqueeze(-1))
    dz = logp.exp_().mul_(adv.sum(-1, keepdim=True))
    if sup.idx_BCM is None:
        dz.sub_(adv)
    else:
        dz.scatter_add_(-1, sup.idx_BCM, -adv)
    return -adv.sum(), dz


class _FusedHeads(torch.autograd.Function):
    """Loss from hidden states, its gradients computed chunk by chunk in the forward pass."""

    @staticmethod
    def forward(ctx, s_h, s_w, s_b, t_h, t_w, t_b, run: _HiddenRun):  # type: ignore[override]
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.zeros_like(s_h) if need_h else None
        grad_w = torch.zeros_like(s_w) if need_w else None
        grad_b = torch.zeros_like(s_b) if need_b else None
        total = torch.zeros((), dtype=torch.float64, device=s_h.device)
        T, top_k = s_h.shape[1], run.settings[-2]
        for s in range(0, T, run.chunk):
            h, m = s_h[:, s:s + run.chunk], run.mask[:, s:s + run.chunk]
            logq = teacher_logprobs(
                _scaled(F.linear(t_h[:, s:s + run.chunk], t_w, t_b), run.teacher_temperature),
                s_w.shape[0])
            z = _scaled(F.linear(h, s_w, s_b), run.temperature)
            logp = torch.log_softmax(z, dim=-1)
            if run.old is None:
                del z   # the closed-form gradient below needs only the log-probs
            run.acc.add(*_metrics(logp, logq, min(top_k, logp.shape[-1])), m, s,
                        run.positions[:, s:s + run.chunk])
            tokens = run.tokens[:, s:s + run.chunk]
            if run.old is None:  # on-policy: the gradient in closed form, no autograd graph
                logprobs = [logp, logq]
                del logp, logq   # the helper frees log q early and turns log p into dz
                part, dz = _on_policy_chunk(logprobs, tokens, m, *run.settings[:4])
            else:
                z.requires_grad_(True)
                with torch.enable_grad():
                    part = _objective(z, logp, logq, tokens, run.old[:, s:s + run.chunk], m,
                                      *run.settings)
                del logp, logq
                (dz,) = torch.autograd.grad(part, z)
                del z
            if need_h or need_w or need_b:
                dz = (dz / run.temperature).to(h.dtype)   # through z = logits / temperature
                if need_h:
                    grad_h[:, s:s + run.chunk] = dz @ s_w
                if need_w:  # in place: no second [V, H] buffer
                    grad_w.addmm_(dz.flatten(0, 1).T.to(grad_w.dtype),
                                  h.flatten(0, 1).to(grad_w.dtype))
                if need_b:
                    grad_b += dz.sum((0, 1)).to(grad_b.dtype)
            total += part.detach().double()
            del dz, part
        n_tokens = run.mask.sum().clamp_min(1.0)
        # held on ctx, not saved for backward: a saved tensor is referenced twice, and autograd
        # would copy the [V, H] head gradient instead of handing it to .grad
        ctx.grads = [grad_h, grad_w, grad_b]
        ctx.n_tokens = n_tokens
        return (total / n_tokens).float()

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        grads, ctx.grads = ctx.grads, None   # one backward pass: built for it, scaled in place
        scale = (grad_out / ctx.n_tokens).float()
        for g in grads:
            if g is not None:
                g.mul_(scale.to(g.dtype))
        return (*grads, None, None, None, None)


def opd_loss_hidden(student_hidden: torch.Tensor, student_head: torch.nn.Module,
                    teacher_hidden: torch.Tensor, teacher_head: torch.nn.Module,
                    tokens: torch.Tensor, mask: torch.Tensor, *, variant: str, top_k: int = 16,
                    support: str = "student", weighting: str = "student_p",
                    temperature: float = 1.0, teacher_temperature: float = 1.0,
                    old_logprobs: torch.Tensor | None = None, clip_range: float = 0.2,
                    chunk_size: int | None = 256, bucket_size: int | None = None,
                    ) -> tuple[torch.Tensor, dict[str, object]]:
    """``opd_loss`` of the logits ``student_head(student_hidden) / temperature`` and
    ``teacher_head(teacher_hidden) / teacher_temperature``, without forming them whole.

    Shapes: hidden states [B, T, H] (the teacher's width may differ), heads are linear layers
    onto the shared vocabulary. Gradients reach the student's hidden states and head (weight
    and bias); the teacher side is never differentiated."""
    V = student_head.weight.shape[0]
    if teacher_head.weight.shape[0] < V:
        raise ValueError(f"the teacher's head ({teacher_head.weight.shape[0]} entries) is "
                         f"narrower than the student's ({V}): the teacher must cover the "
                         "student's vocabulary")
    _check(variant, support, weighting, top_k, V, old_logprobs)
    # only the response tokens: [1, N, ...] in order, each with its response position, so
    # padding costs nothing and chunks hold chunk_size real tokens
    keep = mask.bool()
    B, T = mask.shape
    positions = torch.arange(T, device=mask.device).expand(B, T)[keep].unsqueeze(0)
    n = positions.shape[1]
    old = None if old_logprobs is None else old_logprobs[keep].unsqueeze(0)
    acc = _Accumulator(bucket_size)
    run = _HiddenRun(tokens[keep].unsqueeze(0), mask.new_ones((1, n), dtype=torch.float32),
                     positions, old, (variant, support, weighting, top_k, clip_range),
                     temperature, teacher_temperature, chunk_size or max(1, n), acc)
    loss = _FusedHeads.apply(student_hidden[keep].unsqueeze(0), student_head.weight,
                             student_head.bias, teacher_hidden[keep].unsqueeze(0).detach(),
                             teacher_head.weight.detach(),
                             None if teacher_head.bias is None else teacher_head.bias.detach(),
                             run)
    return loss, acc.result()
