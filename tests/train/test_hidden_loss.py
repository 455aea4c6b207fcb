"""The OPD loss from hidden states equals the loss on logits, and never forms [B, T, V]."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from opd.train.losses import opd_loss, opd_loss_hidden

B, T, H, HT, V = 2, 29, 12, 20, 64


def _case(seed: int, bias: bool = True):
    gen = torch.Generator().manual_seed(seed)
    s_h = torch.randn(B, T, H, generator=gen).requires_grad_(True)
    t_h = torch.randn(B, T, HT, generator=gen)
    torch.manual_seed(seed)
    s_head, t_head = torch.nn.Linear(H, V, bias=bias), torch.nn.Linear(HT, V, bias=not bias)
    tokens = torch.randint(0, V, (B, T), generator=gen)
    mask = (torch.rand(B, T, generator=gen) > 0.25).float()
    mask[1, -5:] = 0  # right padding
    return s_h, s_head, t_h, t_head, tokens, mask


def _grads(loss, s_h, s_head):
    params = [s_h, s_head.weight] + ([s_head.bias] if s_head.bias is not None else [])
    return torch.autograd.grad(loss, params)


@pytest.mark.parametrize("variant, support, weighting", [
    ("full", "student", "student_p"), ("full", "student", "teacher_p"),
    ("topk", "student", "student_p"), ("topk", "teacher", "none"),
    ("topk", "intersection", "student_p"), ("topk", "union", "teacher_p"),
    ("topk", "symmetric_difference", "none"), ("topk", "student", "unit"),
    ("sampled", "student", "student_p"),
])
@pytest.mark.parametrize("chunk", [5, None])
def test_equals_the_logits_loss_with_gradients(variant, support, weighting, chunk):
    s_h, s_head, t_h, t_head, tokens, mask = _case(0, bias=variant != "sampled")
    logits = s_head(s_h) / 0.8
    ref, ref_m = opd_loss(logits, (t_head(t_h) / 1.2).detach(), tokens, mask, variant=variant,
                          support=support, weighting=weighting, top_k=6, bucket_size=8)
    ref_g = _grads(ref, s_h, s_head)
    out, out_m = opd_loss_hidden(s_h, s_head, t_h, t_head, tokens, mask, variant=variant,
                                 support=support, weighting=weighting, top_k=6, temperature=0.8,
                                 teacher_temperature=1.2, chunk_size=chunk, bucket_size=8)
    out_g = _grads(out, s_h, s_head)
    assert out.item() == pytest.approx(ref.item(), abs=1e-5)
    for a, b in zip(out_g, ref_g):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    for name, value in ref_m.items():
        if name in ("weights", "buckets"):
            continue
        assert out_m[name] == pytest.approx(value, abs=1e-5, nan_ok=True), name
    assert [b["tokens"] for b in out_m["buckets"]] == [b["tokens"] for b in ref_m["buckets"]]
    for a, b in zip(out_m["buckets"], ref_m["buckets"]):
        assert a["reverse_kl"] == pytest.approx(b["reverse_kl"], abs=1e-5)


def test_clipped_updates_against_old_logprobs_match_too():
    s_h, s_head, t_h, t_head, tokens, mask = _case(1)
    with torch.no_grad():
        old = torch.log_softmax(s_head(s_h + 0.3 * torch.randn_like(s_h)), dim=-1)
    ref, _ = opd_loss(s_head(s_h), t_head(t_h).detach(), tokens, mask, variant="topk", top_k=6,
                      old_logprobs=old, clip_range=0.1)
    out, _ = opd_loss_hidden(s_h, s_head, t_h, t_head, tokens, mask, variant="topk", top_k=6,
                             old_logprobs=old, clip_range=0.1, chunk_size=7)
    assert out.item() == pytest.approx(ref.item(), abs=1e-5)
    for a, b in zip(_grads(out, s_h, s_head), _grads(ref, s_h, s_head)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


class _Widest(TorchDispatchMode):
    """The largest number of vocabulary-wide rows any op returns (views of the heads' own
    weights aside)."""

    def __init__(self, *weights: torch.Tensor):
        super().__init__()
        self.rows = 0
        self.weights = {w.untyped_storage().data_ptr() for w in weights}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.dim() and t.shape[-1] == V and \
                    t.untyped_storage().data_ptr() not in self.weights:
                self.rows = max(self.rows, t.numel() // V)
        return out


def test_no_tensor_wider_than_one_chunk_of_the_vocabulary():
    s_h, s_head, t_h, t_head, tokens, mask = _case(2)
    with _Widest(s_head.weight, t_head.weight) as seen:
        loss, _ = opd_loss_hidden(s_h, s_head, t_h, t_head, tokens, mask, variant="full",
                                  chunk_size=4)
        loss.backward()
    # [4, V] per chunk; the head's own [V, H] weight gradient has V rows of width H, not V
    assert 0 < seen.rows <= 4, seen.rows
    assert int(mask.sum()) > 4 * 8  # many chunks ran


def test_the_teacher_is_never_differentiated():
    s_h, s_head, t_h, t_head, tokens, mask = _case(3)
    t_h.requires_grad_(True)
    loss, _ = opd_loss_hidden(s_h, s_head, t_h, t_head, tokens, mask, variant="full")
    loss.backward()
    assert t_h.grad is None and t_head.weight.grad is None
    assert s_head.weight.grad is not None and s_h.grad is not None


def test_a_wider_teacher_head_is_normalised_over_all_its_rows():
    """Heads of one tokenizer padded differently (152,064 vs 151,936 rows): the teacher's
    log-probs come from its whole head, compared on the student's entries."""
    s_h, s_head, t_h, _, tokens, mask = _case(4)
    wide = torch.nn.Linear(HT, V + 7)
    out, m = opd_loss_hidden(s_h, s_head, t_h, wide, tokens, mask, variant="full",
                             chunk_size=6)
    ref, _ = opd_loss(s_head(s_h), wide(t_h).detach(), tokens, mask, variant="full")
    # naive loop: reverse KL per valid token, teacher normalised over V + 7 entries
    total, n = 0.0, 0
    with torch.no_grad():
        for b in range(B):
            for t in range(T):
                if mask[b, t]:
                    logp = torch.log_softmax(s_head(s_h[b, t]), -1)
                    logq = torch.log_softmax(wide(t_h[b, t]), -1)[:V]
                    total += float((logp.exp() * (logp - logq)).sum())
                    n += 1
    assert m["reverse_kl"] == pytest.approx(total / n, abs=1e-5)
    assert out.item() == pytest.approx(ref.item(), abs=1e-5)
    with pytest.raises(ValueError, match="narrower"):
        opd_loss_hidden(s_h, torch.nn.Linear(H, V + 7), t_h, torch.nn.Linear(HT, V), tokens,
                        mask, variant="full")
