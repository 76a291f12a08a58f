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


def rope_frame(x: torch.Tensor, position: int, grid: tuple[int, int], pooled: bool = False) -> torch.Tensor:
    """Rotate one frame's tokens x [T, D] (float64) to a temporal position (pooled: a frame pooled 2x2,
    [T/4, D], each token at the centre of its 2x2 block)."""
    head_dim = x.shape[-1]
    if pooled:
        coords = [(2 * r + 0.5, 2 * c + 0.5) for r in range(grid[0] // 2) for c in range(grid[1] // 2)]
    else:
        coords = [(r, c) for r in range(grid[0]) for c in range(grid[1])]
    angles = torch.stack([rope_angles(head_dim, position, r, c) for r, c in coords])
    pairs = torch.view_as_complex(x.reshape(x.shape[0], -1, 2).contiguous())
    return torch.view_as_real(pairs * torch.polar(torch.ones_like(angles), angles)).flatten(-2)


def pool(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Tokens [B, T, D] of a row-major grid -> each 2x2 block's mean [B, T/4, D], block by block."""
    h, w = grid
    blocks = [[r * w + c for r in (2 * i, 2 * i + 1) for c in (2 * j, 2 * j + 1)] for i in range(h // 2) for j in range(w // 2)]
    return torch.stack([x[:, b].mean(1) for b in blocks], dim=1)


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
        # layer -> head -> the coarse level's pooled frames, oldest given up first: [frame, keys [B, T/4, D], values]
        self.pooled = [[[] for _ in layer] for layer in self.headmap.roles]
        self.replaced = [[0 for _ in layer] for layer in self.headmap.roles]  # frames given to the coarse level

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

    def archived(self, layer: int, head: int) -> list[int]:
        """The frames in a Retrieved role's archive before this chunk: the last `archive` of those that left
        `recent` whose index is a multiple of `every`."""
        role = self.policy.roles[self.headmap.roles[layer][head]]
        seg = role.retrieval
        kept = kept_frames(role, self.first_frame)
        left = [f for f in range(role.sink, self.first_frame) if f not in kept and f % seg.every == 0]
        return left[-seg.archive :]

    def retrieve(self, layer: int, head: int, b: int, q_mean: torch.Tensor) -> list[int]:
        """The k archived frames whose mean key is most cosine-similar to the chunk's mean query (before
        RoPE), in time order; none until the archive holds k frames and the role's other slots are full."""
        role = self.policy.roles[self.headmap.roles[layer][head]]
        archive = self.archived(layer, head)
        full = self.first_frame >= role.sink + role.recent and len(self.episodic[layer][head]) == role.episodic
        if not full or len(archive) < role.retrieved:
            return []
        query = q_mean / q_mean.norm()
        mean_key = {f: self.keys[layer][f][b, head].mean(0) for f in archive}  # [D]
        score = {f: float(mean_key[f] @ query / mean_key[f].norm()) for f in archive}
        return sorted(sorted(archive, key=lambda f: -score[f])[: role.retrieved])

    def view(self, layer: int, head: int, retrieved: list[int] = ()) -> tuple[list, list[int]]:
        """([(frame, keys [B, T, D], values [B, T, D], tokens a key stands for, position)] a head sees, the
        chunk's positions)."""
        role = self.policy.roles[self.headmap.roles[layer][head]]
        # (frame, keys, values, tokens each key stands for, group: 0 sink, 1 episodic or coarse, 2 recent)
        entries = [(f, self.keys[layer][f][:, head], self.values[layer][f][:, head], 1.0, 0 if role.sink is None or f < role.sink else 2)
                   for f in kept_frames(role, self.first_frame)]
        episodic = self.episodic[layer][head]
        entries += [tuple(e) + (1.0, 1) for e in episodic.values()]
        if role.coarse and len(episodic) == role.episodic:
            # the coarse level, seen once the episodic slots are full: a slot of 4 pooled frames is one position,
            # its oldest pooled frame's; empty slots come after every episodic frame; a pooled token counts 4x
            ring = self.pooled[layer][head]
            for c in range(role.coarse):
                held = ring[4 * c : 4 * c + 4]
                frame = min((e[0] for e in held), default=math.inf)
                keys = torch.cat([e[1] for e in held], dim=1) if held else None
                values = torch.cat([e[2] for e in held], dim=1) if held else None
                entries.append((frame, keys, values, 4.0, 1))
        entries += [(f, self.keys[layer][f][:, head], self.values[layer][f][:, head], 1.0, 1.5) for f in retrieved]
        # sink, then episodic and coarse, then retrieved, then recent (memory_at "near": recent before memory); in time
        place = {0: 0, 1: 1, 1.5: 1.5, 2: 2} if role.memory_at == "time" else {0: 0, 2: 1, 1: 2, 1.5: 2.5}
        entries.sort(key=lambda e: (place[e[4]], e[0]))
        chunk = list(range(self.first_frame, self.first_frame + self.chunk_frames))
        if role.positions == "absolute":
            return [e[:4] + (e[0],) for e in entries], chunk
        n = len(entries)
        return [e[:4] + (rank,) for rank, e in enumerate(entries)], list(range(n, n + self.chunk_frames))

    def replay_decisions(self, layer: int) -> None:
        chunk = self.first_frame // self.chunk_frames
        for d in self.decisions:
            if d["layer"] != layer or d["chunk"] != chunk:
                continue
            for h in self.headmap.heads_of(layer, d["role"]):
                k, v = self.keys[layer][d["frame"]][:, h], self.values[layer][d["frame"]][:, h]
                slots = self.episodic[layer][h]
                role = self.policy.roles[d["role"]]
                if d["action"] == "replace" and role.coarse:  # the replaced frame, pooled, to the coarse ring
                    ring, (frame, k_old, v_old) = self.pooled[layer][h], slots[d["slot"]]
                    given = [frame, pool(k_old, self.grid), pool(v_old, self.grid)]
                    if len(ring) < 4 * role.coarse:
                        ring.append(given)
                    else:
                        ring[self.replaced[layer][h] % len(ring)] = given
                    self.replaced[layer][h] += 1
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
                retrieved = o.retrieve(self.layer, h, b, q[b, :, h].mean(0)) if o.policy.roles[o.headmap.roles[self.layer][h]].retrieval else []
                entries, chunk_pos = o.view(self.layer, h, retrieved)
                ks, vs, counts = [], [], []
                for _, keys, values, stands_for, p in entries:
                    if keys is None:  # an empty coarse slot: a position, no tokens
                        continue
                    ks.append(rope_frame(keys[b], p, o.grid, pooled=stands_for > 1))
                    vs.append(values[b])
                    counts.append(torch.full((keys.shape[1],), stands_for, dtype=torch.float64))
                qs = []
                for i, p in enumerate(chunk_pos):
                    ks.append(rope_frame(k[b, i * T : (i + 1) * T, h], p, o.grid))
                    vs.append(v[b, i * T : (i + 1) * T, h])
                    qs.append(rope_frame(q[b, i * T : (i + 1) * T, h], p, o.grid))
                    counts.append(torch.ones(T, dtype=torch.float64))
                K, V, Q = torch.cat(ks), torch.cat(vs), torch.cat(qs)
                weights = torch.softmax(Q @ K.T / math.sqrt(head_dim) + torch.cat(counts).log(), dim=-1)
                out[b, :, h] = weights @ V
                if o.attention_log is not None:
                    key_frames = [e[0] for e in entries if e[1] is not None] + list(range(o.first_frame, o.first_frame + o.chunk_frames))
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
