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
    """The sink and recent frames a role sees before the chunk starting at `chunk_start`."""
    committed = list(range(chunk_start))
    sink = committed if role.sink is None else committed[: role.sink]
    rest = [f for f in committed if f not in sink]
    recent = rest[max(0, len(rest) - role.recent) :] if role.recent else []
    return sorted(sink + recent)


class OracleCache:
    """`decisions`: the engine's episodic log, replayed here ("given the same slot decisions")."""

    def __init__(self, policy, headmap, chunk_frames: int = 3, decisions: list | None = None):
        self.policy, self.headmap, self.chunk_frames = policy, headmap, chunk_frames
        self.decisions = decisions or []
        self.committing = False
        self.recache = None  # (first frame, frames) while re-encoding after a prompt switch
        self.attention_log = None  # a list to record every head's full attention matrix in, if wanted
        self.layers = headmap.roles  # one entry a layer (the sampler's cache route checks the count)

    def install(self, transformer):
        for layer, block in enumerate(transformer.blocks):
            block.attn1.set_processor(OracleProcessor(self, layer))

    def allocate(self, batch, grid_hw, dtype, device):
        self.grid = grid_hw
        self.keys = [dict() for _ in self.headmap.roles]  # layer -> frame -> [B, H, T, D] before RoPE
        self.values = [dict() for _ in self.headmap.roles]
        # layer -> head -> episodic slot -> [frame, keys [B, T, D], values [B, T, D]]
        self.episodic = [[dict() for _ in layer] for layer in self.headmap.roles]

    def begin_chunk(self, first_frame, chunk_frames):
        self.first_frame = first_frame

    @contextmanager
    def recaching(self, first_frame, num_frames, origin=0):
        self.recache = (first_frame, num_frames)
        try:
            yield
        finally:
            self.recache = None

    def recent_frames(self, layer: int, head: int, chunk_start: int) -> list[int]:
        """The recent frames a `recache` head re-encodes before the chunk starting at chunk_start."""
        role = self.policy.roles[self.headmap.roles[layer][head]]
        kept = kept_frames(role, chunk_start)
        return kept[0 if role.sink is None else role.sink :] if role.on_switch == "recache" else []

    @contextmanager
    def commit(self):
        self.committing = True
        try:
            yield
        finally:
            self.committing = False

    def view(self, layer: int, head: int) -> tuple[list, list[int]]:
        """([(frame, keys [B, T, D], values [B, T, D], position)] a head sees, the chunk's positions)."""
        role = self.policy.roles[self.headmap.roles[layer][head]]
        entries = [(f, self.keys[layer][f][:, head], self.values[layer][f][:, head]) for f in kept_frames(role, self.first_frame)]
        entries += [tuple(e) for e in self.episodic[layer][head].values()]
        entries.sort(key=lambda e: e[0])
        chunk = list(range(self.first_frame, self.first_frame + self.chunk_frames))
        if role.positions == "absolute":
            return [e + (e[0],) for e in entries], chunk
        n = len(entries)
        return [e + (rank,) for rank, e in enumerate(entries)], list(range(n, n + self.chunk_frames))

    def replay_decisions(self, layer: int) -> None:
        chunk = self.first_frame // self.chunk_frames
        for d in self.decisions:
            if d["layer"] != layer or d["chunk"] != chunk:
                continue
            for h in self.headmap.heads_of(layer, d["role"]):
                k, v = self.keys[layer][d["frame"]][:, h], self.values[layer][d["frame"]][:, h]
                slots = self.episodic[layer][h]
                if d["action"] in ("admit", "replace"):
                    slots[d["slot"]] = [d["frame"], k, v]
                else:  # merge: count-weighted average, the slot keeps its frame
                    w = 1.0 / d["count"]
                    slot = slots[d["slot"]]
                    slot[1], slot[2] = (1 - w) * slot[1] + w * k, (1 - w) * slot[2] + w * v


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
        if o.recache is not None:
            return attn.to_out[0](self.re_encode(q, k, v).flatten(2))
        T = tokens // o.chunk_frames
        out = torch.zeros_like(q)
        for b in range(batch):
            for h in range(heads):
                entries, chunk_pos = o.view(self.layer, h)
                ks, vs = [], []
                for _, keys, values, p in entries:
                    ks.append(rope_frame(keys[b], p, o.grid))
                    vs.append(values[b])
                qs = []
                for i, p in enumerate(chunk_pos):
                    ks.append(rope_frame(k[b, i * T : (i + 1) * T, h], p, o.grid))
                    vs.append(v[b, i * T : (i + 1) * T, h])
                    qs.append(rope_frame(q[b, i * T : (i + 1) * T, h], p, o.grid))
                K, V, Q = torch.cat(ks), torch.cat(vs), torch.cat(qs)
                weights = torch.softmax(Q @ K.T / math.sqrt(head_dim), dim=-1)
                out[b, :, h] = weights @ V
                if o.attention_log is not None:
                    key_frames = [e[0] for e in entries] + list(range(o.first_frame, o.first_frame + o.chunk_frames))
                    o.attention_log.append(dict(layer=self.layer, head=h, first=o.first_frame, commit=o.committing,
                                                key_frames=key_frames, weights=weights))
        if o.committing:
            for i in range(o.chunk_frames):
                frame = o.first_frame + i
                o.keys[self.layer][frame] = k[:, i * T : (i + 1) * T].transpose(1, 2).clone()  # [B, H, T, D]
                o.values[self.layer][frame] = v[:, i * T : (i + 1) * T].transpose(1, 2).clone()
            o.replay_decisions(self.layer)
        return attn.to_out[0](out.flatten(2))

    def re_encode(self, q, k, v):
        """Block-causal attention among the re-encoded frames (positions 0..R-1), then the recent frames of
        `recache` roles take the new keys/values, head by head."""
        o = self.owner
        first, frames = o.recache
        batch, tokens, heads, head_dim = q.shape
        T = tokens // frames
        chunk_of = [(first + i // T) // o.chunk_frames for i in range(tokens)]
        allowed = torch.tensor([[a >= b for b in chunk_of] for a in chunk_of])
        out = torch.zeros_like(q)
        for b in range(batch):
            for h in range(heads):
                Q = torch.cat([rope_frame(q[b, i * T : (i + 1) * T, h], i, o.grid) for i in range(frames)])
                K = torch.cat([rope_frame(k[b, i * T : (i + 1) * T, h], i, o.grid) for i in range(frames)])
                scores = (Q @ K.T / math.sqrt(head_dim)).masked_fill(~allowed, float("-inf"))
                out[b, :, h] = torch.softmax(scores, dim=-1) @ v[b, :, h]
        for h in range(heads):
            for f in o.recent_frames(self.layer, h, first + frames):
                if first <= f < first + frames:
                    i = f - first
                    o.keys[self.layer][f][:, h] = k[:, i * T : (i + 1) * T, h]
                    o.values[self.layer][f][:, h] = v[:, i * T : (i + 1) * T, h]
        return out
