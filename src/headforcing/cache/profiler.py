"""Head profiler: what each (layer, head) attends to inside the trained window, and rules -> HeadMap.

Running the `full` cache over <= 21 latent frames, every self-attention forward of a chunk >= `min_chunk`
gives, for a fixed random sample of its query tokens, the softmax mass on the key frames (never the full
attention matrix). Per head we average the mass on: `sink` (the first chunk), `current` (this chunk),
`previous` (the chunk before) and `rest`, and the mass by frame distance |query frame - key frame|
(0..20), separately for the denoising steps and the commit pass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from .headmap import HeadMap
from .policy import DEFAULT_RULE
from ..errors import UsageError

CATEGORIES = ("sink", "current", "previous", "rest")
MAX_DISTANCE = 20
KINDS = ("denoise", "commit")


class HeadProfiler:
    def __init__(self, num_layers: int, num_heads: int, chunk_frames: int = 3, queries: int = 256, min_chunk: int = 3, seed: int = 0):
        self.shape, self.chunk_frames = (num_layers, num_heads), chunk_frames
        self.queries, self.min_chunk, self.seed = queries, min_chunk, seed
        self.gen = torch.Generator().manual_seed(seed)
        self.mass = {k: torch.zeros(num_layers, num_heads, len(CATEGORIES), dtype=torch.float64) for k in KINDS}
        self.distance = {k: torch.zeros(num_layers, num_heads, MAX_DISTANCE + 1, dtype=torch.float64) for k in KINDS}
        self.count = {k: torch.zeros(num_layers, num_heads, dtype=torch.float64) for k in KINDS}
        self.sampled_for = None  # (first frame, query count) the current sample was drawn for

    def attach(self, cache) -> None:
        for store in cache.stores():
            store.observers.append(self.observe)

    def _query_sample(self, first_frame: int, tokens: int) -> torch.Tensor:
        if self.sampled_for != (first_frame, tokens):  # one sample per chunk, shared by layers and steps
            self.sample = torch.randperm(tokens, generator=self.gen)[: self.queries].sort().values
            self.sampled_for = (first_frame, tokens)
        return self.sample

    def observe(self, store, q_rot: torch.Tensor, end: int, committing: bool) -> None:
        first, C = store.first_frame, self.chunk_frames
        if first // C < self.min_chunk:
            return
        queries = self._query_sample(first, q_rot.shape[2])
        mass = store.frame_mass(q_rot, end, queries.to(q_rot.device)).double().cpu()  # [B, Hg, Q, F]
        key_frames = torch.tensor(store.frames + list(range(first, first + store.chunk_len)))
        category = torch.full_like(key_frames, 3)  # rest
        category[(key_frames >= first - C) & (key_frames < first)] = 2
        category[key_frames >= first] = 1
        category[key_frames < C] = 0
        by_category = mass @ torch.nn.functional.one_hot(category, len(CATEGORIES)).double()  # [B, Hg, Q, 4]
        query_frames = first + queries // store.T
        dist = (query_frames[:, None] - key_frames[None, :]).abs().clamp(max=MAX_DISTANCE)  # [Q, F]
        by_distance = torch.einsum("bhqf,qfd->bhqd", mass, torch.nn.functional.one_hot(dist, MAX_DISTANCE + 1).double())
        kind = "commit" if committing else "denoise"
        heads = torch.tensor(store.model_heads)
        self.mass[kind][store.layer, heads] += by_category.mean((0, 2))
        self.distance[kind][store.layer, heads] += by_distance.mean((0, 2))
        self.count[kind][store.layer, heads] += 1

    def state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """(JSON-able fields, tensors) to continue profiling exactly: the sums, the generator, the query sample."""
        tensors = {f"{name}.{kind}": getattr(self, name)[kind].clone() for name in ("mass", "distance", "count") for kind in KINDS}
        tensors["generator"] = self.gen.get_state()
        if self.sampled_for is not None:
            tensors["sample"] = self.sample.clone()
        return dict(sampled_for=self.sampled_for), tensors

    def load_state(self, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
        for name in ("mass", "distance", "count"):
            for kind in KINDS:
                getattr(self, name)[kind] = tensors[f"{name}.{kind}"]
        self.gen.set_state(tensors["generator"])
        self.sampled_for = tuple(meta["sampled_for"]) if meta["sampled_for"] else None
        if self.sampled_for is not None:
            self.sample = tensors["sample"]

    def stats(self) -> dict:
        """Means per (layer, head), as JSON-able lists."""
        out = {"num_layers": self.shape[0], "num_heads": self.shape[1], "queries": self.queries,
               "min_chunk": self.min_chunk, "seed": self.seed}
        for kind in KINDS:
            n = self.count[kind].clamp(min=1)
            entry = {c: (self.mass[kind][..., i] / n).tolist() for i, c in enumerate(CATEGORIES)}
            entry["distance"] = (self.distance[kind] / n[..., None]).tolist()
            entry["observations"] = int(self.count[kind].max())
            out[kind] = entry
        return out


# ---- rules: statistics -> roles ----------------------------------------------------------------------
@dataclass(frozen=True)
class RuleStep:
    role: str
    stat: str | None = None  # None: every head not taken yet
    top: float | None = None  # fraction of the heads not taken yet, highest `stat` first
    at_least: float | None = None  # or: every remaining head whose `stat` >= this


STEP = re.compile(r"^(?P<role>[\w-]+)=(?:(?P<rest>rest)|(?P<stat>\w+):(?:top(?P<top>[\d.]+)%|>=(?P<min>[\d.]+)))$")


def parse_rule(text: str) -> list[RuleStep]:
    """`role=stat:topP%` / `role=stat:>=X` steps applied in order to the heads not taken yet, ending with
    `role=rest`; e.g. the default, a public reading of the paper: "anchor=sink:top25%,local=current:top20%,memory=rest"."""
    steps = []
    for part in text.replace(" ", "").split(","):
        m = STEP.match(part)
        if m is None:
            raise UsageError(f"rule step {part!r} is not role=stat:topP%, role=stat:>=X or role=rest")
        if m["rest"]:
            steps.append(RuleStep(m["role"]))
            continue
        if m["stat"] not in CATEGORIES:
            raise UsageError(f"rule step {part!r}: unknown statistic {m['stat']!r}; known: {', '.join(CATEGORIES)}")
        top = float(m["top"]) / 100 if m["top"] else None
        if top is not None and not 0 < top <= 1:
            raise UsageError(f"rule step {part!r}: a share must be in (0%, 100%]")
        steps.append(RuleStep(m["role"], m["stat"], top, float(m["min"]) if m["min"] else None))
    if steps[-1].stat is not None or any(s.stat is None for s in steps[:-1]):
        raise UsageError("a rule ends with one role=rest step, and only there")
    return steps


def classify(stats: dict, rule: str = DEFAULT_RULE, kind: str = "denoise") -> HeadMap:
    """Apply a rule to profile statistics; every role named by the rule must get at least one head."""
    steps = parse_rule(rule)
    L, H = stats["num_layers"], stats["num_heads"]
    roles: dict[tuple[int, int], str] = {}
    for step in steps:
        free = [(l, h) for l in range(L) for h in range(H) if (l, h) not in roles]
        if step.stat is None:
            chosen = free
        else:
            value = {lh: stats[kind][step.stat][lh[0]][lh[1]] for lh in free}
            ranked = sorted(free, key=lambda lh: (-value[lh], lh))
            if step.top is not None:
                chosen = ranked[: round(step.top * len(free))]
            else:
                chosen = [lh for lh in ranked if value[lh] >= step.at_least]
        if not chosen:
            raise UsageError(f"rule {rule!r} leaves role {step.role!r} without heads")
        roles.update({lh: step.role for lh in chosen})
    return HeadMap(tuple(tuple(roles[(l, h)] for h in range(H)) for l in range(L)))


def heads_file(headmap: HeadMap, stats: dict, rule: str) -> dict:
    """A HeadMap JSON that carries its statistics, so maps can be re-derived with other rules."""
    return {**headmap.to_json(), "rule": rule, "stats": stats}


def plot(headmap: HeadMap, stats: dict, path) -> None:
    """PNG: layers x heads coloured by role, and each role's mean attention mass by frame distance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = sorted({r for layer in headmap.roles for r in layer})
    colours = dict(zip(names, ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]))
    grid = np.array([[names.index(r) for r in layer] for layer in headmap.roles])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    cmap = matplotlib.colors.ListedColormap([colours[n] for n in names])
    ax1.imshow(grid.T, cmap=cmap, vmin=-0.5, vmax=len(names) - 0.5, aspect="auto", interpolation="nearest")
    ax1.set_xlabel("layer")
    ax1.set_ylabel("head")
    ax1.set_title("role of each head")
    ax1.legend(handles=[matplotlib.patches.Patch(color=colours[n], label=n) for n in names], loc="upper right", fontsize=8)
    distance = np.array(stats["denoise"]["distance"])  # [L, H, 21]
    for n in names:
        ax2.plot(range(distance.shape[-1]), distance[grid == names.index(n)].mean(0), marker="o", ms=3, label=n, color=colours[n])
    ax2.set_xlabel("frame distance |query - key|")
    ax2.set_ylabel("mean attention mass")
    ax2.set_title("attention by distance (denoising steps)")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
