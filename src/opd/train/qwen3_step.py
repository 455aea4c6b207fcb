"""One decoding step of a Qwen3 model on CPU without the ``transformers`` module stack.

A decode step of a tiny model is mostly per-call cost: the ``transformers`` forward builds an
attention mask, output objects and about forty module calls around a few small matrix
products. ``Qwen3Step`` runs the same operations in the same order straight on the model's
weights and its key/value cache, with one exception: attention. SDPA's CPU kernel is built
for long queries and spends most of a one-query step on its own overhead; ``attend`` computes
the same softmax attention as two batched matrix products, up to about twice as fast for a
batch of tiny-model rows. So the logits equal
``model(input_ids, attention_mask, position_ids, past_key_values).logits[:, -1]`` up to float
rounding (the summation order of the attention differs): ``tests/train/test_generation.py``
checks them over many steps, with and without left padding, and ``attend`` against attention
written out as a loop. ``Qwen3Step.supports`` names the models it covers; ``decode`` uses the
``transformers`` forward for every other model.

``StepCache`` holds the keys and values of the decode steps in buffers with room for the next
tokens: a step writes its one token in place, where ``DynamicCache`` copies the whole cache
into a new tensor on every step. Attention reads a view of the filled part, with the same
values.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers.models.qwen3.modeling_qwen3 import rotate_half


class StepCache:
    """Per layer, keys and values [N, key heads, capacity, head size] of which the first
    ``length`` positions are filled; full buffers grow by ``room`` positions, so a decode
    step copies the cache once every ``room`` steps instead of on every step."""

    def __init__(self, cache: Any, room: int = 16):
        """Takes over the prefilled ``DynamicCache`` ``cache``'s tensors."""
        self.room = room
        self.keys = [layer.keys for layer in cache.layers]
        self.values = [layer.values for layer in cache.layers]
        self.length = [k.shape[2] for k in self.keys]

    def _grown(self, buf: torch.Tensor, filled: int) -> torch.Tensor:
        n, heads, _, size = buf.shape
        out = buf.new_empty(n, heads, filled + self.room, size)
        out[:, :, :filled] = buf[:, :, :filled]
        return out

    def update(self, k: torch.Tensor, v: torch.Tensor, layer: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Appends ``k``, ``v`` [N, key heads, 1, head size] to ``layer``; returns the layer's
        keys and values so far (views)."""
        filled = self.length[layer]
        if filled == self.keys[layer].shape[2]:
            self.keys[layer] = self._grown(self.keys[layer], filled)
            self.values[layer] = self._grown(self.values[layer], filled)
        self.keys[layer][:, :, filled:filled + 1] = k
        self.values[layer][:, :, filled:filled + 1] = v
        self.length[layer] = filled + 1
        return self.keys[layer][:, :, :filled + 1], self.values[layer][:, :, :filled + 1]

    def batch_select_indices(self, rows: torch.Tensor) -> None:
        """Keeps only the batch rows ``rows`` (sequences that ended leave); ``index_select``
        copies them faster on CPU than advanced indexing, with the same values."""
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
           scale: float) -> torch.Tensor:
    """Attention of one query position per row, softmax(q k^T * scale + bias) v: ``q`` [N, H,
    1, D] over keys and values [N, G, K, D], where the H query heads share the G key heads in
    consecutive groups of H / G (as ``transformers`` repeats them); ``bias`` [N, 1, 1, K] (0 or
    -inf per key) or None. Returns [N, H, 1, D]."""
    n, groups, keys, d = k.shape
    q = q.reshape(n * groups, -1, d)            # each key head's query heads as its rows
    scores = torch.bmm(q, k.reshape(n * groups, keys, d).transpose(1, 2)) * scale
    if bias is not None:
        scores = (scores.view(n, groups, -1, keys) + bias).view(n * groups, -1, keys)
    return torch.bmm(scores.softmax(-1), v.reshape(n * groups, keys, d)).view(n, -1, 1, d)


class Qwen3Step:
    """Next-token logits [N, V] of a Qwen3 causal LM for one new token per row."""

    @staticmethod
    def supports(model: Any) -> bool:
        """A CPU Qwen3 causal LM in inference with full (not sliding) ``sdpa`` attention,
        default rotary embedding and no projection biases."""
        cfg = getattr(model, "config", None)
        if cfg is None or getattr(cfg, "model_type", None) != "qwen3" or model.training:
            return False
        rope = (getattr(cfg, "rope_parameters", None) or {}).get("rope_type", "default")
        return (cfg._attn_implementation == "sdpa" and rope == "default"
                and not cfg.attention_bias and model.device.type == "cpu"
                and all(t == "full_attention" for t in cfg.layer_types)
                and hasattr(model, "lm_head") and hasattr(model, "model"))

    def __init__(self, model: Any):
        body = model.model
        self.embed = body.embed_tokens.weight
        self.inv_freq = body.rotary_emb.inv_freq
        self.rope_scale = body.rotary_emb.attention_scaling
        # the RMS norms' own ``forward`` (no module-call machinery around it)
        self.norm = body.norm.forward
        self.head = model.lm_head.weight
        self.layers = []
        for layer in body.layers[:model.config.num_hidden_layers]:
            att, mlp = layer.self_attn, layer.mlp
            self.layers.append(dict(
                ln1=layer.input_layernorm.forward, ln2=layer.post_attention_layernorm.forward,
                qn=att.q_norm.forward, kn=att.k_norm.forward,
                q=att.q_proj.weight, k=att.k_proj.weight, v=att.v_proj.weight,
                o=att.o_proj.weight, scale=att.scaling, head_dim=att.head_dim,
                gate=mlp.gate_proj.weight, up=mlp.up_proj.weight, down=mlp.down_proj.weight,
                act=mlp.act_fn.forward))

    @torch.no_grad()
    def __call__(self, ids: torch.Tensor, attention_mask: torch.Tensor,
                 position: torch.Tensor, cache: Any) -> torch.Tensor:
        """Logits for ``ids`` [N, 1] at ``position`` [N, 1]; ``attention_mask`` [N, K] covers
        the cached tokens and this one; ``cache`` (a ``StepCache`` or ``DynamicCache``) grows by
        one token."""
        n, q_len = ids.shape
        if q_len != 1:
            raise ValueError(f"Qwen3Step runs one token per row, got {q_len}")
        x = F.embedding(ids, self.embed)
        freqs = position[..., None].float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = (emb.cos() * self.rope_scale).to(x.dtype)[:, None]
        sin = (emb.sin() * self.rope_scale).to(x.dtype)[:, None]
        # left padding as an additive key mask [N, 1, 1, K], shared by every layer
        bias = None if bool(attention_mask.all()) else torch.zeros(
            attention_mask.shape, dtype=x.dtype, device=x.device).masked_fill(
                attention_mask == 0, float("-inf"))[:, None, None, :]
        for i, w in enumerate(self.layers):
            hd = w["head_dim"]
            h = w["ln1"](x)
            q = w["qn"](F.linear(h, w["q"]).view(n, 1, -1, hd)).transpose(1, 2)
            k = w["kn"](F.linear(h, w["k"]).view(n, 1, -1, hd)).transpose(1, 2)
            v = F.linear(h, w["v"]).view(n, 1, -1, hd).transpose(1, 2)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            k, v = cache.update(k, v, i)
            o = attend(q, k, v, bias, w["scale"])
            x = x + F.linear(o.transpose(1, 2).reshape(n, 1, -1), w["o"])
            h = w["ln2"](x)
            x = x + F.linear(w["act"](F.linear(h, w["gate"])) * F.linear(h, w["up"]), w["down"])
        return F.linear(self.norm(x[:, -1]), self.head)
