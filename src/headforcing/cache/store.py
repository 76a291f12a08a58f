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

import math

import torch
import torch.nn.functional as F

from .rope import Rope, rotate
from .policy import RolePolicy


class KVStore:
    def __init__(
        self,
        role: RolePolicy,
        heads: list[int],
        window_frames: int,
        chunk_frames: int,
        layer: int = 0,
        name: str = "all",
        memory=None,
    ):
        self.role, self.heads, self.layer, self.name = role, heads, layer, name
        self.absolute = role.positions == "absolute"
        self.n_sink = window_frames if role.sink is None else role.sink
        self.n_recent = role.recent
        self.n_episodic = role.episodic
        self.episodic_first = self.n_sink + self.n_recent
        self.capacity = self.episodic_first + self.n_episodic
        self.chunk_frames = chunk_frames
        self.memory = memory  # decides what happens to frames leaving `recent` (None: they are dropped)
        self.observers = []  # callables (store, q_rot, keys_end, committing) that read attention, e.g. profilers
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
        if self.memory is not None:
            self.memory.reset()

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
        q_rot, k_rot = rotate(q, self.chunk_freqs), rotate(k, self.chunk_freqs)
        self.k_ctx[:, :, start:end] = k_rot
        self.v_ctx[:, :, start:end] = v
        out = F.scaled_dot_product_attention(q_rot, self.k_ctx[:, :, :end], self.v_ctx[:, :, :end])
        for observe in self.observers:
            observe(self, q_rot, end, commit)
        if commit:  # from the inputs, not the buffers: committing can move slots over the chunk's tail
            for i in range(self.chunk_len):
                t = slice(i * self.T, (i + 1) * self.T)
                self.commit_frame(self.first_frame + i, k[:, :, t], v[:, :, t], k_rot[:, :, t])
        return out

    def frame_mass(self, q_rot: torch.Tensor, end: int, queries: torch.Tensor) -> torch.Tensor:
        """Softmax attention mass of the given query tokens on each key frame (occupied slots, then the
        current chunk's frames): [B, Hg, Q, end // T], float32. Never the full attention matrix."""
        q = q_rot[:, :, queries].float()  # [B, Hg, Q, D]
        scores = q @ self.k_ctx[:, :, :end].float().transpose(-1, -2) / math.sqrt(q.shape[-1])
        return scores.softmax(-1).unflatten(-1, (end // self.T, self.T)).sum(-1)

    # ---- committing ----------------------------------------------------------------------------------
    def commit_frame(self, frame: int, k_raw: torch.Tensor, v: torch.Tensor, k_rot: torch.Tensor | None = None) -> None:
        """Keep one frame: k_raw, v [B, Hg, T, D] (k_rot: its keys rotated at its absolute position)."""
        slot = self._slot_for(frame)
        if slot is not None:
            self._write(slot, k_raw, v, k_rot)

    def _write(self, slot: int, k_raw: torch.Tensor, v: torch.Tensor, k_rot: torch.Tensor | None) -> None:
        """One frame's keys/values into a slot: raw keys if kept, rotated keys if absolute, values."""
        dst = self._tokens(slot)
        if self.k_raw is not None:
            self.k_raw[:, :, dst] = k_raw
        if self.absolute:
            self.k_ctx[:, :, dst] = k_rot
        self.v_ctx[:, :, dst] = v

    def _slot_for(self, frame: int) -> int | None:
        """The slot a newly committed frame takes (None: the role does not keep it)."""
        if len(self.frames) < self.episodic_first:  # sink, then recent, still filling
            self.frames.append(frame)
            return len(self.frames) - 1
        if self.n_recent == 0:  # a sink-only role keeps nothing after its sink
            return None
        slot = self.n_sink + self.recent_next
        self.recent_next = (self.recent_next + 1) % self.n_recent
        if self.memory is not None:
            self.memory.offer(self, slot)
        self.frames[slot] = frame
        return slot

    def recent_slots(self) -> list[int]:
        return list(range(self.n_sink, min(len(self.frames), self.episodic_first)))

    def rewrite_recent(self, first_frame: int, k_raw: torch.Tensor, v: torch.Tensor, k_rot: torch.Tensor) -> None:
        """Replace the keys/values of the recent frames among first_frame.. with new ones (a re-encoding):
        k_raw, v, k_rot [B, Hg, R*T, D] for frames first_frame .. first_frame + R - 1 (k_rot: absolute)."""
        count = k_raw.shape[2] // self.T
        for slot in self.recent_slots():
            i = self.frames[slot] - first_frame
            if 0 <= i < count:
                src = slice(i * self.T, (i + 1) * self.T)
                self._write(slot, k_raw[:, :, src], v[:, :, src], k_rot[:, :, src] if self.absolute else None)

    # ---- slot operations for the episodic memory ------------------------------------------------------
    def copy_slot(self, src: int, dst: int) -> None:
        """dst := src (dst may be the next free slot)."""
        for buf in (self.k_raw, self.k_ctx, self.v_ctx):
            if buf is not None:
                buf[:, :, self._tokens(dst)] = buf[:, :, self._tokens(src)]
        if dst == len(self.frames):
            self.frames.append(self.frames[src])
        else:
            self.frames[dst] = self.frames[src]

    def blend_slot(self, src: int, dst: int, weight: float) -> None:
        """dst := (1 - weight) dst + weight src, for raw keys and values (dst keeps its frame index)."""
        for buf in (self.k_raw, self.v_ctx):
            d, s = buf[:, :, self._tokens(dst)], buf[:, :, self._tokens(src)]
            buf[:, :, self._tokens(dst)] = ((1 - weight) * d.float() + weight * s.float()).to(buf.dtype)

    def key_descriptor(self, slot: int) -> torch.Tensor:
        """Unit mean raw key of a slot per head: [B, Hg, D] float32."""
        return F.normalize(self.k_raw[:, :, self._tokens(slot)].float().mean(2), dim=-1)
