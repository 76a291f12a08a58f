"""HeadwiseCache: every layer's role groups, their stores, and the chunk they are working on.

The sampler drives it: `allocate` once, then per chunk `begin_chunk`, the denoising forwards, and one
forward inside `commit()` whose keys/values are kept. The attn1 processors only call `layer.attend`.
Every buffer is sized by the policy, never by the length of the video: a session has no fixed end.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from .rope import Rope, rotate
from .episodic import ACTIONS, EpisodicConfig, EpisodicMemory, read_log
from .headmap import HeadMap
from .policy import Policy
from .store import KVStore


class LayerCache:
    """The role groups of one layer; merges their attention outputs back into head order."""

    def __init__(self, owner: "HeadwiseCache", stores: list[KVStore]):
        self.owner = owner
        self.stores = stores

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k, v [B, H, S, D] (k before RoPE) -> [B, H, S, D]."""
        if self.owner.recache is not None:
            return self.owner.recache_attend(self, q, k, v)
        commit = self.owner.committing
        if len(self.stores) == 1 and len(self.stores[0].heads) == q.shape[1]:
            return self.stores[0].attend(q, k, v, commit)
        out = torch.empty_like(q)
        for store in self.stores:
            if store.heads:  # (a store of no heads here only takes part in its group's episodic decisions)
                idx = store.head_index
                out[:, idx] = store.attend(q[:, idx], k[:, idx], v[:, idx], commit)
        return out


class HeadwiseCache:
    def __init__(
        self,
        policy: Policy,
        headmap: HeadMap,
        head_dim: int,
        window_frames: int,
        chunk_frames: int = 3,
        episodic: EpisodicConfig | None = EpisodicConfig(),
        keep_log: bool = False,
        split=None,
    ):
        """window_frames: what a role that keeps every frame (`full`) can hold: the trained window.
        episodic: the episodic memory's settings for roles with episodic slots (None: keep nothing there).
        keep_log: keep every episodic decision (else only the current chunk's: memory stays constant).
        split: this rank's heads under head parallelism (engine/parallel.HeadSplit; None: every head here).
        A store's `heads` index the attention's input (this rank's heads), its `model_heads` the model's."""
        self.policy, self.headmap = policy, headmap
        self.head_dim, self.chunk_frames = head_dim, chunk_frames
        self.committing = False
        self.recache = None  # while re-encoding after a prompt switch: (first frame, rotations at 0..R-1,
        # rotations at the frames' absolute positions, block-causal mask)
        self.episodic_log: list[dict] = []  # admit / replace / merge decisions, in order
        self.keep_log = keep_log
        self.split = split
        self.layers = []
        for layer in range(headmap.num_layers):
            owned = split.owned[layer] if split is not None else list(range(headmap.num_heads))
            stores = []
            for name, role in policy.roles.items():
                group = headmap.heads_of(layer, name)
                mine = [h for h in owned if headmap.roles[layer][h] == name]
                if not mine and not (group and role.episodic and episodic):
                    continue
                memory = None
                if role.episodic and episodic:
                    memory = EpisodicMemory(role.episodic, episodic, self.episodic_log, len(group), split.comm.reduce if split else None)
                stores.append(KVStore(role, [owned.index(h) for h in mine], window_frames, chunk_frames, layer, name, memory, mine))
            self.layers.append(LayerCache(self, stores))

    def stores(self):
        return [s for layer in self.layers for s in layer.stores]

    def allocate(self, batch: int, grid_hw: tuple[int, int], dtype, device) -> None:
        self.rope = Rope(self.head_dim, grid_hw, device=device)
        self.episodic_log.clear()
        self.tally = torch.zeros(len(ACTIONS), dtype=torch.int64, device=device)  # decisions by action, all layers
        for store in self.stores():
            store.allocate(batch, self.rope.tokens_per_frame, self.head_dim, dtype, device, grid_hw)
            store.head_index = torch.tensor(store.heads, dtype=torch.long, device=device)
            if store.memory is not None:
                store.memory.tally = self.tally

    def buffers(self):
        """Every preallocated tensor the forwards read or write in place."""
        for store in self.stores():
            yield from (t for t in (store.k_raw, store.k_ctx, store.v_ctx, store.k_new, store.v_new, store.chunk_rot, store.bias) if t is not None)
            if store.memory is not None:
                yield from (store.memory.usage, store.memory.queries, store.memory.mass)
            if store.archive is not None:
                yield from (store.archive.k, store.archive.v, store.archive.desc, store.archive.frames, store.archive.rot)

    @property
    def steady(self) -> bool:
        """Every store is full and nothing observes the attention: each chunk's forwards now have the same
        shapes and read only preallocated buffers (the compiled step's precondition)."""
        return all(s.steady and not s.observers for s in self.stores())

    def decisions(self) -> list[dict]:
        """The logged episodic decisions (the newest chunk's unless keep_log), read from the device."""
        return read_log(self.episodic_log)

    def decision_counts(self) -> dict[str, int]:
        return dict(zip(ACTIONS, self.tally.tolist()))

    def begin_chunk(self, first_frame: int, chunk_frames: int) -> None:
        if not self.keep_log:
            self.episodic_log.clear()
        memo: dict[tuple, torch.Tensor] = {}

        def freqs_of(positions):
            key = tuple(positions)
            if key not in memo:
                memo[key] = self.rope.freqs(key)
            return memo[key]

        for store in self.stores():
            store.begin_chunk(self.rope, first_frame, chunk_frames, freqs_of)

    def adopt(self, other: "HeadwiseCache") -> None:
        """Take over the frames of a `full` cache with compact positions (raw keys kept): each frame is
        committed, in time order, to every store here as if it had just been generated."""
        C = self.chunk_frames
        for mine, theirs in zip(self.layers, other.layers):
            (source,) = theirs.stores
            for slot, frame in sorted(enumerate(source.frames), key=lambda sf: sf[1]):
                tokens = source._tokens(slot)
                for store in mine.stores:
                    store.first_frame, store.chunk_len = frame - frame % C, C
                    k = source.k_raw[:, store.head_index, tokens]
                    k_rot = rotate(k, self.rope.freqs([frame])) if store.absolute else None
                    store.commit_frame(frame, k, source.v_ctx[:, store.head_index, tokens], k_rot)

    @contextmanager
    def recaching(self, first_frame: int, num_frames: int, origin: int = 0):
        """Forwards inside this block re-encode frames first_frame.. (their clean latents, a new prompt):
        block-causal attention among them, and the recent frames of `recache` roles are rewritten. Chunks
        start at frame `origin` (1 after a lone first frame, as an image start commits it)."""
        chunk_of = torch.arange(num_frames * self.rope.tokens_per_frame, device=self.rope.device)
        chunk_of = torch.div(first_frame - origin + chunk_of // self.rope.tokens_per_frame, self.chunk_frames, rounding_mode="floor")
        mask = chunk_of[:, None] >= chunk_of[None, :]
        self.recache = (first_frame, self.rope.freqs(range(num_frames)), self.rope.freqs(range(first_frame, first_frame + num_frames)), mask)
        try:
            yield
        finally:
            self.recache = None

    def recache_attend(self, layer: LayerCache, q, k, v) -> torch.Tensor:
        first_frame, local, absolute, mask = self.recache
        out = F.scaled_dot_product_attention(rotate(q, local), rotate(k, local), v, attn_mask=mask)
        for store in layer.stores:
            if store.role.on_switch == "recache" and store.heads:
                idx = store.head_index
                k_rot = rotate(k[:, idx], absolute) if store.absolute else None
                store.rewrite_recent(first_frame, k[:, idx], v[:, idx], k_rot)
        return out

    @contextmanager
    def commit(self):
        """The forward inside this block is a commit pass: it stages the current chunk's keys/values, which
        are filed into the slots when the block ends (after the forward, outside any compiled region)."""
        for store in self.stores():
            if store.memory is not None and store.memory.held:
                store.memory.draw_queries(store.chunk_len * store.T)
        self.committing = True
        try:
            yield
        finally:
            self.committing = False
        for store in self.stores():
            if store.memory is not None and store.memory.held:
                store.memory.update_usage(store)
        for store in self.stores():
            store.commit_chunk()

    def nbytes(self) -> int:
        return sum(s.nbytes() for s in self.stores())

    def head_bytes(self) -> int:
        """Bytes kept per head (keys, values, archives), summed: under head parallelism, this rank's heads' share."""
        return sum(s.head_bytes() for s in self.stores())

    def max_position(self) -> int:
        """The largest temporal position used by the current chunk (queries included)."""
        return max(s.chunk_positions(s.first_frame, s.chunk_len)[-1] for s in self.stores())
