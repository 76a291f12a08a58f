"""KVStore: the frames that one role group of one layer keeps, in preallocated buffers.

Slots are laid out [sink | recent | episodic] (in latent frames of T tokens each). Frames enter in time
order: the sink fills first, then the recent ring, and only frames leaving the recent ring can reach
the episodic slots, so the occupied slots are always a prefix. Attention then runs over one contiguous
slice [occupied slots | current chunk] of the context buffers: one SDPA call per group.

Keys are kept before RoPE (`k_raw`) for compact positions, which change from chunk to chunk; `k_ctx`
holds the rotated copy, made once per chunk. With absolute positions a key's rotation never changes, so
it is rotated once when committed and no raw copy is kept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..rope import Rope, rotate
from .policy import RolePolicy


class DropEpisodic:
    """The episodic hook with no memory yet: frames leaving `recent` are dropped.

    An episodic memory's `choose(store, frame, slot)` sees the frame leaving the recent ring (its keys and
    values are in `slot` of the store's buffers) and returns the episodic slot it overwrites
    (0..slots-1; the next free one, or an occupied one) or None to drop it."""

    def choose(self, store: "KVStore", frame: int, slot: int) -> int | None:
        return None


class KVStore:
    def __init__(self, role: RolePolicy, heads: list[int], max_frames: int, chunk_frames: int, episodic=None):
        self.role = role
        self.heads = heads
        self.absolute = role.positions == "absolute"
        self.n_sink = max_frames if role.sink is None else role.sink
        self.n_recent = role.recent
        self.n_episodic = role.episodic
        self.capacity = self.n_sink + self.n_recent + self.n_episodic
        self.chunk_frames = chunk_frames
        self.episodic = episodic or DropEpisodic()
        self.frames: list[int] = []  # frame index held by each occupied slot (a prefix of the slots)
        self.recent_next = 0  # ring position of the oldest recent frame, once the ring is full
        self.k_raw = self.k_ctx = self.v_ctx = None

    # ---- buffers -------------------------------------------------------------------------------------
    def allocate(self, batch: int, tokens_per_frame: int, head_dim: int, dtype, device) -> None:
        self.T = tokens_per_frame
        size = (self.capacity + self.chunk_frames) * tokens_per_frame
        shape = (batch, len(self.heads), size, head_dim)  # [B, Hg, (slots + chunk) * T, D]
        self.k_ctx = torch.zeros(shape, dtype=dtype, device=device)
        self.v_ctx = torch.zeros(shape, dtype=dtype, device=device)
        if not self.absolute:
            raw = (batch, len(self.heads), self.capacity * tokens_per_frame, head_dim)
            self.k_raw = torch.zeros(raw, dtype=dtype, device=device)
        self.frames, self.recent_next = [], 0

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.k_raw, self.k_ctx, self.v_ctx) if t is not None)

    def _tokens(self, slot: int, count: int = 1) -> slice:
        return slice(slot * self.T, (slot + count) * self.T)

    # ---- positions -----------------------------------------------------------------------------------
    def positions(self, first_frame: int, chunk_frames: int) -> tuple[list[int], list[int]]:
        """(temporal position of each occupied slot, of each frame of the current chunk)."""
        if self.absolute:
            return list(self.frames), list(range(first_frame, first_frame + chunk_frames))
        order = sorted(range(len(self.frames)), key=self.frames.__getitem__)
        slot_pos = [0] * len(self.frames)
        for rank, slot in enumerate(order):
            slot_pos[slot] = rank
        n = len(self.frames)
        return slot_pos, list(range(n, n + chunk_frames))

    def begin_chunk(self, rope: Rope, first_frame: int, chunk_frames: int, freqs_of) -> None:
        """Fix this chunk's positions; re-rotate the kept keys (compact) once for the chunk's forwards."""
        slot_pos, chunk_pos = self.positions(first_frame, chunk_frames)
        self.first_frame, self.chunk_len = first_frame, chunk_frames
        self.chunk_freqs = freqs_of(chunk_pos)  # [C*T, D/2]
        if not self.absolute and self.frames:
            n = len(self.frames)
            self.k_ctx[:, :, self._tokens(0, n)] = rotate(self.k_raw[:, :, self._tokens(0, n)], freqs_of(slot_pos))

    # ---- attention -----------------------------------------------------------------------------------
    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, commit: bool) -> torch.Tensor:
        """q, k, v [B, Hg, C*T, D] of the current chunk (k before RoPE) -> attention output [B, Hg, C*T, D]."""
        start = len(self.frames) * self.T
        end = start + q.shape[2]
        self.k_ctx[:, :, start:end] = rotate(k, self.chunk_freqs)
        self.v_ctx[:, :, start:end] = v
        out = F.scaled_dot_product_attention(rotate(q, self.chunk_freqs), self.k_ctx[:, :, :end], self.v_ctx[:, :, :end])
        if commit:
            self._commit(k, start)
        return out

    def _commit(self, k: torch.Tensor, chunk_start: int) -> None:
        """Keep the chunk's frames (clean-context pass). Its rotated keys and values sit at chunk_start."""
        for i in range(self.chunk_len):
            frame = self.first_frame + i
            src = slice(chunk_start + i * self.T, chunk_start + (i + 1) * self.T)
            slot = self._slot_for(frame)
            if slot is None:
                continue
            dst = self._tokens(slot)
            if self.k_raw is not None:
                self.k_raw[:, :, dst] = k[:, :, i * self.T : (i + 1) * self.T]
            self.k_ctx[:, :, dst] = self.k_ctx[:, :, src]
            self.v_ctx[:, :, dst] = self.v_ctx[:, :, src]

    def _slot_for(self, frame: int) -> int | None:
        """The slot a newly committed frame takes (None: the role does not keep it)."""
        kept = self.n_sink + self.n_recent
        if len(self.frames) < kept:  # sink, then recent, still filling
            self.frames.append(frame)
            return len(self.frames) - 1
        if self.n_recent == 0:  # a sink-only role keeps nothing after its sink
            return None
        slot = self.n_sink + self.recent_next
        self.recent_next = (self.recent_next + 1) % self.n_recent
        self._offer_episodic(slot)
        self.frames[slot] = frame
        return slot

    def _offer_episodic(self, slot: int) -> None:
        """The frame in `slot` is leaving the recent ring: the episodic memory may keep it."""
        if self.n_episodic == 0:
            return
        first = self.n_sink + self.n_recent
        choice = self.episodic.choose(self, self.frames[slot], slot)
        if choice is None:
            return
        held = len(self.frames) - first
        if not 0 <= choice <= min(held, self.n_episodic - 1):
            raise ValueError(f"episodic slot {choice} is outside 0..{min(held, self.n_episodic - 1)}")
        src, dst = self._tokens(slot), self._tokens(first + choice)
        for buf in (self.k_raw, self.k_ctx, self.v_ctx):
            if buf is not None:
                buf[:, :, dst] = buf[:, :, src]
        if choice == held:
            self.frames.append(self.frames[slot])
        else:
            self.frames[first + choice] = self.frames[slot]
