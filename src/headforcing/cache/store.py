"""KVStore: the frames that one role group of one layer keeps, in preallocated buffers.

Slots are laid out [sink | recent | episodic | coarse | retrieved] (in latent frames of T tokens each). Frames enter in
time order: the sink fills first, then the recent ring, and only frames leaving the recent ring can reach
the episodic slots, so the occupied slots are always a prefix. Attention then runs over one contiguous
slice [occupied slots | current chunk] of the context buffers: one SDPA call per group.

The coarse level (a Coarse segment) holds what the episodic slots give up when a novel frame replaces one:
the slot's frame pooled 2x2 in space (T/4 tokens), four pooled frames a slot, the oldest overwritten first.
It is attended from the moment the episodic slots are full (so shapes stay fixed), through an additive
bias on its keys (`bias`): -inf where no pooled frame is held yet, log 4 where one is (a pooled token
stands for four, as in token merging's proportional attention).

Retrieved slots (a Retrieved segment, cache/archive.py) are refilled inside every forward from the store's
archive of frames that left `recent`; they are attended once the archive holds as many frames as there are
slots and every other slot is in use (so the occupied slots stay a prefix and shapes fixed from then on).

Keys are kept before RoPE (`k_raw`) for compact positions, which change from chunk to chunk; `k_ctx`
holds the rotated copy, made once per chunk. With absolute positions a key's rotation never changes, so
it is rotated once when committed and no raw copy is kept.

Static steady state: once every slot is occupied (`steady`), a chunk's forwards see the same shapes every
time and touch only preallocated buffers: the chunk's rotations are copied into `chunk_rot`, the commit
pass stages the chunk's raw keys/values in `k_new`/`v_new`, and `commit_chunk()` files them into slots
after the forward (host bookkeeping and the episodic memory's decisions stay outside the compiled step).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import UsageError
from .archive import Archive
from .episodic import EMPTY
from .rope import Rope, rotate
from .policy import RolePolicy


SHARED = ("memory.generator",)  # the parts of a store's state that are one per role group, not one per head


def part(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of one part of a saved state (named `prefix.name`), under the names the part gave them."""
    return {name.removeprefix(prefix + "."): t for name, t in tensors.items() if name.startswith(prefix + ".")}


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
        model_heads: list[int] | None = None,
    ):
        """heads: which heads of the attention's input this store attends for; model_heads: the same heads
        numbered in the model's layer (they differ under head parallelism, engine/parallel.py)."""
        self.role, self.heads, self.layer, self.name = role, heads, layer, name
        self.model_heads = heads if model_heads is None else model_heads
        self.absolute = role.positions == "absolute"
        self.n_sink = window_frames if role.sink is None else role.sink
        self.n_recent = role.recent
        self.n_episodic = role.episodic
        self.n_coarse = role.coarse if memory is not None else 0  # (no episodic memory: nothing to give up)
        self.episodic_first = self.n_sink + self.n_recent
        self.coarse_first = self.episodic_first + self.n_episodic
        self.retrieved_first = self.coarse_first + self.n_coarse
        self.n_retrieved = role.retrieved
        self.capacity = self.retrieved_first + self.n_retrieved
        seg = role.retrieval
        self.archive = Archive(seg.slots, seg.archive, seg.every) if seg is not None else None
        self.chunk_frames = chunk_frames
        self.memory = memory  # decides what happens to frames leaving `recent` (None: they are dropped)
        self.observers = []  # callables (store, q_rot, keys_end, committing) that read attention, e.g. profilers
        self.frames: list[int] = []  # frame index held by each occupied sink/recent slot (a prefix of them)
        self.recent_next = 0  # ring position of the oldest recent frame, once the ring is full
        self.k_raw = self.k_ctx = self.v_ctx = self.k_new = self.v_new = self.chunk_rot = self.bias = None

    # ---- buffers -------------------------------------------------------------------------------------
    def allocate(self, batch: int, tokens_per_frame: int, head_dim: int, dtype, device, grid_hw: tuple[int, int] | None = None) -> None:
        self.T = T = tokens_per_frame
        self.grid_hw = grid_hw or (1, T)
        B, Hg, C = batch, len(self.heads), self.chunk_frames
        self.k_ctx = torch.zeros(B, Hg, (self.capacity + C) * T, head_dim, dtype=dtype, device=device)  # [slots | chunk]
        self.v_ctx = torch.zeros_like(self.k_ctx)
        self.chunk_rot = torch.zeros(C * T, head_dim // 2, 2, device=device)  # the chunk's rotations (cos, sin)
        self.k_raw = self.k_new = self.v_new = None
        if not self.absolute:
            self.k_raw = torch.zeros(B, Hg, self.retrieved_first * T, head_dim, dtype=dtype, device=device)  # kept slots
            self.k_new = torch.zeros(B, Hg, C * T, head_dim, dtype=dtype, device=device)  # the committed chunk's raw keys
        self.bias = None
        if self.n_coarse:
            h, w = self.grid_hw
            if h % 2 or w % 2:
                raise UsageError(f"a Coarse segment pools 2x2 tokens; this token grid is {h}x{w}")
            self.bias = torch.zeros((self.capacity + C) * T, dtype=dtype, device=device)  # added to every query's scores
            self.bias[self._tokens(self.coarse_first, self.n_coarse)] = float("-inf")  # no pooled frame held yet
        if self.memory is not None or self.archive is not None:  # slot copies may land on the chunk's tail before it is committed
            self.v_new = torch.zeros(B, Hg, C * T, head_dim, dtype=dtype, device=device)
        if self.memory is not None:
            self.memory.reset(device, 4 * self.n_coarse)
        if self.archive is not None:
            self.archive.allocate(B, Hg, T, head_dim, dtype, device)
        self.frames, self.recent_next = [], 0

    def nbytes(self) -> int:
        bufs = (self.k_raw, self.k_ctx, self.v_ctx, self.k_new, self.v_new, self.chunk_rot, self.bias)
        return sum(t.numel() * t.element_size() for t in bufs if t is not None) + (self.archive.nbytes() if self.archive else 0)

    def head_bytes(self) -> int:
        """The bytes that are one share per head (keys, values, archived frames): what head parallelism divides."""
        bufs = (self.k_raw, self.k_ctx, self.v_ctx, self.k_new, self.v_new)
        if self.archive is not None:
            bufs += (self.archive.k, self.archive.v, self.archive.desc)
        return sum(t.numel() * t.element_size() for t in bufs if t is not None)

    def _tokens(self, slot: int, count: int = 1) -> slice:
        return slice(slot * self.T, (slot + count) * self.T)

    @property
    def coarse_active(self) -> bool:
        """The coarse slots are attended (empty pooled frames masked) once the episodic slots are full."""
        return bool(self.n_coarse) and self.memory.held == self.memory.slots

    @property
    def retrieval_active(self) -> bool:
        """The retrieved slots are attended once the archive can fill them and every slot before them is in use."""
        return self.archive is not None and self.archive.full and self._kept_full

    @property
    def _kept_full(self) -> bool:
        return len(self.frames) == self.episodic_first and (self.memory is None or self.memory.held == self.memory.slots)

    @property
    def kept(self) -> int:
        """Occupied slots holding kept frames: sink and recent, then episodic, then coarse (a prefix)."""
        if self.memory is None:
            return len(self.frames)
        return len(self.frames) + self.memory.held + (self.n_coarse if self.coarse_active else 0)

    @property
    def occupied(self) -> int:
        """Occupied slots: the kept ones, then the retrieved ones while attended (always a prefix of the slots)."""
        return self.kept + (self.n_retrieved if self.retrieval_active else 0)

    @property
    def steady(self) -> bool:
        """Every slot this role can fill is filled: from here on every chunk has the same shapes."""
        return self._kept_full and (self.archive is None or self.archive.full)

    def held_frames(self) -> list[int]:
        """The frame of each occupied slot, in slot order (reads the episodic slots from the device)."""
        return self.frames + (self.memory.frames[: self.memory.held].tolist() if self.memory is not None else [])

    # ---- positions -----------------------------------------------------------------------------------
    def positions(self, first_frame: int, chunk_frames: int) -> tuple[list[int], list[int]]:
        """(temporal position of each occupied slot, of each frame of the current chunk); reads the episodic
        slots' positions from the device (for inspection; chunks use `slot_positions` / `chunk_positions`)."""
        slot_pos = self.slot_positions()
        if isinstance(slot_pos, tuple):
            slot_pos = slot_pos[0] + slot_pos[1].tolist()
        if self.retrieval_active:
            slot_pos = slot_pos + self.retrieved_positions()
        return slot_pos, self.chunk_positions(first_frame, chunk_frames)

    def chunk_positions(self, first_frame: int, chunk_frames: int) -> list[int]:
        """Temporal positions of the chunk's frames: their indices (absolute), or right after the kept frames."""
        start = first_frame if self.absolute else self.occupied
        return list(range(start, start + chunk_frames))

    def slot_positions(self) -> list[int] | tuple[list[int], torch.Tensor]:
        """Positions of the occupied slots in slot order: a list, or (sink and recent slots' list, episodic
        and coarse slots' device tensor) when episodic slots are held. Compact positions rank the frames in
        time order; sink frames precede episodic ones (which left `recent`), which precede recent ones. A
        coarse slot is one position, its oldest pooled frame's (after every episodic frame while empty)."""
        if self.absolute:
            return list(self.frames)
        held = self.memory.held if self.memory is not None else 0
        sink = list(range(min(len(self.frames), self.n_sink)))
        recent = self.frames[self.n_sink :]
        order = sorted(recent)
        coarse = self.n_coarse if self.coarse_active else 0
        memory = held + coarse + (self.n_retrieved if self.retrieval_active else 0)  # memory slots, in positions
        near = self.role.memory_at == "near"
        first_recent = self.n_sink + (0 if near else memory)
        fixed = sink + [first_recent + order.index(f) for f in recent]
        if not held:
            return fixed
        first_memory = self.n_sink + (len(recent) if near else 0)
        episodic = self.memory.frames[:held]
        if coarse:
            episodic = torch.cat([episodic, self.memory.coarse_slot_frames()])  # [held + coarse]
        index = torch.arange(len(episodic), device=episodic.device)
        before = (episodic[None, :] < episodic[:, None]) | ((episodic[None, :] == episodic[:, None]) & (index[None, :] < index[:, None]))
        return fixed, first_memory + before.sum(1)  # [held (+ coarse)]: rank in time, ties in slot order

    def retrieved_positions(self) -> list[int]:
        """Positions of the retrieved slots (in time order among themselves): after the episodic and coarse
        ones, that is, right before the recent frames (`time`) or right before the chunk (`near`)."""
        recent = len(self.frames) - self.n_sink if self.role.memory_at == "near" else 0
        first = self.n_sink + (self.kept - len(self.frames)) + recent  # after sink, episodic and coarse (and recent)
        return list(range(first, first + self.n_retrieved))

    def begin_chunk(self, rope: Rope, first_frame: int, chunk_frames: int, freqs_of) -> None:
        """Fix this chunk's positions; re-rotate the kept keys (compact) once for the chunk's forwards."""
        self.first_frame, self.chunk_len = first_frame, chunk_frames
        n = self.kept  # retrieved slots are rotated when filled, inside the forward
        self.chunk_rot[: chunk_frames * self.T] = freqs_of(self.chunk_positions(first_frame, chunk_frames))  # [C*T, D/2, 2]
        if self.retrieval_active:
            self.archive.rot.copy_(freqs_of(self.retrieved_positions()))
        if not self.absolute and n:
            slot_pos = self.slot_positions()
            if isinstance(slot_pos, tuple):  # [sink | recent] from the host, [episodic | coarse] from the device
                held = self.memory.held
                parts = [freqs_of(slot_pos[0]), rope.freqs(slot_pos[1][:held])]
                if self.coarse_active:
                    parts.append(rope.freqs(slot_pos[1][held:], pooled=True))
                freqs = torch.cat(parts)
            else:
                freqs = freqs_of(slot_pos)
            self.k_ctx[:, :, self._tokens(0, n)] = rotate(self.k_raw[:, :, self._tokens(0, n)], freqs)

    # ---- attention -----------------------------------------------------------------------------------
    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, commit: bool) -> torch.Tensor:
        """q, k, v [B, Hg, C*T, D] of the current chunk (k before RoPE) -> attention output [B, Hg, C*T, D].
        A commit pass also stages the chunk for `commit_chunk()` and measures the episodic slots' usage."""
        S = q.shape[2]
        start = self.occupied * self.T
        end = start + S
        rot = self.chunk_rot[:S]
        q_rot, k_rot = rotate(q, rot), rotate(k, rot)
        self.k_ctx[:, :, start:end] = k_rot
        self.v_ctx[:, :, start:end] = v
        if self.retrieval_active:
            slots = self._tokens(self.retrieved_first, self.n_retrieved)
            self.archive.read(q, self.k_ctx[:, :, slots], self.v_ctx[:, :, slots])
        mask = self.bias[None, :end] if self.coarse_active else None  # [1, keys], broadcast over queries
        out = F.scaled_dot_product_attention(q_rot, self.k_ctx[:, :, :end], self.v_ctx[:, :, :end], attn_mask=mask)
        if commit:
            if self.k_new is not None:
                self.k_new[:, :, :S] = k
            if self.v_new is not None:
                self.v_new[:, :, :S] = v
            if self.memory is not None and self.memory.held:
                self.memory.measure(self, q_rot, end)
        for observe in self.observers:
            observe(self, q_rot, end, commit)
        return out

    def frame_mass(self, q_rot: torch.Tensor, end: int, queries: torch.Tensor) -> torch.Tensor:
        """Softmax attention mass of the given query tokens on each key frame (occupied slots, then the
        current chunk's frames): [B, Hg, Q, end // T], float32. Never the full attention matrix."""
        q = q_rot[:, :, queries].float()  # [B, Hg, Q, D]
        scores = q @ self.k_ctx[:, :, :end].float().transpose(-1, -2) / math.sqrt(q.shape[-1])
        if self.coarse_active:
            scores = scores + self.bias[:end].float()
        return scores.softmax(-1).unflatten(-1, (end // self.T, self.T)).sum(-1)

    # ---- committing ----------------------------------------------------------------------------------
    def commit_chunk(self) -> None:
        """After a commit pass: file the staged chunk's frames into their slots (host bookkeeping and the
        episodic memory's decisions, outside the forward)."""
        tail = self.occupied  # the chunk sat right after the occupied slots during the forward
        for i in range(self.chunk_len):
            t, at = self._tokens(i), self._tokens(tail + i)
            k_raw = self.k_new[:, :, t] if self.k_new is not None else None
            v = self.v_new[:, :, t] if self.v_new is not None else self.v_ctx[:, :, at]
            self.commit_frame(self.first_frame + i, k_raw, v, self.k_ctx[:, :, at] if self.absolute else None)

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
        if self.archive is not None:
            self.archive.offer(self.frames[slot], self.k_raw[:, :, self._tokens(slot)], self.v_ctx[:, :, self._tokens(slot)])
        self.frames[slot] = frame
        return slot

    def recent_slots(self) -> list[int]:
        return list(range(self.n_sink, len(self.frames)))

    def rewrite_recent(self, first_frame: int, k_raw: torch.Tensor, v: torch.Tensor, k_rot: torch.Tensor) -> None:
        """Replace the keys/values of the recent frames among first_frame.. with new ones (a re-encoding):
        k_raw, v, k_rot [B, Hg, R*T, D] for frames first_frame .. first_frame + R - 1 (k_rot: absolute)."""
        count = k_raw.shape[2] // self.T
        for slot in self.recent_slots():
            i = self.frames[slot] - first_frame
            if 0 <= i < count:
                src = slice(i * self.T, (i + 1) * self.T)
                self._write(slot, k_raw[:, :, src], v[:, :, src], k_rot[:, :, src] if self.absolute else None)

    # ---- state ---------------------------------------------------------------------------------------
    def state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """(JSON-able fields, tensors) of what this store keeps: its kept slots' keys (raw; rotated too with
        absolute positions) and values, frame bookkeeping, and its episodic memory's and archive's own state.
        (Retrieved slots are refilled from the archive at every forward: not saved.)"""
        used = slice(0, self.kept * self.T)
        tensors = {"v": self.v_ctx[:, :, used]}
        if self.k_raw is not None:
            tensors["k_raw"] = self.k_raw[:, :, used]
        if self.absolute:
            tensors["k_rot"] = self.k_ctx[:, :, used]
        meta = dict(layer=self.layer, role=self.name, heads=self.heads, frames=self.held_frames(), recent_next=self.recent_next,
                    memory=None, archive=None)
        for name in ("memory", "archive"):
            owner = getattr(self, name)
            if owner is not None:
                meta[name], parts = owner.state()
                tensors.update({f"{name}.{key}": t for key, t in parts.items()})
        return meta, tensors

    def check_state(self, meta: dict, tensors: dict[str, torch.Tensor]) -> str | None:
        """What is wrong with a saved state for this store (None: it fits). Nothing is changed."""
        if (meta["layer"], meta["role"], meta["heads"]) != (self.layer, self.name, self.heads):
            return f"it is layer {meta['layer']} {meta['role']}, expected layer {self.layer} {self.name}"
        n = len(meta["frames"])
        if self.n_coarse and n == self.coarse_first:  # the episodic slots are full: the coarse ones are attended
            n = self.retrieved_first
        if n > self.retrieved_first:
            return f"it holds {n} frames, capacity {self.retrieved_first}"
        shape = (1, len(self.heads), n * self.T, self.v_ctx.shape[-1])
        names = ["v"] + (["k_raw"] if self.k_raw is not None else []) + (["k_rot"] if self.absolute else [])
        for name in names:
            if name not in tensors or tuple(tensors[name].shape) != shape:
                return f"{name} is {'missing' if name not in tensors else tuple(tensors[name].shape)}, expected {shape}"
        if meta["recent_next"] >= max(self.n_recent, 1):
            return "its ring position"
        if (meta["memory"] is None) != (self.memory is None) or (meta.get("archive") is None) != (self.archive is None):
            return "its memory segments differ from the policy's"
        if self.memory is not None:
            wrong = self.memory.check_state(meta["memory"], max(0, len(meta["frames"]) - self.episodic_first))
            if wrong or "memory.generator" not in tensors:
                return wrong or "memory.generator is missing"
        if self.archive is not None:
            wrong = self.archive.check_state(meta["archive"], part("archive", tensors))
            if wrong:
                return f"its archive ({wrong})"
        return None

    def load_state(self, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
        """Inverse of `state()`, after `check_state()` found nothing wrong."""
        n = tensors["v"].shape[2]
        for buffer, name in ((self.v_ctx, "v"), (self.k_raw, "k_raw"), (self.k_ctx if self.absolute else None, "k_rot")):
            if buffer is not None:
                buffer[:, :, :n] = tensors[name].to(buffer.device, buffer.dtype)
        frames = list(meta["frames"])
        self.frames, self.recent_next = frames[: self.episodic_first], meta["recent_next"]
        if self.memory is not None:
            self.memory.load_state(meta["memory"], part("memory", tensors), frames[self.episodic_first :])
            if self.n_coarse:
                self.mark_pooled(self.memory.pooled_frames != EMPTY)
        if self.archive is not None:
            self.archive.load_state(meta["archive"], part("archive", tensors))

    # ---- slot operations for the episodic memory ------------------------------------------------------
    def blend_slot(self, src: int, dst, weight: torch.Tensor | None) -> None:
        """Raw keys and values of slot dst := (1 - weight) dst + weight src; weight None copies into the slot
        dst (an int). dst, weight [1] on the device: the slot is chosen there. (Episodic roles use compact
        positions: their rotated keys are remade from the raw ones at every chunk.)"""
        for buf in (self.k_raw, self.v_ctx):
            frames = buf.unflatten(2, (-1, self.T))  # [B, Hg, slots, T, D], a view
            if weight is None:
                frames[:, :, dst] = frames[:, :, src]
                continue
            mixed = (1 - weight) * frames.index_select(2, dst).float() + weight * frames[:, :, src, None].float()
            frames.index_copy_(2, dst, mixed.to(buf.dtype))

    def pool_slot(self, slot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw keys and values of slot `slot` ([1], on the device) pooled 2x2 in space: [B, Hg, T/4, D] each."""
        h, w = self.grid_hw
        out = []
        for buf in (self.k_raw, self.v_ctx):
            frame = buf.unflatten(2, (-1, self.T)).index_select(2, slot)[:, :, 0]  # [B, Hg, T, D]
            grid = frame.float().unflatten(2, (h // 2, 2, w // 2, 2))  # [B, Hg, h/2, 2, w/2, 2, D]
            out.append(grid.mean((3, 5)).flatten(2, 3).to(buf.dtype))
        return out[0], out[1]

    def write_pooled(self, quarter: torch.Tensor, keep: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Pooled frame number `quarter` ([1], device) of the coarse level := (k, v) [B, Hg, T/4, D], and its
        bias := log 4 (held), where `keep` (a device bool) is false; left as it is where true. (A pooled frame,
        once held, is only ever overwritten: only this quarter's bias can change.)"""
        region = self._tokens(self.coarse_first, self.n_coarse)
        for buf, new in ((self.k_raw, k), (self.v_ctx, v)):
            pooled = buf[:, :, region].unflatten(2, (-1, self.T // 4))  # [B, Hg, 4 * coarse, T/4, D], a view
            old = pooled.index_select(2, quarter)
            pooled.index_copy_(2, quarter, torch.where(keep, old, new[:, :, None]))
        bias = self.bias[region].view(-1, self.T // 4)  # [4 * coarse, T/4], a view
        bias.index_copy_(0, quarter, torch.where(keep, bias.index_select(0, quarter), math.log(4.0)))

    def mark_pooled(self, held: torch.Tensor) -> None:
        """The coarse level's whole bias from which pooled frames are held ([4 * coarse] bool, device): for a
        restored state (while generating, `write_pooled` keeps it)."""
        region = self._tokens(self.coarse_first, self.n_coarse)
        value = torch.where(held, math.log(4.0), float("-inf")).to(self.bias.dtype)
        self.bias[region] = value.repeat_interleave(self.T // 4)

    def key_descriptor(self, slots: int | slice) -> torch.Tensor:
        """Unit mean raw key per head of a slot [B, Hg, D] (of a range of slots: [B, Hg, n, D]), float32."""
        keys = self.k_raw.unflatten(2, (-1, self.T))[:, :, slots]  # [B, Hg, (n,) T, D]
        return F.normalize(keys.float().mean(-2), dim=-1)
