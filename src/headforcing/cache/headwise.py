"""HeadwiseCache: every layer's role groups, their stores, and the chunk they are working on.

The sampler drives it: `allocate` once, then per chunk `begin_chunk`, the denoising forwards, and one
forward inside `commit()` whose keys/values are kept. The attn1 processors only call `layer.attend`.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from ..rope import Rope
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
        commit = self.owner.committing
        if len(self.stores) == 1:
            return self.stores[0].attend(q, k, v, commit)
        out = torch.empty_like(q)
        for store in self.stores:
            idx = store.head_index
            out[:, idx] = store.attend(q[:, idx], k[:, idx], v[:, idx], commit)
        return out


class HeadwiseCache:
    def __init__(
        self,
        policy: Policy,
        headmap: HeadMap,
        head_dim: int,
        max_frames: int,
        chunk_frames: int = 3,
        episodic_factory=None,
    ):
        self.policy, self.headmap = policy, headmap
        self.head_dim, self.chunk_frames = head_dim, chunk_frames
        self.committing = False
        self.layers = []
        for layer in range(headmap.num_layers):
            stores = []
            for name, role in policy.roles.items():
                heads = headmap.heads_of(layer, name)
                if heads:
                    episodic = episodic_factory(layer, name) if episodic_factory and role.episodic else None
                    stores.append(KVStore(role, heads, max_frames, chunk_frames, episodic))
            self.layers.append(LayerCache(self, stores))

    def stores(self):
        return [s for layer in self.layers for s in layer.stores]

    def install(self, transformer) -> None:
        """Route every self-attention (attn1) of the DiT through this cache."""
        from ..attention import HeadwiseAttnProcessor

        if len(transformer.blocks) != len(self.layers):
            raise ValueError(f"cache has {len(self.layers)} layers, the model {len(transformer.blocks)}")
        for block, layer in zip(transformer.blocks, self.layers):
            block.attn1.set_processor(HeadwiseAttnProcessor(layer))

    def allocate(self, batch: int, grid_hw: tuple[int, int], dtype, device) -> None:
        self.rope = Rope(self.head_dim, grid_hw, device=device)
        for store in self.stores():
            store.allocate(batch, self.rope.tokens_per_frame, self.head_dim, dtype, device)
            store.head_index = torch.tensor(store.heads, device=device)

    def begin_chunk(self, first_frame: int, chunk_frames: int) -> None:
        memo: dict[tuple, torch.Tensor] = {}

        def freqs_of(positions):
            key = tuple(positions)
            if key not in memo:
                memo[key] = self.rope.freqs(key)
            return memo[key]

        for store in self.stores():
            store.begin_chunk(self.rope, first_frame, chunk_frames, freqs_of)

    @contextmanager
    def commit(self):
        """Forwards inside this block keep the current chunk's keys/values."""
        self.committing = True
        try:
            yield
        finally:
            self.committing = False

    def nbytes(self) -> int:
        return sum(s.nbytes() for s in self.stores())

    def max_position(self) -> int:
        """The largest temporal position used by the current chunk (queries included)."""
        return max(max(s.positions(s.first_frame, s.chunk_len)[1]) for s in self.stores())
