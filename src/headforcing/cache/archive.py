"""Retrieval memory for one role group: an archive of frames that left `recent`, and per-head top-k reads.

A Retrieved(k, archive=n, every=p) segment gives a store two things:
  - the archive, a ring of the last n frames that left the recent ring (only frames whose index is a multiple
    of p): their raw keys (before RoPE) and values at full resolution, and for scoring one descriptor per
    frame and head, the unit mean raw key. Bytes per archived frame: heads x (2 T D x dtype + 4 D);
  - k retrieved slots in the store's context. At every forward (each denoising step and the commit pass),
    each head scores the archived frames by the cosine between its queries' mean (before RoPE) and each
    frame's descriptor, keeps its top k, orders them in time, and copies them into the slots, rotated to k
    consecutive positions (where the policy's `memory_at` puts the role's memory).
Admission is decided on the host (every leaving frame, or every p-th: known without the device); selection
happens on the device inside the forward (topk, sort, gather: no host reads, fixed shapes), so a compiled
step reads only preallocated buffers. Nothing grows with the video: the archive is a ring.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import whole
from .rope import rotate

EMPTY = -1  # the frame of an archive entry not yet filled


class Archive:
    def __init__(self, slots: int, size: int, every: int = 1):
        self.slots, self.size, self.every = slots, size, every
        self.held = self.next = 0  # filled entries, ring position of the next admission (host-known)
        self.full = False  # enough frames archived to fill every retrieved slot: from here the slots are attended
        # (a flag, not `held >= slots`, so that a compiled step guards on it and not on the growing count)
        self.k = self.v = self.desc = self.frames = self.rot = None

    def allocate(self, batch: int, heads: int, tokens: int, head_dim: int, dtype, device) -> None:
        self.T = tokens
        self.k = torch.zeros(batch, heads, self.size, tokens, head_dim, dtype=dtype, device=device)  # raw keys
        self.v = torch.zeros_like(self.k)
        self.desc = torch.zeros(batch, heads, self.size, head_dim, dtype=torch.float32, device=device)  # unit mean keys
        self.frames = torch.full((self.size,), EMPTY, dtype=torch.int64, device=device)
        self.rot = torch.zeros(self.slots * tokens, head_dim // 2, 2, device=device)  # the slots' rotations this chunk
        self.held = self.next = 0
        self.full = False

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.k, self.v, self.desc, self.frames, self.rot))

    def offer(self, frame: int, k_raw: torch.Tensor, v: torch.Tensor) -> None:
        """A frame leaving `recent`: k_raw, v [B, Hg, T, D]. Archived if its index is a multiple of `every`."""
        if frame % self.every:
            return
        at = self.next
        self.k[:, :, at] = k_raw
        self.v[:, :, at] = v
        self.desc[:, :, at] = F.normalize(k_raw.float().mean(-2), dim=-1)
        self.frames[at] = frame
        self.next = (at + 1) % self.size
        self.held = min(self.held + 1, self.size)
        self.full = self.held >= self.slots

    def select(self, q: torch.Tensor) -> torch.Tensor:
        """Each head's top-k archived frames for queries q [B, Hg, S, D] (before RoPE), in time order:
        entry indices [B, Hg, k]. Empty entries are never chosen while k are filled."""
        query = F.normalize(q.float().mean(-2), dim=-1)  # [B, Hg, D]
        score = (self.desc * query[:, :, None]).sum(-1)  # [B, Hg, n]
        score = score.masked_fill(self.frames == EMPTY, float("-inf"))
        index = score.topk(self.slots, dim=-1).indices  # [B, Hg, k]
        order = self.frames[index].argsort(dim=-1)  # time order of the chosen frames
        return index.gather(-1, order)

    def read(self, q: torch.Tensor, k_out: torch.Tensor, v_out: torch.Tensor) -> None:
        """Fill the retrieved slots: k_out, v_out [B, Hg, k*T, D] views of the store's context buffers
        (keys rotated to this chunk's slot positions)."""
        index = self.select(q)
        B, Hg, k = index.shape
        gather = index[:, :, :, None, None].expand(B, Hg, k, self.T, self.k.shape[-1])
        k_out.copy_(rotate(self.k.gather(2, gather).flatten(2, 3), self.rot))
        v_out.copy_(self.v.gather(2, gather).flatten(2, 3))

    def chosen_frames(self, q: torch.Tensor) -> torch.Tensor:
        """The frames each head would read for queries q: [B, Hg, k] (for inspection and tests)."""
        return self.frames[self.select(q)]

    # ---- state -----------------------------------------------------------------------------------------
    def state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """(JSON-able fields, tensors) of the filled entries, enough to continue bit-exactly."""
        used = slice(0, self.held)
        tensors = dict(k=self.k[:, :, used], v=self.v[:, :, used], desc=self.desc[:, :, used])
        return dict(held=self.held, next=self.next, frames=self.frames[used].tolist()), tensors

    def load_state(self, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
        """Inverse of `state()`; the caller has checked the shapes (`check_state`)."""
        used = slice(0, meta["held"])
        for name in ("k", "v", "desc"):
            buffer = getattr(self, name)
            buffer[:, :, used] = tensors[name].to(buffer.device, buffer.dtype)
        self.frames.fill_(EMPTY)
        self.frames[used] = torch.tensor(meta["frames"], dtype=torch.int64)
        self.held, self.next = meta["held"], meta["next"]
        self.full = self.held >= self.slots

    def check_state(self, meta, tensors: dict) -> str | None:
        """What is wrong with a saved archive for this one (None: it fits)."""
        if not (isinstance(meta, dict) and whole(meta.get("held")) and whole(meta.get("next"))):
            return "fields"
        held = meta["held"]
        if not (held <= self.size and meta["next"] < self.size and (held == self.size or meta["next"] == held)):
            return "ring position"
        frames = meta.get("frames")
        if not (isinstance(frames, list) and len(frames) == held and all(whole(f) for f in frames)):
            return "frames"
        for name, like in (("k", self.k), ("v", self.v), ("desc", self.desc)):
            shape = (*like.shape[:2], held, *like.shape[3:])
            if name not in tensors or tuple(tensors[name].shape) != shape:
                return f"{name} (expected shape {shape})"
        return None
