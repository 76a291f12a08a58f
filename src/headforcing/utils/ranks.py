"""Ranks of a torchrun launch (torch's own launcher and process groups; no scheduler of ours)."""

from __future__ import annotations

import os


def world() -> tuple[int, int, int]:
    """(rank, world size, local rank) as torchrun sets them; (0, 1, 0) without it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def shard(items, rank: int, size: int) -> list:
    """This rank's share of `items`: item i goes to rank i mod size (every item exactly once, none dropped)."""
    return [item for i, item in enumerate(items) if i % size == rank]


class Group:
    """torch.distributed's default process group while several ranks run (gloo on CPU, nccl on GPU), used
    for barriers only: the ranks share results through files."""

    def __init__(self, size: int, cuda: bool = False):
        self.size = size
        if size > 1:
            import torch.distributed as dist

            dist.init_process_group("nccl" if cuda else "gloo")

    def barrier(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
