"""A naive float64 oracle of head-wise cached attention, written without the engine's cache code.

It keeps every committed frame's keys (before RoPE) and values, and for each head lists explicitly which
frames its role sees and at which temporal positions, then runs plain softmax attention head by head.
It speaks the cache interface the sampler drives (install / allocate / begin_chunk / commit).
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch


def rope_angles(head_dim: int, t: int, h: int, w: int, theta: float = 10000.0) -> torch.Tensor:
    """[head_dim/2] float64 angles of one token at temporal position t, row h, column w."""
    hw = 2 * (head_dim // 6)
    dims = (head_dim - 2 * hw, hw, hw)
    parts = [p * theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d) for p, d in zip((t, h, w), dims)]
    return torch.cat(parts)


def rope_frame(x: torch.Tensor, position: int, grid: tuple[int, int]) -> torch.Tensor:
    """Rotate one frame's tokens x [T, D] (float64) to a temporal position."""
    head_dim = x.shape[-1]
    angles = torch.stack([rope_angles(head_dim, position, r, c) for r in range(grid[0]) for c in range(grid[1])])
    pairs = torch.view_as_complex(x.reshape(x.shape[0], -1, 2).contiguous())
    return torch.view_as_real(pairs * torch.polar(torch.ones_like(angles), angles)).flatten(-2)


def kept_frames(role, chunk_start: int) -> list[int]:
    """The frames a role sees before the chunk starting at `chunk_start` (the episodic slots stay empty)."""
    committed = list(range(chunk_start))
    sink = committed if role.sink is None else committed[: role.sink]
    rest = [f for f in committed if f not in sink]
    recent = rest[max(0, len(rest) - role.recent) :] if role.recent else []
    return sorted(sink + recent)


class OracleCache:
    def __init__(self, policy, headmap, chunk_frames: int = 3):
        self.policy, self.headmap, self.chunk_frames = policy, headmap, chunk_frames
        self.committing = False

    def install(self, transformer):
        for layer, block in enumerate(transformer.blocks):
            block.attn1.set_processor(OracleProcessor(self, layer))

    def allocate(self, batch, grid_hw, dtype, device):
        self.grid = grid_hw
        self.keys = [dict() for _ in self.headmap.roles]  # layer -> frame -> [B, H, T, D] before RoPE
        self.values = [dict() for _ in self.headmap.roles]

    def begin_chunk(self, first_frame, chunk_frames):
        self.first_frame = first_frame

    @contextmanager
    def commit(self):
        self.committing = True
        try:
            yield
        finally:
            self.committing = False

    def view(self, role_name: str) -> tuple[list[int], list[int], list[int]]:
        """(kept frames, their positions, the chunk's positions) for one role."""
        role = self.policy.roles[role_name]
        frames = kept_frames(role, self.first_frame)
        chunk = list(range(self.first_frame, self.first_frame + self.chunk_frames))
        if role.positions == "absolute":
            return frames, frames, chunk
        n = len(frames)
        return frames, list(range(n)), list(range(n, n + self.chunk_frames))


class OracleProcessor:
    def __init__(self, owner: OracleCache, layer: int):
        self.owner, self.layer = owner, layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        o = self.owner
        x = hidden_states  # the oracle's model runs in float64
        q = attn.norm_q(attn.to_q(x)).unflatten(2, (attn.heads, -1))  # [B, S, H, D]
        k = attn.norm_k(attn.to_k(x)).unflatten(2, (attn.heads, -1))
        v = attn.to_v(x).unflatten(2, (attn.heads, -1))
        batch, tokens, heads, head_dim = q.shape
        T = tokens // o.chunk_frames
        out = torch.zeros_like(q)
        for b in range(batch):
            for h in range(heads):
                frames, positions, chunk_pos = o.view(o.headmap.roles[self.layer][h])
                ks, vs = [], []
                for f, p in zip(frames, positions):
                    ks.append(rope_frame(o.keys[self.layer][f][b, h], p, o.grid))
                    vs.append(o.values[self.layer][f][b, h])
                qs = []
                for i, p in enumerate(chunk_pos):
                    ks.append(rope_frame(k[b, i * T : (i + 1) * T, h], p, o.grid))
                    vs.append(v[b, i * T : (i + 1) * T, h])
                    qs.append(rope_frame(q[b, i * T : (i + 1) * T, h], p, o.grid))
                K, V, Q = torch.cat(ks), torch.cat(vs), torch.cat(qs)
                weights = torch.softmax(Q @ K.T / math.sqrt(head_dim), dim=-1)
                out[b, :, h] = weights @ V
        if o.committing:
            for i in range(o.chunk_frames):
                frame = o.first_frame + i
                o.keys[self.layer][frame] = k[:, i * T : (i + 1) * T].transpose(1, 2).clone()  # [B, H, T, D]
                o.values[self.layer][frame] = v[:, i * T : (i + 1) * T].transpose(1, 2).clone()
        return attn.to_out[0](out.flatten(2))
