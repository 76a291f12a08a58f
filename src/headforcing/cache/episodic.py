"""Episodic memory for memory heads: which frames leaving `recent` are kept, and how.

For each frame leaving the recent ring, a descriptor (the unit mean raw key of each head) is compared
with the slots: novelty = 1 - max cosine (averaged over the group's heads).
  - a free slot: the frame is admitted;
  - novel (novelty >= threshold): it replaces the least-used slot, usage being a moving average of the
    attention mass that sampled queries of each commit pass give the slot;
  - redundant: it is merged into the most similar slot, a count-weighted average of keys and values
    (the slot keeps the position of its first frame).
That is the `novelty` rule of an Episodic segment; the others fix the outcome once the slots are full:
`replace` (every leaving frame replaces the least-used slot), `merge` (every one is merged into the most
similar slot) and `keep-first` (the first frames admitted stay; later ones are dropped, no decision logged).
With a coarse level (a Coarse segment), a replaced slot is not lost: its frame, pooled 2x2 in space, goes
to the coarse level's next pooled frame (a ring, oldest out first), where it stays until 4 x coarse slots
later replacements; merges leave the coarse level as it is.
Admission is decided on the host (slots fill in a fixed order); replace-or-merge is decided on the device:
the slot's frame, count and usage are device tensors and both outcomes are one blend
dst := (1 - w) dst + w src (w = 1 replaces), so a steady-state chunk never waits for the device.
Every decision is logged with its device values, read only when someone asks (`--trace`, the oracle).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import whole

ACTIONS = ("admit", "merge", "replace")  # codes 0, 1, 2 of the tallies and the log
EMPTY = 2**62  # the frame of a pooled frame not yet held: after every real one


@dataclass(frozen=True)
class EpisodicConfig:
    novelty: float = 0.05  # below this a leaving frame is merged, not stored
    usage_decay: float = 0.9  # moving average of attention mass: usage = decay * usage + (1 - decay) * mass
    usage_queries: int = 16  # query tokens sampled per commit pass to measure slot usage
    seed: int = 0


class EpisodicMemory:
    def __init__(self, slots: int, config: EpisodicConfig = EpisodicConfig(), log: list | None = None,
                 heads: int | None = None, reduce=None):
        """heads: the role group's heads in the layer, all ranks together (None: the store's own); reduce: sums
        a per-rank partial sum over the ranks when the group's heads are spread over several
        (engine/parallel.py; None: one rank)."""
        self.slots, self.config = slots, config
        self.log = log if log is not None else []
        self.heads, self.reduce = heads, reduce or (lambda t: t)
        self.reset()

    def reset(self, device=None, pooled: int = 0) -> None:
        """`pooled`: the coarse level's pooled frames (4 a coarse slot; 0: no coarse level)."""
        self.held = 0  # occupied slots (a prefix; they fill in order, so this is known on the host)
        self.frames = torch.zeros(self.slots, dtype=torch.int64, device=device)  # the position-giving frame of each slot
        self.count = torch.zeros(self.slots, dtype=torch.float32, device=device)  # frames merged into each slot
        self.usage = torch.zeros(self.slots, dtype=torch.float32, device=device)
        self.mass = torch.zeros(self.slots, dtype=torch.float32, device=device)  # the commit pass's, summed over heads
        self.queries = torch.zeros(self.config.usage_queries, dtype=torch.int64, device=device)  # the commit pass's
        self.n_queries = 0  # sampled query tokens (drawn on the host before the forward)
        self.gen = torch.Generator().manual_seed(self.config.seed)
        self.tally = torch.zeros(len(ACTIONS), dtype=torch.int64, device=device)  # decisions by action (a cache shares one)
        self.pooled_frames = torch.full((pooled,), EMPTY, dtype=torch.int64, device=device)  # frame of each pooled frame
        self.pooled_next = torch.zeros(1, dtype=torch.int64, device=device)  # the ring's next pooled frame

    def _record(self, store, frame: int, action, slot, novelty, count) -> None:
        self.tally.index_add_(0, torch.as_tensor(action, device=self.tally.device).view(1), torch.ones_like(self.tally[:1]))
        self.log.append(dict(chunk=store.first_frame // store.chunk_frames, layer=store.layer, role=store.name,
                             frame=frame, action=action, slot=slot, novelty=novelty, count=count))

    def _similarity(self, store, src: int) -> torch.Tensor:
        """Mean cosine of the leaving frame's descriptor with each held slot's: [held]."""
        first = store.episodic_first
        desc = store.key_descriptor(src)  # [B, Hg, D]
        held = store.key_descriptor(slice(first, first + self.held))  # [B, Hg, held, D]
        return self.reduce((held * desc[:, :, None]).sum(-1).sum(1).mean(0)) / self.group_heads(store)

    def group_heads(self, store) -> int:
        return self.heads if self.heads is not None else len(store.heads)

    def offer(self, store, src: int) -> None:
        """The frame in slot `src` of `store` is leaving the recent ring."""
        frame, first = store.frames[src], store.episodic_first
        if self.held < self.slots:  # a free slot: admit
            novelty = 1.0 - self._similarity(store, src).max() if self.held else None
            slot = self.held
            store.blend_slot(src, first + slot, None)
            self.frames[slot], self.count[slot] = frame, 1.0
            self.usage[slot] = self.usage[:slot].mean() if slot else 0.0
            self.held += 1
            self._record(store, frame, 0, slot, novelty, 1.0)
            return
        rule = store.role.slot_rule
        if rule == "keep-first":
            return
        sims = self._similarity(store, src)  # [slots]
        novelty = 1.0 - sims.max()
        threshold = {"replace": float("-inf"), "merge": float("inf")}.get(rule, self.config.novelty)
        novel = novelty >= threshold
        slot = torch.where(novel, self.usage.argmin(), sims.argmax()).view(1)  # [1], on the device
        count = torch.where(novel, 1.0, self.count.index_select(0, slot) + 1.0)  # [1]
        if len(self.pooled_frames):
            self._give_up(store, first + slot, self.frames.index_select(0, slot), novel)
        store.blend_slot(src, first + slot, 1.0 / count)  # weight 1: replaced; 1/count: merged
        self.usage.index_copy_(0, slot, torch.where(novel, self.usage.mean(), self.usage.index_select(0, slot)))
        self.frames.index_copy_(0, slot, torch.where(novel, frame, self.frames.index_select(0, slot)))
        self.count.index_copy_(0, slot, count)
        self._record(store, frame, torch.where(novel, 2, 1), slot, novelty, count)

    def _give_up(self, store, slot: torch.Tensor, frame: torch.Tensor, novel: torch.Tensor) -> None:
        """Before a replacement: the slot's frame, pooled, into the coarse level's next pooled frame (nothing
        changes when the frame is merged instead: `novel` false). All on the device."""
        k, v = store.pool_slot(slot)
        at = self.pooled_next
        store.write_pooled(at, ~novel, k, v)
        self.pooled_frames.index_copy_(0, at, torch.where(novel, frame, self.pooled_frames.index_select(0, at)))
        self.pooled_next.copy_((at + novel.long()) % len(self.pooled_frames))

    def coarse_slot_frames(self) -> torch.Tensor:
        """The frame giving each coarse slot its position: its oldest pooled frame (EMPTY while none): [coarse]."""
        return self.pooled_frames.view(-1, 4).min(1).values

    def draw_queries(self, tokens: int) -> None:
        """Before a commit pass of `tokens` query tokens: the ones whose attention measures slot usage."""
        drawn = torch.randperm(tokens, generator=self.gen)[: self.config.usage_queries]
        self.n_queries = len(drawn)
        self.queries[: self.n_queries] = drawn

    def measure(self, store, q_rot: torch.Tensor, end: int) -> None:
        """Inside the commit pass (device only): the sampled queries' attention mass on each held slot, summed
        over the store's heads (`update_usage` applies it after the pass, before its frames are committed)."""
        mass = store.frame_mass(q_rot, end, self.queries[: self.n_queries]).sum(1).mean((0, 1))  # [frames]
        self.mass[: self.held] = mass[store.episodic_first : store.episodic_first + self.held]

    def update_usage(self, store) -> None:
        """After the commit pass: usage moves towards the group's mean mass (its heads on every rank)."""
        held = slice(0, self.held)
        mass = self.reduce(self.mass[held]) / self.group_heads(store)
        d = self.config.usage_decay
        self.usage[held] = d * self.usage[held] + (1 - d) * mass
        self.mass.zero_()

    # ---- state ---------------------------------------------------------------------------------------
    def state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """(JSON-able fields, tensors): the held slots' counts and usage, the coarse ring, the query generator.
        (The slots' frames are the store's to save, with its other frames.)"""
        meta = dict(count=[int(c) for c in self.count[: self.held].tolist()], usage=self.usage[: self.held].tolist())
        if len(self.pooled_frames):
            meta["pooled"] = dict(frames=self.pooled_frames.tolist(), next=int(self.pooled_next))
        return meta, {"generator": self.gen.get_state()}

    def check_state(self, meta, held: int) -> str | None:
        """What is wrong with a saved memory of `held` slots (None: it fits)."""
        if not (isinstance(meta, dict) and isinstance(meta.get("count"), list) and len(meta["count"]) == held
                and isinstance(meta.get("usage"), list) and len(meta["usage"]) == held):
            return "episodic slots"
        pooled = meta.get("pooled")
        ring = len(self.pooled_frames)
        if ring and not (isinstance(pooled, dict) and isinstance(pooled.get("frames"), list) and len(pooled["frames"]) == ring
                         and all(whole(f) for f in pooled["frames"]) and whole(pooled.get("next")) and pooled["next"] < ring):
            return "coarse level"
        return None

    def load_state(self, meta: dict, tensors: dict[str, torch.Tensor], frames: list[int]) -> None:
        """Inverse of `state()`; `frames`: the held slots' frames (from the store's saved frames)."""
        self.held = len(frames)
        for name, values in (("frames", frames), ("count", meta["count"]), ("usage", meta["usage"])):
            buffer = getattr(self, name)
            buffer[: self.held] = torch.tensor(values, dtype=buffer.dtype)
        self.gen.set_state(tensors["generator"])
        if len(self.pooled_frames):
            self.pooled_frames.copy_(torch.tensor(meta["pooled"]["frames"]))
            self.pooled_next.fill_(meta["pooled"]["next"])


def read_log(log: list[dict]) -> list[dict]:
    """The decisions with their device values read (one wait for the device, when asked)."""
    out = []
    for entry in log:
        d = {key: value.item() if isinstance(value, torch.Tensor) else value for key, value in entry.items()}
        d["action"], d["count"] = ACTIONS[int(d["action"])], int(d["count"])
        if d["slot"] is not None:
            d["slot"] = int(d["slot"])
        out.append(d)
    return out
