"""The attn1 processor: project -> RMSNorm -> per-role rotate and attend (in the cache) -> merge -> out.

One loaded DiT serves many sessions, each with its own head-wise cache: the processors of every block read
the cache from a shared `CacheRoute`, which the sampler points at its session's cache for the forwards of
a chunk. Swapping the processor is all that changes in the model (diffusers' way); it never knows which
policy runs.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


class CacheRoute:
    """Which head-wise cache the DiT's self-attentions use right now."""

    def __init__(self, num_layers: int):
        self.num_layers, self.cache = num_layers, None

    @contextmanager
    def to(self, cache):
        if len(cache.layers) != self.num_layers:
            raise ValueError(f"cache has {len(cache.layers)} layers, the model {self.num_layers}")
        previous, self.cache = self.cache, cache
        try:
            yield
        finally:
            self.cache = previous


class HeadwiseAttnProcessor:
    """Replaces diffusers' WanAttnProcessor on self-attention of block `layer`."""

    def __init__(self, route: CacheRoute, layer: int):
        self.route, self.layer = route, layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        # hidden_states [B, S, H*D] for the S = C*T tokens of the current chunk
        if getattr(attn, "fused_projections", False):
            q, k, v = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        q, k = attn.norm_q(q), attn.norm_k(k)
        cache = self.route.cache
        if cache.split is not None:  # head parallelism: this rank's tokens of every head <-> every token of its heads
            comm = cache.split.comm
            qkv = torch.stack((q, k, v)).unflatten(3, (attn.heads, -1))  # [3, B, S/P, H, D]
            q, k, v = comm.to_heads(qkv, cache.split.order[self.layer])  # each [B, H/P, S, D]
            out = cache.layers[self.layer].attend(q, k, v)
            out = comm.to_tokens(out, cache.split.inverse[self.layer]).flatten(2).type_as(hidden_states)  # [B, S/P, H*D]
            return attn.to_out[1](attn.to_out[0](out))
        # [B, S, H*D] -> [B, H, S, D]
        q, k, v = (t.unflatten(2, (attn.heads, -1)).transpose(1, 2) for t in (q, k, v))
        out = cache.layers[self.layer].attend(q, k, v)  # [B, H, S, D]; diffusers' rotary_emb unused
        out = out.transpose(1, 2).flatten(2).type_as(hidden_states)  # [B, S, H*D]
        return attn.to_out[1](attn.to_out[0](out))


def cache_route(transformer) -> CacheRoute:
    """The transformer's route, (re)installing the head-wise processors where another processor sits."""
    route = getattr(transformer, "cache_route", None) or CacheRoute(len(transformer.blocks))
    for layer, block in enumerate(transformer.blocks):
        processor = block.attn1.processor
        if not (isinstance(processor, HeadwiseAttnProcessor) and processor.route is route):
            block.attn1.set_processor(HeadwiseAttnProcessor(route, layer))
    transformer.cache_route = route
    return route
