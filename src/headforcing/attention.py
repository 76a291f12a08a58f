"""The attn1 processor: project -> RMSNorm -> per-role rotate and attend (in the cache) -> merge -> out."""

from __future__ import annotations


class HeadwiseAttnProcessor:
    """Replaces diffusers' WanAttnProcessor on self-attention; the model never knows which policy runs."""

    def __init__(self, layer):  # a cache.headwise.LayerCache
        self.layer = layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        # hidden_states [B, S, H*D] for the S = C*T tokens of the current chunk
        if getattr(attn, "fused_projections", False):
            q, k, v = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        q, k = attn.norm_q(q), attn.norm_k(k)
        # [B, S, H*D] -> [B, H, S, D]
        q, k, v = (t.unflatten(2, (attn.heads, -1)).transpose(1, 2) for t in (q, k, v))
        out = self.layer.attend(q, k, v)  # [B, H, S, D]; diffusers' rotary_emb is not used
        out = out.transpose(1, 2).flatten(2).type_as(hidden_states)  # [B, S, H*D]
        return attn.to_out[1](attn.to_out[0](out))
