"""Cross-attention keys and values computed once per prompt, not once per forward.

A prompt's context is the same for every denoising step and chunk it drives, yet the Wan DiT re-embeds it
(`text_embedder`, 512 x 4096 -> 1536) and re-projects it to keys and values in all 30 cross-attentions at
every forward. `install_prompt_cache` memoises the text embedder so that the same context tensor gives the
same embedded tensor, and swaps attn2's processor for one that keeps that tensor's keys and values. Entries
are keyed by the tensor object itself (held, so its id cannot be reused) and the newest `size` prompts are
kept. The result is the stock computation, op for op. Inside a compiled step (torch.compile) the memo is
bypassed: the context is then an input of the graph, and a prompt switch must not be a recompile.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F


class Recent:
    """A tiny identity-keyed LRU: tensor -> value, for the newest `size` tensors."""

    def __init__(self, size: int):
        self.size, self.items = size, OrderedDict()

    def get(self, key: torch.Tensor, make):
        entry = self.items.get(id(key))
        if entry is not None and entry[0] is key:
            self.items.move_to_end(id(key))
            return entry[1]
        value = make()
        self.items[id(key)] = (key, value)
        while len(self.items) > self.size:
            self.items.popitem(last=False)
        return value


def unmemoised() -> bool:
    """Training (autograd) or tracing for torch.compile: compute the prompt's keys and values in place."""
    return torch.is_grad_enabled() or torch.compiler.is_compiling()


class CachedCrossAttnProcessor:
    """attn2 with the prompt's keys/values kept: project q per call, k/v once per embedded context."""

    def __init__(self, size: int = 2):
        self.memo = Recent(size)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        def keys_values():
            k, v = attn.norm_k(attn.to_k(encoder_hidden_states)), attn.to_v(encoder_hidden_states)
            return tuple(t.unflatten(2, (attn.heads, -1)).transpose(1, 2) for t in (k, v))  # [B, H, L, D]

        k, v = keys_values() if unmemoised() else self.memo.get(encoder_hidden_states, keys_values)
        q = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1)).transpose(1, 2)  # [B, H, S, D]
        out = F.scaled_dot_product_attention(q, k, v)
        return attn.to_out[1](attn.to_out[0](out.transpose(1, 2).flatten(2).type_as(hidden_states)))


def install_prompt_cache(transformer, size: int = 2) -> None:
    """Cache text embedding and cross-attention K/V per prompt in a diffusers WanTransformer3DModel (without
    autograd only; the module tree and its state dict are unchanged)."""
    text_embedder = transformer.condition_embedder.text_embedder
    if not hasattr(text_embedder, "prompt_memo"):
        memo, embed = Recent(size), text_embedder.forward

        def forward(context):  # the same context tensor -> the same embedded tensor
            return embed(context) if unmemoised() else memo.get(context, lambda: embed(context))

        text_embedder.prompt_memo, text_embedder.forward = memo, forward
    for block in transformer.blocks:
        if block.attn2.add_k_proj is not None:
            raise ValueError("image-conditioned (I2V) cross-attention is not supported by the prompt cache")
        block.attn2.set_processor(CachedCrossAttnProcessor(size))
