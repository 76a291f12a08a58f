"""Episodic memory for memory heads: which frames leaving `recent` are kept, and how.

For each frame leaving the recent ring, a descriptor (the unit mean raw key of each head) is compared
with the slots: novelty = 1 - max cosine (averaged over the group's heads).
  - a free slot: the frame is admitted;
  - novel (novelty >= threshold): it replaces the least-used slot, usage being a moving average of the
    attention mass that sampled queries of each commit pass give the slot;
  - redundant: it is merged into the most similar slot, a count-weighted average of keys and values
    (the slot keeps the position of its first frame).
Every decision is logged (for `--trace` and for replay by the oracle).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class EpisodicConfig:
    novelty: float = 0.05  # below this a leaving frame is merged, not stored
    usage_decay: float = 0.9  # moving average of attention mass: usage = decay * usage + (1 - decay) * mass
    usage_queries: int = 16  # query tokens sampled per commit pass to measure slot usage
    seed: int = 0


class EpisodicMemory:
    def __init__(self, slots: int, config: EpisodicConfig = EpisodicConfig(), log: list | None = None):
        self.slots, self.config = slots, config
        self.log = log if log is not None else []
        self.reset()

    def reset(self) -> None:
        self.count: list[int] = []  # frames merged into each slot
        self.usage: list[float] = []
        self.gen = torch.Generator().manual_seed(self.config.seed)

    def _record(self, store, frame: int, action: str, slot: int | None, novelty: float | None) -> None:
        self.log.append(
            dict(chunk=store.first_frame // store.chunk_frames, layer=store.layer, role=store.name, frame=frame,
                 action=action, slot=slot, novelty=novelty, count=self.count[slot] if slot is not None else None)
        )

    def offer(self, store, src: int) -> None:
        """The frame in slot `src` of `store` is leaving the recent ring."""
        frame, first = store.frames[src], store.episodic_first
        held = len(store.frames) - first
        novelty = None
        if held:
            desc = store.key_descriptor(src)  # [B, Hg, D]
            sims = torch.stack([(desc * store.key_descriptor(first + i)).sum(-1).mean() for i in range(held)])
            novelty = 1.0 - sims.max().item()
        if held < self.slots:
            store.copy_slot(src, first + held)
            self.count.append(1)
            self.usage.append(sum(self.usage) / len(self.usage) if self.usage else 0.0)
            self._record(store, frame, "admit", held, novelty)
        elif novelty >= self.config.novelty:
            slot = min(range(held), key=self.usage.__getitem__)
            store.copy_slot(src, first + slot)
            self.count[slot] = 1
            self.usage[slot] = sum(self.usage) / held
            self._record(store, frame, "replace", slot, novelty)
        else:
            slot = int(sims.argmax())
            self.count[slot] += 1
            store.blend_slot(src, first + slot, 1.0 / self.count[slot])
            self._record(store, frame, "merge", slot, novelty)

    def observe(self, store, q_rot: torch.Tensor, end: int, committing: bool) -> None:
        """Update slot usage from the commit pass's attention (a few sampled queries)."""
        held = len(store.frames) - store.episodic_first
        if not committing or not held:
            return
        queries = torch.randperm(q_rot.shape[2], generator=self.gen)[: self.config.usage_queries].to(q_rot.device)
        mass = store.frame_mass(q_rot, end, queries).mean((0, 1, 2))  # [frames]
        d = self.config.usage_decay
        for i in range(held):
            self.usage[i] = d * self.usage[i] + (1 - d) * mass[store.episodic_first + i].item()
