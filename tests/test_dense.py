"""`full` chunk by chunk == one dense block-causal forward over the same frames (teacher-forcing view)."""

import torch
import torch.nn.functional as F
from conftest import engine_cache, run_chunks, text

from headforcing.cache.policy import preset
from headforcing.models.specs import TINY, build_transformer
from headforcing.engine.sampler import ChunkSampler


class BlockCausalProcessor:
    """diffusers' own RoPE (positions 0..F-1 of the whole sequence) with a block-causal mask."""

    def __init__(self, mask):
        self.mask = mask

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        q = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
        k = attn.norm_k(attn.to_k(hidden_states)).unflatten(2, (attn.heads, -1))
        v = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        cos, sin = rotary_emb

        def rope(x):  # the stock processor's rotation, pairs (2i, 2i+1)
            x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
            out = torch.empty_like(x)
            out[..., 0::2] = x1 * cos[..., 0::2] - x2 * sin[..., 1::2]
            out[..., 1::2] = x1 * sin[..., 1::2] + x2 * cos[..., 0::2]
            return out

        q, k, v = rope(q).transpose(1, 2), rope(k).transpose(1, 2), v.transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)
        return attn.to_out[0](out.transpose(1, 2).flatten(2))


def test_full_chunkwise_equals_dense_block_causal_forward():
    chunks, hw, T = 4, (4, 4), 4  # 4 tokens per latent frame (4x4 latent, patch 2)
    calls = []  # (chunk, x, t, v) of every denoising forward
    original = ChunkSampler.velocity

    def recording(self, x, t, ctx, model=None):
        v = original(self, x, t, ctx, model)
        if not self.cache.committing:
            calls.append((self.cache.stores()[0].first_frame // 3, x.clone(), t, v.clone()))
        return v

    ChunkSampler.velocity = recording
    try:
        latents = run_chunks(engine_cache(preset("full"), preset("full").resolve_headmap(3, 4), 12), chunks, hw)
    finally:
        ChunkSampler.velocity = original

    dense = build_transformer(TINY, seed=3)  # same weights as run_chunks, stock RoPE table
    assert len(calls) == chunks * 4
    for chunk, x, t, v in calls:
        assert (dense_velocity(dense, latents, chunk, x, t, T) - v).abs().max().item() < 1e-4, (chunk, t)
    # the comparison can fail: without the block-causal mask the context frames see the noisy chunk
    chunk, x, t, v = calls[-1]
    assert (dense_velocity(dense, latents, chunk, x, t, T, causal=False) - v).abs().max().item() > 1e-3


def dense_velocity(dense, latents, chunk, x, t, T, causal=True):
    """The dense model's prediction for chunk `chunk` given the clean earlier chunks as context."""
    frames = 3 * (chunk + 1)
    sequence = torch.cat([latents[:, : 3 * chunk], x], dim=1)  # [1, frames, C, h, w]
    block = torch.arange(frames * T) // (3 * T)
    mask = block[:, None] >= block[None, :] if causal else None
    for b in dense.blocks:
        b.attn1.set_processor(BlockCausalProcessor(mask))
    timestep = torch.cat([torch.zeros(3 * chunk * T), torch.full((3 * T,), t)])[None]  # per token
    with torch.no_grad():
        out = dense(sequence.permute(0, 2, 1, 3, 4), timestep, text(), return_dict=False)[0]
    return out.permute(0, 2, 1, 3, 4)[:, -3:]
