"""Cache policies as data: for each role, which latent frames its heads keep, and how they are numbered.

A role keeps up to five segments (the current chunk is always appended):
  Sink(n)        the first n frames of the video, kept forever (n=None: every frame, the `full` preset);
  Episodic(k)    k slots chosen among frames that left `recent` (the episodic memory decides);
  Coarse(m)      the episodic memory's coarse level: m slots, each holding 4 frames pooled 2x2 in space, filled
                 with what the episodic slots give up when a novel frame replaces one (oldest out first);
  Recent(n)      the last n committed frames.
  Retrieved(k, archive, every)
                 an archive of the last `archive` frames that left `recent` (every `every`-th frame index only),
                 of which each head attends the k whose keys best match its current queries (cache/archive.py).
Positions: `absolute` rotates every frame at its frame index (Self-Forcing); `compact` numbers a role's
retained frames 0..n-1 in time order and the chunk n..n+C-1, so distances stay inside the trained window.
At a prompt switch a role either keeps its recent frames' keys/values (`keep`) or re-encodes them under
the new prompt from their clean latents (`recache`, as LongLive does); sink and episodic frames are kept.
Compact positions put a role's memory (episodic, coarse and retrieved slots) between its sink and its recent
frames, in time order (`memory_at="time"`), or right before the chunk, after the recent frames (`"near"`:
memory at the distances the model attends most, at the cost of time order).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import UsageError
from .headmap import HeadMap

POSITION_SCHEMES = ("absolute", "compact")
MEMORY_PLACES = ("time", "near")
# How `--heads auto` / `headforcing profile` turn attention statistics into roles (cache/profiler.py reads it):
# the top 25% of heads by sink mass are anchors, of the rest the top 20% by current-chunk mass are local.
DEFAULT_RULE = "anchor=sink:top25%,local=current:top20%,memory=rest"
SWITCH_RULES = ("keep", "recache")


@dataclass(frozen=True)
class Sink:
    frames: int | None


SLOT_RULES = ("novelty", "replace", "merge", "keep-first")


@dataclass(frozen=True)
class Episodic:
    slots: int
    rule: str = "novelty"  # a full memory and a leaving frame: by novelty (below), always replace the least-used
    # slot, always merge into the most similar one, or keep the first frames admitted (cache/episodic.py)


@dataclass(frozen=True)
class Coarse:
    slots: int


@dataclass(frozen=True)
class Recent:
    frames: int


@dataclass(frozen=True)
class Retrieved:
    slots: int
    archive: int
    every: int = 1


@dataclass(frozen=True)
class RolePolicy:
    segments: tuple
    positions: str = "compact"
    on_switch: str = "keep"
    memory_at: str = "time"

    def __post_init__(self):
        if self.on_switch not in SWITCH_RULES:
            raise UsageError(f"unknown prompt-switch rule {self.on_switch!r}; known: {', '.join(SWITCH_RULES)}")
        if self.positions not in POSITION_SCHEMES:
            raise UsageError(f"unknown position scheme {self.positions!r}; known: {', '.join(POSITION_SCHEMES)}")
        if self.memory_at not in MEMORY_PLACES:
            raise UsageError(f"unknown memory placement {self.memory_at!r}; known: {', '.join(MEMORY_PLACES)}")
        kinds = [type(s) for s in self.segments]
        if len(set(kinds)) != len(kinds) or not all(k in (Sink, Episodic, Coarse, Recent, Retrieved) for k in kinds):
            raise UsageError(f"a role keeps at most one Sink, Episodic, Coarse, Recent and Retrieved segment, got {self.segments}")
        sizes = [s.slots if isinstance(s, (Episodic, Coarse, Retrieved)) else s.frames for s in self.segments]
        if any(n is not None and n < 0 for n in sizes):
            raise UsageError(f"segment sizes must be >= 0, got {self.segments}")
        self._check_retrieved()
        if self.slot_rule not in SLOT_RULES:
            raise UsageError(f"unknown episodic slot rule {self.slot_rule!r}; known: {', '.join(SLOT_RULES)}")
        if self.episodic and self.positions != "compact":
            raise UsageError("an Episodic segment needs compact positions (merged frames have no single absolute one)")
        if self.episodic and not self.recent:
            raise UsageError("an Episodic segment needs a Recent one: episodic frames are those leaving `recent`")
        if self.coarse and not self.episodic:
            raise UsageError("a Coarse segment needs an Episodic one: it keeps what the episodic slots give up")

    def _check_retrieved(self) -> None:
        seg = self.retrieval
        if seg is None:
            return
        if not (seg.slots >= 1 and seg.archive >= seg.slots and seg.every >= 1):
            raise UsageError(f"Retrieved needs 1 <= slots <= archive and every >= 1, got {seg}")
        if self.positions != "compact" or not self.recent:
            raise UsageError("a Retrieved segment needs compact positions and a Recent segment (it archives frames leaving `recent`)")
        if self.coarse:
            raise UsageError("a role keeps a Coarse or a Retrieved segment, not both")

    def _size(self, kind) -> int | None:
        seg = next((s for s in self.segments if isinstance(s, kind)), None)
        return 0 if seg is None else (seg.slots if kind in (Episodic, Coarse, Retrieved) else seg.frames)

    @property
    def slot_rule(self) -> str:
        return next((s.rule for s in self.segments if isinstance(s, Episodic)), "novelty")

    @property
    def retrieval(self) -> Retrieved | None:
        return next((s for s in self.segments if isinstance(s, Retrieved)), None)

    @property
    def retrieved(self) -> int:
        return self._size(Retrieved)

    @property
    def sink(self) -> int | None:
        return self._size(Sink)

    @property
    def episodic(self) -> int:
        return self._size(Episodic)

    @property
    def coarse(self) -> int:
        return self._size(Coarse)

    @property
    def recent(self) -> int:
        return self._size(Recent)

    def capacity(self, max_frames: int) -> int:
        """Context slots this role can hold, each one frame's tokens (the current chunk not counted)."""
        sink = max_frames if self.sink is None else self.sink
        return sink + self.episodic + self.coarse + self.recent + self.retrieved

    def fill_frames(self, max_frames: int) -> int:
        """Frames committed before every slot is in use (coarse slots: with the last episodic one; retrieved:
        once the archive holds as many frames as there are slots)."""
        sink = max_frames if self.sink is None else self.sink
        leaving = self.episodic  # frames that must leave `recent`; they leave in order from frame `sink` on
        if self.retrieval is not None:  # the archive takes frames whose index is a multiple of `every`
            every = self.retrieval.every
            last = -(-sink // every) * every + (self.retrieved - 1) * every  # the frame that fills the slots
            leaving = max(leaving, last - sink + 1)
        return sink + self.recent + leaving


@dataclass(frozen=True)
class Policy:
    name: str
    roles: dict  # role name -> RolePolicy
    fractions: dict | None = None  # default head shares per role without a HeadMap (None: DEFAULT_FRACTIONS)
    rule: str = DEFAULT_RULE  # how `--heads auto` sorts heads into these roles

    @property
    def recache_frames(self) -> int:
        """How many of the newest frames a prompt switch re-encodes (0: none)."""
        return max((r.recent for r in self.roles.values() if r.on_switch == "recache"), default=0)

    def warmup_chunks(self, chunk: int, window: int) -> int:
        """Chunks that fill every role's slots (episodic ones too): from the next chunk on, every chunk has the
        same shapes (what a compiled step needs)."""
        return -(-max(r.fill_frames(window) for r in self.roles.values()) // chunk)

    @property
    def bounded(self) -> bool:
        return all(r.sink is not None for r in self.roles.values())

    def resolve_headmap(self, num_layers: int, num_heads: int, headmap: HeadMap | None = None) -> HeadMap:
        """The HeadMap this policy runs with: one role for every head, or the given/default map."""
        if headmap is None:
            if len(self.roles) == 1:
                headmap = HeadMap.uniform(num_layers, num_heads, next(iter(self.roles)))
            else:
                headmap = HeadMap.by_fraction(num_layers, num_heads, self.fractions or DEFAULT_FRACTIONS)
        headmap.check(num_layers, num_heads, self.roles)
        return headmap


# Without a profile (`--heads auto` or a file from `headforcing profile`), Head Forcing's heads are split by
# these fixed shares, the sizes the default profiling rule gives: 25% anchor, 20% of the rest local, the rest memory.
DEFAULT_FRACTIONS = {"anchor": 0.25, "local": 0.15, "memory": 0.60}


def window_policy(name: str, window: int, sink: int, chunk: int, positions: str = "absolute", on_switch: str = "keep") -> Policy:
    """Self-Forcing's `local_attn_size` / `sink_size` semantics: `window` frames including the current
    chunk, the first `sink` of them kept forever. window <= 0 keeps everything."""
    if window <= 0:
        return Policy(name, {"all": RolePolicy((Sink(None),), positions, on_switch)})
    if window - sink - chunk < 0:
        raise UsageError(f"window {window} cannot hold a sink of {sink} and a chunk of {chunk} frames")
    segments = ((Sink(sink),) if sink else ()) + (Recent(window - sink - chunk),)
    return Policy(name, {"all": RolePolicy(segments, positions, on_switch)})


def preset(name: str, chunk: int = 3, window: int = 21) -> Policy:
    """The published methods, all on one engine. `window` is the trained context in latent frames."""
    if name == "full":
        return window_policy(name, -1, 0, chunk)
    if name == "self-forcing":
        return window_policy(name, window, 0, chunk, "absolute")
    if name == "longlive":
        return window_policy(name, 12, 3, chunk, "absolute", "recache")
    if name == "infinity-rope":
        return window_policy(name, window, 3, chunk, "compact")
    if name == "deep-forcing":
        return window_policy(name, window, window // 2 - 1, chunk, "compact")
    if name == "headforcing":
        return Policy(
            name,
            {
                "local": RolePolicy((Recent(3),), on_switch="recache"),
                "anchor": RolePolicy((Sink(3), Recent(3)), on_switch="keep"),
                "memory": RolePolicy((Sink(3), Episodic(6), Recent(9)), on_switch="recache"),
            },
        )
    if name == "headforcing-coarse":
        # Head Forcing with the hierarchical memory's coarse level: the memory heads' 6 episodic slots become 4
        # full-resolution ones and 2 coarse ones holding 8 older frames pooled 2x2 (same memory, same positions).
        return Policy(
            name,
            {
                "local": RolePolicy((Recent(3),), on_switch="recache"),
                "anchor": RolePolicy((Sink(3), Recent(3)), on_switch="keep"),
                "memory": RolePolicy((Sink(3), Episodic(4), Coarse(2), Recent(9)), on_switch="recache"),
            },
        )
    if name == "dummy-forcing":
        # Dummy Forcing (arXiv 2601.20499; csguoh/DummyForcing, wan/modules/dummyforcing.py): heads sorted by
        # where their attention goes: first-chunk heads keep only the sink, mid heads the local window, and the
        # ~25% "dummy" heads (almost all mass on the current chunk) only the newest chunk. Our reading: the sink is
        # the first chunk; positions as in the Self Forcing code it builds on (absolute).
        return Policy(
            name,
            {
                "first": RolePolicy((Sink(chunk),), "absolute"),
                "mid": RolePolicy((Recent(window - chunk),), "absolute"),
                "dummy": RolePolicy((Recent(chunk),), "absolute"),
            },
            fractions={"first": 0.25, "dummy": 0.25, "mid": 0.5},
            rule="dummy=current:top25%,first=sink:top33%,mid=rest",
        )
    if name == "forcing-kv":
        # Forcing-KV (arXiv 2605.09681; zju-jiyicheng/Forcing-KV, configs_head/head_profile.py and
        # wan/modules/causal_model_forcingkv_final.py): "static" (local) heads, whose mass on the last 4 frames is
        # at least half of what they give past the first frame, keep the sink and 1 frame; "dynamic" (temporal)
        # heads keep the sink, the last 3 frames and a dynamic cache of the most changing patches of older
        # frames (half of 3 frames' patches). Our reading: the dynamic cache becomes 2 episodic slots of whole
        # frames (the engine keeps frames, not patches); compact positions.
        return Policy(
            name,
            {
                "static": RolePolicy((Sink(chunk), Recent(1)), "compact"),
                "dynamic": RolePolicy((Sink(chunk), Episodic(2), Recent(3)), "compact"),
            },
            fractions={"static": 0.5, "dynamic": 0.5},
            rule="static=current:top50%,dynamic=rest",
        )
    if name == "headforcing-retrieval":
        # Head Forcing with a retrieval memory: the memory heads' episodic slots become 6 retrieved ones, chosen
        # per head and per forward from an archive of every 4th frame that left `recent`, the last 48 of them
        # (48 s of video at Wan's 4 latent frames a second; cache/archive.py and docs/POLICIES.md for the sizes).
        return Policy(
            name,
            {
                "local": RolePolicy((Recent(3),), on_switch="recache"),
                "anchor": RolePolicy((Sink(3), Recent(3)), on_switch="keep"),
                "memory": RolePolicy((Sink(3), Retrieved(6, 48, every=4), Recent(9)), on_switch="recache"),
            },
        )
    if name in VARIANTS:
        return variant(name, chunk, window)
    if name == "memflow":
        # A uniform retrieval baseline (MemFlow, arXiv 2512.14699, read from its public text): every head keeps
        # a sink, a local window and a memory retrieved from past frames. Our reading: retrieval by the chunk's
        # queries against archived frames' mean keys (MemFlow scores with the prompt's text), the memory half
        # the local window (the paper's best): 6 retrieved frames, 12 recent, the archive headforcing-retrieval has.
        return Policy(name, {"all": RolePolicy((Sink(3), Retrieved(6, 48, every=4), Recent(12)), on_switch="recache")})
    if name == "pyramid-forcing":
        # Pyramid Forcing (arXiv 2605.13111, read from its abstract): anchor heads keep a long history, wave
        # heads sample history at a period, veil heads only the first and the adjacent frames. Our reading:
        # anchor 3 sink + 15 recent; wave 3 sink + every 3rd older frame (6 of them, all attended) + 3 recent;
        # veil 3 sink + 3 recent; compact positions; heads sorted by their mass on older frames, then on the sink.
        return Policy(
            name,
            {
                "anchor": RolePolicy((Sink(chunk), Recent(window - 2 * chunk)), "compact"),
                "wave": RolePolicy((Sink(chunk), Retrieved(6, 6, every=3), Recent(chunk)), "compact"),
                "veil": RolePolicy((Sink(chunk), Recent(chunk)), "compact"),
            },
            fractions={"anchor": 0.25, "wave": 0.375, "veil": 0.375},
            rule="anchor=rest:top25%,veil=sink:top50%,wave=rest",
        )
    raise UsageError(f"unknown policy {name!r}; known: {', '.join(PRESETS)}")


PRESETS = ("full", "self-forcing", "longlive", "infinity-rope", "deep-forcing", "headforcing", "headforcing-coarse",
           "headforcing-retrieval", "dummy-forcing", "forcing-kv", "pyramid-forcing", "memflow")
# Head Forcing's variants, one change each, for ablations (reachable by name; not in the preset lists)
VARIANTS = ("headforcing-near", "headforcing-replace", "headforcing-merge", "headforcing-keep-first", "headforcing-retrieval-near")


def variant(name: str, chunk: int = 3, window: int = 21) -> Policy:
    """`headforcing` with one change to its memory heads: `-near` numbers the episodic slots right before the
    chunk; `-replace` / `-merge` / `-keep-first` fix the episodic slots' rule (cache/episodic.py);
    `-retrieval-near` is `headforcing-retrieval` with its retrieved slots right before the chunk."""
    base = preset("headforcing-retrieval" if name == "headforcing-retrieval-near" else "headforcing", chunk, window)
    memory = base.roles["memory"]
    if name.endswith("-near"):
        memory = replace(memory, memory_at="near")
    else:
        rule = name.removeprefix("headforcing-")
        memory = replace(memory, segments=tuple(Episodic(s.slots, rule) if isinstance(s, Episodic) else s for s in memory.segments))
    return Policy(name, {**base.roles, "memory": memory})


def known(name: str) -> bool:
    return name in PRESETS or name in VARIANTS
