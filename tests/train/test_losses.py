"""OPD loss and metrics against a plain, loop-based re-derivation on small tensors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from opd.train.losses import METRICS, opd_loss

B, T, V, K = 2, 5, 11, 4


def _log_softmax(x: torch.Tensor) -> torch.Tensor:
    """Per-position log-softmax written out by hand (float64)."""
    e = torch.exp(x - x.max())
    return torch.log(e / e.sum())


def _topk(values: list[float], k: int) -> list[int]:
    return sorted(range(len(values)), key=lambda v: -values[v])[:k]


def naive(student, teacher, tokens, mask, variant, support="student", weighting="student_p",
          old=None, clip=0.2, k=K):
    """Loop-based reference: one position at a time, one support token at a time."""
    total, n = 0.0, 0.0
    for b, t in itertools.product(range(student.shape[0]), range(student.shape[1])):
        if not mask[b, t]:
            continue
        lp = _log_softmax(student[b, t].double())
        lq = _log_softmax(teacher[b, t].double())
        lp_d = lp.detach()
        s_top = _topk(lp_d.tolist(), k)
        t_top = _topk(lq.tolist(), k)
        if variant == "sampled":
            S = [int(tokens[b, t])]
        elif variant == "full":
            S = list(range(student.shape[-1]))
        elif support == "student":
            S = s_top
        elif support == "teacher":
            S = t_top
        elif support == "intersection":
            S = [v for v in s_top if v in t_top]
        elif support == "union":
            S = s_top + [v for v in t_top if v not in s_top]
        else:  # symmetric difference
            S = [v for v in s_top if v not in t_top] + [v for v in t_top if v not in s_top]
        # the official weights: renormalised over S (raw on the symmetric difference)
        raw = support == "symmetric_difference" and variant == "topk"
        if variant == "sampled" or weighting == "unit":
            w = {v: 1.0 for v in S}
        elif weighting == "none":
            w = {v: 1.0 if raw else 1.0 / len(S) for v in S}
        else:
            base = lp_d if weighting == "student_p" else lq
            z = 1.0 if raw else sum(math.exp(base[v]) for v in S)
            w = {v: math.exp(base[v]) / z for v in S}
        term = 0.0
        for v in S:
            a = w[v] * float(lq[v] - lp_d[v])
            if old is None:
                ref = lp_d[v]
            elif old.dim() == 2:
                ref = old[b, t].double()
            else:
                ref = old[b, t, v].double()
            r = torch.exp(lp[v] - ref)
            term = term + torch.minimum(r * a, torch.clamp(r, 1 - clip, 1 + clip) * a)
        total = total - term
        n += 1
    return total / n


def naive_metrics(student, teacher, mask, k=K):
    """The official trainer's mechanism metrics (ray_trainer.py, student support, student_p
    weights) and our shared mass where the two argmaxes differ, one position and one token at
    a time: pooled metrics sum over every (position, token) entry, the others average over the
    positions where they are defined."""
    sums = {m: 0.0 for m in METRICS}
    counts = {m: 0 for m in METRICS}

    def add(m, value, weight=1):
        sums[m] += value * weight
        counts[m] += weight

    for b, t in itertools.product(range(student.shape[0]), range(student.shape[1])):
        if not mask[b, t]:
            continue
        lp = _log_softmax(student[b, t].double()).tolist()
        lq = _log_softmax(teacher[b, t].double()).tolist()
        p = [math.exp(x) for x in lp]
        q = [math.exp(x) for x in lq]
        s_top, t_top = _topk(lp, k), _topk(lq, k)
        z = sum(p[v] for v in s_top)
        adv = {v: p[v] / z * (lq[v] - lp[v]) for v in s_top}        # the training advantage
        inter = [v for v in s_top if v in t_top]
        outer = [v for v in s_top if v not in t_top]
        add("overlap_ratio", len(inter) / k)
        h_p = -sum(pi * li for pi, li in zip(p, lp))
        h_q = -sum(qi * li for qi, li in zip(q, lq))
        add("entropy_student", h_p)
        add("entropy_teacher", h_q)
        add("entropy_gap", h_q - h_p)
        add("reverse_kl", sum(pi * (a - c) for pi, a, c in zip(p, lp, lq)))
        for v in inter:                                              # pooled over entries
            add("overlap_advantage", adv[v])
        for v in outer:
            add("nonoverlap_advantage", adv[v])
        if inter:
            add("overlap_logratio", sum(lq[v] - lp[v] for v in inter) / len(inter))
            add("shared_mass_student", sum(p[v] for v in inter))
            add("shared_mass_teacher", sum(q[v] for v in inter))
            top_p = max(inter, key=lambda v: p[v])
            top_q = max(inter, key=lambda v: q[v])
            add("max_student_p_intersection", p[top_p])
            add("teacher_p_at_max_student", q[top_p])
            add("advantage_at_max_student", adv[top_p])
            add("max_teacher_p_intersection", q[top_q])
            add("student_p_at_max_teacher", p[top_q])
            add("advantage_at_max_teacher", adv[top_q])
        if outer:
            add("nonoverlap_logratio", sum(lq[v] - lp[v] for v in outer) / len(outer))
        if s_top[0] != t_top[0]:                                     # ours: argmaxes differ
            add("shared_mass_at_disagreement", sum(p[v] for v in inter))
    return {m: sums[m] / counts[m] if counts[m] else float("nan") for m in METRICS}


@pytest.fixture()
def batch():
    g = torch.Generator().manual_seed(0)
    student = (torch.randn(B, T, V, generator=g) * 2).requires_grad_(True)
    # a teacher partly agreeing with the student, so overlaps are neither 0 nor 1
    teacher = student.detach() + torch.randn(B, T, V, generator=g) * 2
    tokens = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T)
    mask[1, -2:] = 0
    return student, teacher, tokens, mask


def _check(student, teacher, tokens, mask, **kw):
    loss, _ = opd_loss(student, teacher, tokens, mask, top_k=K, **kw)
    (g,) = torch.autograd.grad(loss, student)
    s2 = student.detach().clone().requires_grad_(True)
    ref = naive(s2, teacher, tokens, mask, kw["variant"], kw.get("support", "student"),
                kw.get("weighting", "student_p"), kw.get("old_logprobs"), kw.get("clip_range", 0.2))
    (g_ref,) = torch.autograd.grad(ref, s2)
    assert loss.item() == pytest.approx(ref.item(), abs=1e-5)
    assert torch.allclose(g.double(), g_ref.double(), atol=1e-6)


@pytest.mark.parametrize("variant, support, weighting", [
    ("sampled", "student", "student_p"),
    *[("topk", s, w) for s in ("student", "teacher", "intersection", "union",
                               "symmetric_difference")
      for w in ("student_p", "teacher_p", "none", "unit")],
    *[("full", "student", w) for w in ("student_p", "teacher_p", "none", "unit")],
])
def test_values_and_gradients_match_reference(batch, variant, support, weighting):
    _check(*batch, variant=variant, support=support, weighting=weighting)


@pytest.mark.parametrize("variant", ["sampled", "topk", "full"])
def test_ppo_clipping_against_old_logprobs(batch, variant):
    student, teacher, tokens, mask = batch
    g = torch.Generator().manual_seed(1)
    old_full = torch.log_softmax(student.detach() + torch.randn(B, T, V, generator=g) * 0.5, -1)
    _check(student, teacher, tokens, mask, variant=variant, old_logprobs=old_full, clip_range=0.1)
    if variant == "sampled":
        old_tok = old_full.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        _check(student, teacher, tokens, mask, variant=variant, old_logprobs=old_tok,
               clip_range=0.1)


def test_full_vocab_is_exact_reverse_kl(batch):
    student, teacher, tokens, mask = batch
    loss, metrics = opd_loss(student, teacher, tokens, mask, variant="full")
    (g,) = torch.autograd.grad(loss, student)
    s2 = student.detach().clone().requires_grad_(True)
    p, lp, lq = torch.softmax(s2, -1), torch.log_softmax(s2, -1), torch.log_softmax(teacher, -1)
    kl = ((p * (lp - lq)).sum(-1) * mask).sum() / mask.sum()
    (g_ref,) = torch.autograd.grad(kl, s2)
    assert loss.item() == pytest.approx(kl.item(), abs=1e-6)
    assert metrics["reverse_kl"] == pytest.approx(kl.item(), abs=1e-6)
    assert torch.allclose(g, g_ref, atol=1e-6)


def test_metrics_match_reference(batch):
    student, teacher, tokens, mask = batch
    _, metrics = opd_loss(student, teacher, tokens, mask, variant="topk", top_k=K)
    ref = naive_metrics(student.detach(), teacher, mask)
    for m in METRICS:
        assert metrics[m] == pytest.approx(ref[m], abs=1e-5), m
    assert 0 < metrics["overlap_ratio"] < 1
    # the weights behind each mean: valid tokens, or a pooled metric's entries
    assert metrics["weights"]["reverse_kl"] == mask.sum()
    assert metrics["weights"]["overlap_advantage"] == pytest.approx(
        metrics["overlap_ratio"] * K * float(mask.sum()))


def test_shared_mass_at_disagreement_sees_only_positions_whose_top_tokens_differ():
    """Hand-made logits, k 2. Position 0: the student's top token (0) is one the teacher's
    top-2 (1, 2) lacks, so the intersection {1} holds only the student's p(1). Position 1: both
    put token 3 first, so the position does not count."""
    student = torch.tensor([[[4.0, 2.0, 0.0, -1.0], [0.0, 1.0, 0.0, 5.0]]])
    teacher = torch.tensor([[[-6.0, 3.0, 2.0, 0.0], [0.0, 2.0, 0.0, 6.0]]])
    _, metrics = opd_loss(student, teacher, torch.zeros(1, 2, dtype=torch.long),
                          torch.ones(1, 2), variant="topk", top_k=2)
    p = torch.softmax(student[0, 0], -1)
    assert metrics["shared_mass_at_disagreement"] == pytest.approx(p[1].item(), abs=1e-6)
    assert metrics["weights"]["shared_mass_at_disagreement"] == 1


def test_identical_models_overlap_fully(batch):
    student, _, tokens, mask = batch
    loss, metrics = opd_loss(student, student.detach(), tokens, mask, variant="topk", top_k=K)
    assert metrics["overlap_ratio"] == 1.0 and abs(metrics["reverse_kl"]) < 1e-6
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("variant", ["sampled", "topk", "full"])
def test_chunked_equals_unchunked(batch, variant):
    student, teacher, tokens, mask = batch
    loss1, m1 = opd_loss(student, teacher, tokens, mask, variant=variant, top_k=K, bucket_size=2)
    (g1,) = torch.autograd.grad(loss1, student)
    loss2, m2 = opd_loss(student, teacher, tokens, mask, variant=variant, top_k=K, bucket_size=2,
                         chunk_size=2)
    (g2,) = torch.autograd.grad(loss2, student)
    assert loss1.item() == pytest.approx(loss2.item(), abs=1e-6)
    assert torch.allclose(g1, g2, atol=1e-7)
    for m in METRICS:
        assert m1[m] == pytest.approx(m2[m], abs=1e-6)
    for b1, b2 in zip(m1["buckets"], m2["buckets"]):
        assert b1["tokens"] == b2["tokens"]
        for m in METRICS:
            assert b1[m] == pytest.approx(b2[m], abs=1e-6, nan_ok=True)


def test_position_buckets_match_per_bucket_reference(batch):
    student, teacher, tokens, mask = batch
    _, metrics = opd_loss(student, teacher, tokens, mask, variant="topk", top_k=K, bucket_size=2)
    buckets = metrics["buckets"]
    assert [b["start"] for b in buckets] == [0, 2, 4]
    for b in buckets:
        sl = slice(b["start"], b["start"] + 2)
        ref = naive_metrics(student.detach()[:, sl], teacher[:, sl], mask[:, sl])
        assert b["tokens"] == int(mask[:, sl].sum())
        for m in METRICS:
            assert b[m] == pytest.approx(ref[m], abs=1e-5, nan_ok=True), m


def test_bad_arguments():
    x = torch.zeros(1, 2, 5)
    tok, m = torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2)
    with pytest.raises(ValueError, match="variant"):
        opd_loss(x, x, tok, m, variant="forward")
    with pytest.raises(ValueError, match="at least as wide"):
        opd_loss(torch.zeros(1, 2, 6), x, tok, m, variant="topk", top_k=2)
    with pytest.raises(ValueError, match="do not fit"):
        opd_loss(x, torch.zeros(1, 3, 5), tok, m, variant="topk", top_k=2)
    with pytest.raises(ValueError, match="top_k"):
        opd_loss(x, x, tok, m, variant="topk", top_k=6)
