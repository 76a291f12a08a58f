"""One stream on several ranks: sequence-parallel linear layers, head-parallel self-attention (Ulysses).

Every rank holds the whole DiT. Before the first block each rank keeps its 1/P share of the forward's
tokens; projections, norms, cross-attention and the FFN run on that share. Around each self-attention one
all-to-all turns "my tokens, every head" into "every token, my heads" (q, k and v in one exchange) and one
turns the output back; after the last block the tokens are gathered again, so the sampler, the noise and
the decoder see the whole chunk on every rank. Each rank's head-wise cache holds its own heads only: the
cache's memory divides by P and the cache itself is never sent.

Which heads a rank owns is decided per layer and per cache (`assign`): role-balanced by default (a memory
head attends to many more frames than a local one, so index order can load one rank with every memory
head), index order for `--heads auto` (the roles are not known while the first window is profiled, and the
full cache's frames stay on the rank that holds them). The episodic memory's decisions average over a
role group's heads, which may now sit on several ranks: each rank sums over its own and one all-reduce
per decision (every rank takes part, also one holding none of the group) gives all ranks the same choice.

Collectives are torch.distributed's functional ones (traceable: a compiled step keeps one graph), over the
default process group: NCCL on GPUs, gloo on CPUs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as fc

from ..cache.store import SHARED, part
from ..errors import UsageError


# ---- which rank attends for which heads ---------------------------------------------------------------
def head_costs(policy, headmap, window: int, chunk: int) -> list[list[int]]:
    """[layer][head] -> key frames a query of that head attends to (its role's slots + the chunk)."""
    return [[policy.roles[role].capacity(window) + chunk for role in layer] for layer in headmap.roles]


def assign(costs: list[list[int]], ranks: int, balanced: bool = True) -> list[list[list[int]]]:
    """[layer][rank] -> the heads (ascending) that rank attends for; every rank gets H / ranks heads.
    balanced: the costliest head first to the least loaded rank with room (longest-processing-time order);
    else index order (rank r: heads r*H/P ..)."""
    out = []
    for layer in costs:
        share = len(layer) // ranks
        if not balanced:
            out.append([list(range(r * share, (r + 1) * share)) for r in range(ranks)])
            continue
        owned, load = [[] for _ in range(ranks)], [0] * ranks
        for head in sorted(range(len(layer)), key=lambda h: (-layer[h], h)):
            rank = min((r for r in range(ranks) if len(owned[r]) < share), key=lambda r: (load[r], r))
            owned[rank].append(head)
            load[rank] += layer[head]
        out.append([sorted(heads) for heads in owned])
    return out


def imbalance(costs: list[list[int]], owned: list[list[list[int]]]) -> float:
    """Time lost to waiting, as a fraction: sum over layers of the slowest rank's attention cost, over the
    sum of the mean rank's, minus 1 (0: every rank attends for the same number of key frames per layer)."""
    slowest = mean = 0.0
    for layer, ranks in zip(costs, owned):
        loads = [sum(layer[h] for h in heads) for heads in ranks]
        slowest, mean = slowest + max(loads), mean + sum(loads) / len(loads)
    return slowest / mean - 1.0 if mean else 0.0


@dataclass
class HeadSplit:
    """One cache's share of the heads on this rank: owned[layer] = global heads in local order; order[layer]
    the heads rank by rank (the all-to-all's layout), inverse[layer] its inverse permutation."""

    comm: "HeadParallel"
    owned: list[list[int]]
    order: list[torch.Tensor]
    inverse: list[torch.Tensor]
    imbalance: float


def sent_per_chunk(spec, tokens_per_frame: int, ranks: int, forwards: int, element_bytes: int) -> float:
    """Bytes each rank sends per chunk: per layer and forward, q/k/v out and the attention back ((P-1)/P of its
    share of 4 [S/P, dim] tensors), and per forward the last block's gather (its [S/P, dim] to P-1 ranks)."""
    S, dim, P = spec.chunk_frames * tokens_per_frame, spec.num_heads * spec.head_dim, ranks
    share = S / P * dim * element_bytes
    return forwards * (spec.num_layers * 4 * share * (P - 1) / P + share * (P - 1))


# ---- the communicator ------------------------------------------------------------------------------------
class HeadParallel:
    """This process's place in a head-parallel launch (torchrun), and the collectives the DiT needs."""

    def __init__(self):
        if not dist.is_initialized():
            raise UsageError("--parallel heads runs under torchrun (several ranks); start it with torchrun --nproc-per-node N")
        self.group = dist.group.WORLD
        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        self.sent_bytes = 0  # what this rank's all-to-alls and gathers sent to other ranks (eager forwards only)
        self.device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")

    @property
    def leads(self) -> bool:
        """Rank 0 decodes, writes and reports; the others only compute."""
        return self.rank == 0

    def check(self, num_heads: int, tokens_per_frame: int) -> None:
        if num_heads % self.size:
            raise UsageError(f"--parallel heads over {self.size} ranks needs a head count divisible by {self.size}; the model has {num_heads}")
        if tokens_per_frame % self.size:
            raise UsageError(f"--parallel heads over {self.size} ranks needs tokens per frame divisible by {self.size}; "
                             f"this size gives {tokens_per_frame}")

    def split(self, policy, headmap, window: int, chunk: int, balanced: bool = True, device=None) -> HeadSplit:
        """Which heads this rank attends for in each layer of a cache (the permutations kept on `device`)."""
        costs = head_costs(policy, headmap, window, chunk)
        owned = assign(costs, self.size, balanced)
        order = [torch.tensor([h for heads in layer for h in heads], device=device) for layer in owned]
        return HeadSplit(self, [layer[self.rank] for layer in owned], order, [o.argsort() for o in order], imbalance(costs, owned))

    # ---- tokens: split before the first block, gathered after the last ----------------------------------
    def install(self, transformer) -> None:
        """Hooks on the DiT's blocks: block 0 takes this rank's share of the tokens, the last block's output
        is gathered (the rest of the model, and every caller, sees whole sequences)."""
        def take_share(module, args):
            hidden = args[0]  # [B, S, dim]
            return (hidden.chunk(self.size, dim=1)[self.rank].contiguous(), *args[1:])

        def gather(module, args, output):
            self._count(output, self.size - 1)  # (its share goes to every other rank)
            return fc.all_gather_single(output.contiguous(), 1, self.group)  # [B, S/P, dim] -> [B, S, dim]

        transformer.blocks[0].register_forward_pre_hook(take_share)
        transformer.blocks[-1].register_forward_hook(gather)

    # ---- heads: around self-attention ----------------------------------------------------------------------
    def to_heads(self, qkv: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """[3, B, S/P, H, D] (my tokens, every head) -> [3, B, H/P, S, D] (every token, my heads)."""
        P = self.size
        x = qkv.index_select(3, order).unflatten(3, (P, -1))  # [3, B, S/P, P, H/P, D]
        x = x.permute(3, 0, 1, 2, 4, 5).contiguous()  # [P (whose heads), 3, B, S/P, H/P, D]
        self._count(x, (P - 1) / P)
        y = fc.all_to_all_single(x, None, None, self.group)  # [P (whose tokens), 3, B, S/P, H/P, D]
        y = y.permute(1, 2, 0, 3, 4, 5).flatten(2, 3)  # [3, B, S, H/P, D]
        return y.transpose(2, 3)

    def to_tokens(self, out: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        """[B, H/P, S, D] (every token, my heads) -> [B, S/P, H, D] (my tokens, every head, model order)."""
        P = self.size
        y = out.transpose(1, 2).unflatten(1, (P, -1))  # [B, P (whose tokens), S/P, H/P, D]
        y = y.permute(1, 0, 2, 3, 4).contiguous()  # [P, B, S/P, H/P, D]
        self._count(y, (P - 1) / P)
        z = fc.all_to_all_single(y, None, None, self.group)  # [P (whose heads), B, S/P, H/P, D]
        z = z.permute(1, 2, 0, 3, 4).flatten(2, 3)  # [B, S/P, H (rank by rank), D]
        return z.index_select(2, inverse)

    def _count(self, t: torch.Tensor, share: float) -> None:
        if not torch.compiler.is_compiling():
            self.sent_bytes += int(t.numel() * t.element_size() * share)

    # ---- small agreements ------------------------------------------------------------------------------------
    def reduce(self, t: torch.Tensor) -> torch.Tensor:
        """The sum of `t` over the ranks (eager, outside any compiled step)."""
        t = t.clone()
        dist.all_reduce(t)
        return t

    def any(self, flag: bool) -> bool:
        """Whether any rank says yes (a signal seen by one rank stops every rank after the same chunk)."""
        t = torch.tensor([int(bool(flag))], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())


# ---- saving and resuming: a state holds the whole model's stores, whatever the rank count ---------------
def gather_states(stores, states: list[tuple[dict, dict]], roles: list[str]) -> list[tuple[dict, dict]]:
    """Every rank's stores' (meta, tensors) -> the whole model's, in one process's store order (layer, then
    the policy's `roles` order) and head numbering. Every rank calls it; each gets the result."""
    mine = [(s.layer, s.name, s.model_heads, meta, {k: t.detach().cpu() for k, t in parts.items()})
            for s, (meta, parts) in zip(stores, states)]
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    groups: dict[tuple, list] = {}
    for rank_stores in everyone:
        for layer, name, heads, meta, parts in rank_stores:
            if heads:  # (a store of no heads on a rank holds nothing of its group)
                groups.setdefault((layer, name), []).append((heads, meta, parts))
    out = []
    for key in sorted(groups, key=lambda k: (k[0], roles.index(k[1]))):
        shares = groups[key]
        heads = [h for s in shares for h in s[0]]
        order = torch.tensor(heads).argsort()
        meta = dict(shares[0][1], heads=sorted(heads))
        parts = {name: t if name in SHARED else torch.cat([s[2][name] for s in shares], 1).index_select(1, order)
                 for name, t in shares[0][2].items()}
        out.append((meta, parts))
    return out


def share_states(stores, saved: list[dict], tensors: dict) -> list[tuple[dict, dict]] | str:
    """A saved state's stores (the whole model's) -> this rank's stores' (meta, tensors), or what is wrong."""
    index = {(m.get("layer"), m.get("role")): i for i, m in enumerate(saved) if isinstance(m, dict)}
    out = []
    for store in stores:
        i = index.get((store.layer, store.name))
        if i is None or not isinstance(saved[i].get("heads"), list) or not set(store.model_heads) <= set(saved[i]["heads"]):
            return f"no saved store holds layer {store.layer} {store.name}'s heads {store.model_heads}"
        where = torch.tensor([saved[i]["heads"].index(h) for h in store.model_heads], dtype=torch.long)
        parts = {name: t if name in SHARED else t.index_select(1, where) for name, t in part(f"store.{i}", tensors).items()}
        out.append((dict(saved[i], heads=store.heads), parts))
    return out


def gather_profile(profiler, split: HeadSplit) -> None:
    """The profiler's sums over every rank's heads, on every rank (each rank measured its own heads; a
    resumed rank may hold the whole model's: only its own rows count)."""
    own = torch.zeros(profiler.shape, dtype=torch.float64)
    for layer, heads in enumerate(split.owned):
        own[layer, heads] = 1.0
    for name in ("mass", "distance", "count"):
        tables = getattr(profiler, name)
        for kind, t in tables.items():
            mask = own.view(*own.shape, *([1] * (t.dim() - 2)))
            tables[kind] = split.comm.reduce((t * mask).to(split.comm.device)).cpu()
