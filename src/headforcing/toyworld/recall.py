"""`headforcing toyworld eval --suite recall`: which cache lets the model redraw what left the screen?

A recall scene (`RecallScene`) has six objects of six colours on a background: three on screen from the
first frame (a sink can hold them) and three *late entrants* that come in after the first window (no sink
holds them). Each object stays 10 s, leaves, and comes back after an absence of 5, 15, 30, 60 or 120 s (each
object walks through the five gaps in its own seeded order, again and again), so that a 600 s video holds
some sixty returns. An object's colour is said while it is first on screen and never again: on a return the
caption says only "a circle", and the colour can come from nowhere but the frames a cache kept.

Two modes, both reported:
  teacher  the world's own frames are committed chunk by chunk through the policy's cache (the policy keeps
           what it chooses, as when sampling); at each return the model draws the return chunk from noise
           under the caption in force (`Session.step(truth)`), the drawing is scored, and the truth goes on
           into the cache. This measures what the cache keeps *and* the model can use, free of drift.
  free     the model's own video (`Session.step()`); a return is scored when the model had drawn the object
           in its true colour just before it left and no longer draws it in the chunk before the return
           (otherwise there is nothing to recall).

A return is scored on the three frames of the return chunk: the colours drawn there, less the background
and the colours of the other objects on screen, the one with most pixels is the drawn colour; a hit when it
is the colour the object left with (a chunk with no such colour is a miss). Chance is 1 / (colours the
object could take), 1/7..1/4 with the others on screen.

Two reference caches, for the table only (not presets a user picks): `window`, the newest 18 frames and no
memory (the floor), and `oracle`, the same window plus, at a return, the chunk where the returner was last
seen (from the truth's timeline; the model's own frames in the free mode), placed just before the newest 15
frames, all inside the trained window (the ceiling a cache can give this model).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..cache.policy import Policy, window_policy
from ..errors import UsageError
from ..models.specs import TOY
from .memory import MemoryScene, apply
from .world import PALETTE, decode_state, make_world

GAPS = (5.0, 15.0, 30.0, 60.0, 120.0)  # absences, seconds
STAY = 10.0  # seconds on screen between absences
FROM_START, LATE = (0, 1, 2), (3, 4, 5)  # object indices
LATE_ENTRY = 6.0  # seconds: the first entrant comes after the 21-frame window (5.25 s); the others 4 s apart
MODES = ("teacher", "free")
REFERENCES = ("oracle", "window")
C = TOY.chunk_frames
RECENT = TOY.trained_frames - 2 * C  # 15: the oracle's recent frames, after the returner's last-seen chunk


def reference_window(name: str) -> Policy:
    """The references' cache: the newest 18 frames (+ the chunk), compact positions, no memory (`window`, the
    floor; and the oracle's side context at a return, 18 given frames inside the trained window)."""
    return window_policy(name, TOY.trained_frames, 0, C, "compact")


# ---- the scene ---------------------------------------------------------------------------------------------
def script(seed: int, seconds: float) -> list[tuple[float, int, str]]:
    """(seconds, object, "enter" | "leave" | "return") in time order, before `seconds`."""
    rng = np.random.default_rng([seed, 7])
    events = []
    for index in (*FROM_START, *LATE):
        late = index in LATE
        start = LATE_ENTRY + 4.0 * LATE.index(index) if late else 0.0
        if late:
            events.append((start, index, "enter"))
        t = start + STAY + (0.0 if late else 1.5 * index)  # the first objects leave one after the other
        order = list(rng.permutation(GAPS))
        while t < seconds:
            gap = order.pop(0)
            order.append(gap)
            events += [(t, index, "leave"), (t + gap, index, "return")]
            t += gap + STAY
    return sorted(e for e in events if e[0] < seconds)


class RecallScene(MemoryScene):
    """A memory scene (its world at frame 0, its events at chunk starts) with the recall suite's script."""

    @classmethod
    def for_seed(cls, seed: int, seconds: float) -> "RecallScene":
        world = make_world(seed, TOY.size[0], objects=len(FROM_START) + len(LATE))
        for index in LATE:
            world.things[index].visible = False
        events = [(int(round(t * TOY.fps / C)) * C, i, a) for t, i, a in script(seed, seconds)]
        return cls(world, events)

    def play(self, n: int):
        """(frame [H, W, 3] uint8, caption in force) for frames 0..n-1, one by one."""
        world, pending = self.copy_world(), list(self.events)
        for f in range(n):
            while pending and pending[0][0] == f:
                apply(world, *pending.pop(0)[1:])
            yield world.render(), world.caption()
            world.step()

    def returns(self, n: int) -> dict[int, dict]:
        """Chunk index -> the return scored there (the first return of a chunk, whole chunks inside n frames):
        who, gap (s), the object, its colour, the chunk where it was last seen, the others' colours on screen."""
        left, visible, out = {}, {i for i in FROM_START}, {}
        for frame, index, action in self.events:
            if action == "leave":
                left[index] = frame
                visible.discard(index)
            else:
                if action == "return" and frame + C <= n and frame // C not in out:
                    others = {self.world.things[i].colour for i in visible}
                    out[frame // C] = dict(who="from_start" if index in FROM_START else "late", gap=nearest_gap((frame - left[index]) / TOY.fps),
                                           object=index, colour=self.world.things[index].colour, last_seen=left[index] // C - 1,
                                           others=sorted(others))
                visible.add(index)
        return out


def nearest_gap(seconds: float) -> float:
    """The scripted absence a measured one (rounded to chunk starts) stands for."""
    return min(GAPS, key=lambda g: abs(g - seconds))


# ---- scoring -----------------------------------------------------------------------------------------------
def drawn_colour(frames, background: str, others) -> str | None:
    """The colour drawn for a returning object over frames [n, H, W, 3]: of the colours found that are not the
    background nor another on-screen object's, the one with most pixels (None: nothing new drawn)."""
    pixels: dict[str, int] = {}
    for frame in frames:
        for o in decode_state(np.asarray(frame))["objects"]:
            if o["colour"] != background and o["colour"] not in others:
                pixels[o["colour"]] = pixels.get(o["colour"], 0) + o["pixels"]
    return max(pixels, key=pixels.get) if pixels else None


def chance(background: str, others) -> float:
    return 1.0 / (len(PALETTE) - 1 - len(others))


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if n == 0:
        return float("nan"), float("nan")
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


def has(frames, colour: str) -> bool:
    """Is `colour` an object on most of the frames?"""
    return 2 * sum(any(o["colour"] == colour for o in decode_state(np.asarray(f))["objects"]) for f in frames) > len(frames)


# ---- running one video -------------------------------------------------------------------------------------
def run(pipe, policy: str, mode: str, seed: int, seconds: float, heads=None, sampling=None, draw=None) -> list[dict]:
    """Every scored return of one seed's video: dicts of who, gap, hit (bool), chance, drawn (colour or None).
    policy: a preset, "window", "oracle" or "truth" (the world's own frames drawn: the ceiling of the scoring).
    `draw(chunk_index, truth_frames, event)` may replace the model's drawing (tests)."""
    n = int(seconds * TOY.fps) // C * C
    scene = RecallScene.for_seed(seed, seconds)
    events = scene.returns(n)
    background = scene.world.background
    frames = scene.play(n)
    session = side = None
    if policy != "truth":
        name = reference_window("window") if policy in REFERENCES else policy
        first_caption = scene.world.caption()
        session = pipe.session(first_caption, policy=name, seed=seed, heads=heads, **(sampling or {}))
    recent, seen, caption, out = [], {}, None, []  # the newest frames' latents, each object's last-seen chunk
    previous = np.zeros((0, TOY.size[0], TOY.size[0], 3), np.uint8)  # the video's frames of the chunk before
    for chunk in range(n // C):
        part = [next(frames) for _ in range(C)]
        truth_frames = np.stack([f for f, _ in part])  # [3, H, W, 3]
        if part[0][1] != caption and session is not None:
            session.set_prompt(part[0][1])
        caption = part[0][1]
        event = events.get(chunk)
        truth = pipe.encode_frames(truth_frames) if session is not None else None  # [1, 3, 3, H, W]
        if event is not None and policy == "oracle":
            side = oracle_draw(pipe, seed, chunk, caption, recent, seen.get(event["object"]), sampling)
        drawn_latents = None
        if session is None:
            drawn = truth_frames
        elif mode == "teacher":
            if event is None or side is not None:
                session.feed(truth)
            else:
                drawn = session.step(truth).frames[0].numpy()
            if side is not None:
                drawn = side[1]
        elif side is not None:
            session.feed(side[0])
            drawn_latents, drawn = side
        else:
            got = session.step()
            drawn_latents, drawn = got.latents.cpu(), got.frames[0].numpy()
        if draw is not None and event is not None:
            drawn = draw(chunk, truth_frames, event)
        own = truth if mode == "teacher" or session is None else drawn_latents  # what the video holds now
        made = truth_frames if mode == "teacher" or session is None else drawn
        if event is not None and drawn_colour(truth_frames, background, event["others"]) == event["colour"]:
            # (hidden behind others in the truth: not scored; free-running, only a return the model's own video made:
            # drawn in its colour before it left, and gone from the chunk before it came back)
            kept = mode == "teacher" or (seen.get(event["object"], (None, False))[1] and not has(previous, event["colour"]))
            if kept:
                colour = drawn_colour(drawn, background, event["others"])
                out.append(dict(who=event["who"], gap=event["gap"], hit=colour == event["colour"], drawn=colour,
                                chance=chance(background, event["others"])))
        for index, thing in enumerate(scene.world.things):  # the last-seen chunk of each object, by the timeline
            if any(e[1] == index and e[2] == "leave" and e[0] == (chunk + 1) * C for e in scene.events):
                seen[index] = (own, mode == "teacher" or session is None or has(made, thing.colour))
        recent = (recent + [own])[-(RECENT // C):] if own is not None else recent
        side, previous = None, made
    return out


def oracle_draw(pipe, seed: int, chunk: int, caption: str, recent: list, last_seen, sampling):
    """The oracle at a return: a fresh window holding the returner's last-seen chunk and the newest 15 frames
    (18 frames, compact positions), then the return chunk drawn. (latents [1, 3, ...], frames [3, H, W, 3])."""
    parts = ([last_seen[0]] if last_seen is not None else []) + recent
    side = pipe.session(caption, policy=reference_window("oracle"), seed=seed * 100_003 + chunk, **(sampling or {}))
    side.start_from(torch.cat(parts, dim=1))
    got = side.step()
    return got.latents.cpu(), got.frames[0].numpy()


# ---- the suite ---------------------------------------------------------------------------------------------
def summarise(events: list[dict]) -> dict:
    """recall[gap][from_start|late] = value, scored, low, high (95% Wilson), chance (mean over the events)."""
    table = {}
    for gap in GAPS:
        for who in ("from_start", "late"):
            mine = [e for e in events if e["gap"] == gap and e["who"] == who]
            hits = sum(e["hit"] for e in mine)
            low, high = wilson(hits, len(mine))
            table.setdefault(f"{gap:g}", {})[who] = dict(
                value=hits / len(mine) if mine else float("nan"), scored=len(mine), low=low, high=high,
                chance=float(np.mean([e["chance"] for e in mine])) if mine else float("nan"))
    return table


def evaluate_recall(pipe, policies: list[str], seconds: float, seeds: int, out: str, modes=MODES, heads: str | None = None,
                    weights: str | None = None, sampling: dict | None = None, first_seed: int = 0, progress=print) -> dict | None:
    """Per mode x policy x seed a recall scene on the loaded toy model; recall.json, recall.md and recall.png in `out`."""
    from .eval import sharded

    if seeds < 1 or first_seed < 0:
        raise UsageError(f"--seeds must be at least 1 and --first-seed 0 or more, got {seeds} and {first_seed}")
    if seconds < 30:
        raise UsageError(f"the recall suite needs videos of 30 s or more (its shortest cycle), got {seconds:g}")
    runs = [(mode, policy, seed) for mode in modes for policy in policies for seed in range(first_seed, first_seed + seeds)]
    out_dir = Path(out)

    def one(pipe, r):
        mode, policy, seed = r
        return run(pipe, policy, mode, seed, seconds, heads if policy.startswith("headforcing") else None, sampling), {}

    done = sharded(pipe, runs, one, out_dir, lambda r: f"recall: {r[0]} {r[1]} seed {r[2]}", progress)
    if done is None:
        return None
    results = [dict(mode=mode, policy=policy, recall=summarise([e for i, r in enumerate(runs) if r[:2] == (mode, policy) for e in done[i][0]]))
               for mode in modes for policy in policies]
    report = dict(suite="recall", policies=policies, modes=list(modes), seconds=seconds, seeds=seeds, first_seed=first_seed,
                  weights=weights or "shipped", heads=heads, gaps=list(GAPS), results=results)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "recall.json").write_text(json.dumps(report, indent=1))
    (out_dir / "recall.md").write_text(recall_table(results))
    plot(results, out_dir / "recall.png")
    return report


def recall_table(results: list[dict]) -> str:
    head = "| mode | policy | " + " | ".join(f"{g:g} s: from start / late" for g in GAPS) + " |"
    lines = [head, "|" + "---|" * (2 + len(GAPS))]
    for r in results:
        cells = []
        for g in GAPS:
            entry = r["recall"][f"{g:g}"]
            cells.append(" / ".join(f"{entry[w]['value']:.2f} [{entry[w]['low']:.2f}, {entry[w]['high']:.2f}] ({entry[w]['scored']})"
                                    if entry[w]["scored"] else "–" for w in ("from_start", "late")))
        lines.append(f"| {r['mode']} | {r['policy']} | " + " | ".join(cells) + " |")
    chances = [e["chance"] for r in results for g in r["recall"].values() for e in g.values() if e["scored"]]
    lines += ["", "Recall: share of scored returns (count in brackets) drawn in the colour the object left with, with its 95% "
              f"Wilson interval; chance {min(chances, default=float('nan')):.2f}-{max(chances, default=float('nan')):.2f} "
              "(1 / the colours the object could take)."]
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = sorted({r["mode"] for r in results}, key=MODES.index)
    fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        for r in (r for r in results if r["mode"] == mode):
            for who, style in (("late", "-"), ("from_start", ":")):
                ys = [r["recall"][f"{g:g}"][who]["value"] for g in GAPS]
                ax.plot(GAPS, ys, style, marker="o", label=f"{r['policy']} ({who.replace('_', ' ')})")
        chance_values = [e["chance"] for r in results for g in r["recall"].values() for e in g.values() if e["scored"]]
        if chance_values:
            ax.axhline(float(np.mean(chance_values)), color="grey", lw=0.8, label="chance")
        ax.set(xscale="log", xticks=GAPS, xticklabels=[f"{g:g}" for g in GAPS], ylim=(0, 1), xlabel="absence (s)",
               ylabel="recall", title=f"{mode}-forced" if mode == "teacher" else "free-running")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
