"""`headforcing toyworld eval`: long-horizon drift and forgetting of the toy model, against the world's truth.

For each seed the world gives a caption (background, objects' colours and shapes); the model generates a
video far past its 21-frame window under each cache policy; every frame is read back with the world's
state decoder (colour segmentation) and compared with the caption in force at that frame:
background right, background colour distance, captioned object colours found, their shapes, object count,
spurious objects, speed of the objects (motion continuity), and, with a prompt switch, whether the new
colour appears only after the switch and the old one goes. Per-frame values are reduced per window of 21
frames as they come, so memory does not grow with the video. The start position and velocity are the
model's to choose: the truth is the caption, not the world's trajectory.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..utils.ranks import Group, shard, world
from ..models.specs import TOY
from ..engine.pipeline import Pipeline
from ..engine.session import schedule_for
from ..engine.timeline import Cue, latent_frames_for, schedule
from ..cache.episodic import EpisodicConfig
from .memory import GAPS, RETURNER, MemoryScene, identity, recall
from .world import PALETTE, change_caption, decode_state, generate, make_world, pick_change

WINDOW = TOY.trained_frames  # 21 frames = 5.25 s
CHANCE = 1 / 6  # a returning object's colour drawn at random: 8 colours less the background and the keeper
FRAME_METRICS = ("background_ok", "background_distance", "colour_recall", "all_colours", "shape_ok", "count_ok", "spurious",
                 "speed")
METRICS = (*FRAME_METRICS, "frozen")  # frozen: the window's mean object speed is under 0.25 px/frame


@dataclass
class Scene:
    """What a seed's captions say: per cue, its first frame, caption, background and {colour: shape}."""

    cues: list[tuple[float, str]]
    truths: list[tuple[str, dict[str, str]]]
    change: tuple[str, str] | None = None  # (old colour, new colour) at the switch

    @classmethod
    def for_seed(cls, seed: int, change_at: float | None) -> "Scene":
        world = make_world(seed, TOY.size[0])
        cues = [(0.0, world.caption())]
        truths = [(world.background, {t.colour: t.shape for t in world.things})]
        if change_at is None:
            return cls(cues, truths)
        index, colour = pick_change(world, seed)
        objects = dict(truths[0][1])
        old = world.things[index].colour
        objects[colour] = objects.pop(old)
        return cls(cues + [(change_at, change_caption(world, index, colour))], truths + [(world.background, objects)], (old, colour))


def nanmean(values) -> float:
    """Mean of the finite values; nan (quietly) when there are none."""
    a = np.asarray(values, float)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else float("nan")


def frame_metrics(decoded: dict, background: str, objects: dict[str, str], previous: dict | None) -> dict:
    found = {o["colour"]: o for o in decoded["objects"]}
    hits = [c for c in objects if c in found]
    speeds = [np.hypot(found[c]["x"] - previous[c]["x"], found[c]["y"] - previous[c]["y"])
              for c in hits if previous is not None and c in previous]
    return dict(
        background_ok=float(decoded["background"] == background),
        background_distance=decoded["background_distance"],
        colour_recall=len(hits) / len(objects),
        all_colours=float(len(hits) == len(objects)),
        shape_ok=np.mean([found[c]["shape"] == objects[c] for c in hits]) if hits else np.nan,
        count_ok=float(len(found) == len(objects)),
        spurious=float(len([c for c in found if c not in objects])),
        speed=float(np.mean(speeds)) if speeds else np.nan,
    )


def read_frame(frame: np.ndarray, background: str) -> dict:
    decoded = decode_state(frame)
    pixels = frame.reshape(-1, 3).astype(float)
    true_bg = np.array(PALETTE[background], float)
    near = np.linalg.norm(pixels - true_bg, axis=1)
    # colour distance of the frame's background area (its most common palette colour) to the true background
    labels = np.array([PALETTE[decoded["background"]]], float)
    mask = np.linalg.norm(pixels - labels, axis=1) < 60
    decoded["background_distance"] = float(near[mask].mean() / 255) if mask.any() else 1.0
    return decoded


@dataclass
class Track:
    """Per-window means of the per-frame metrics (constant memory), plus switch bookkeeping."""

    windows: list[dict] = field(default_factory=list)
    current: dict = field(default_factory=lambda: {m: [] for m in FRAME_METRICS})
    change: dict = field(default_factory=lambda: dict(new_before=[], new_after=[], old_after=[]))
    first_chunks: list[float] = field(default_factory=list)  # window 1's object colours found, per chunk (fading)

    def add(self, values: dict) -> None:
        for m in FRAME_METRICS:
            self.current[m].append(values[m])
        if len(self.current["background_ok"]) == WINDOW:
            self.close()

    def close(self) -> None:
        if self.current["background_ok"]:
            if not self.windows:
                recall, C = self.current["colour_recall"], TOY.chunk_frames
                self.first_chunks = [nanmean(recall[i : i + C]) for i in range(0, len(recall), C)]
            window = {m: nanmean(v) for m, v in self.current.items()}
            window["frozen"] = float(window["speed"] < 0.25) if np.isfinite(window["speed"]) else float("nan")
            self.windows.append(window)
            self.current = {m: [] for m in FRAME_METRICS}


def video(pipe: Pipeline | None, policy: str, seconds: float, seed: int, scene: Scene, heads: str | None, sampling: dict):
    """(frames [H, W, 3] uint8 one by one, first frame of each cue). Policy "truth": the world's own frames
    (no model needed); otherwise a session on the loaded toy model, its prompt switched at the cues."""
    cues = [Cue(t, text) for t, text in scene.cues]
    C = TOY.chunk_frames
    n = latent_frames_for(seconds, TOY.fps, C, TOY.vae_stride[0])
    timeline = schedule(cues, n // C, C, TOY.fps, TOY.vae_stride[0])
    starts = [c["start_frame"] for c in timeline]
    if policy == "truth":
        frames, _, _ = generate(seed, n, TOY.size[0], change_at=starts[1] if len(starts) > 1 else None)
        return iter(frames), starts
    session = pipe.session(cues[0].prompt, policy=policy, seed=seed, heads=heads, **sampling)
    return session_frames(session, n // C, {c["chunk"]: c["prompt"] for c in timeline[1:]}), starts


def session_frames(session, chunks: int, switches: dict[int, str]):
    """A session's frames one by one over `chunks` chunks, its prompt switched at the chunks given."""
    for index in range(chunks):
        if index in switches:
            session.set_prompt(switches[index])
        yield from session.step().frames[0].numpy()


def run_one(pipe: Pipeline | None, policy: str, seconds: float, seed: int, scene: Scene, heads: str | None = None,
            keep_frames: list[int] = (), sampling: dict | None = None) -> tuple[Track, dict[int, np.ndarray]]:
    """`sampling`: session overrides of the model's schedule (solver, context_noise)."""
    frames, starts = video(pipe, policy, seconds, seed, scene, heads, sampling or {})
    track, kept, previous, f = Track(), {}, None, 0
    for frame in frames:
        cue = max(i for i, s in enumerate(starts) if s <= f)
        background, objects = scene.truths[cue]
        decoded = read_frame(frame, background)
        track.add(frame_metrics(decoded, background, objects, previous))
        previous = {o["colour"]: o for o in decoded["objects"]}
        if scene.change is not None:
            present = set(previous)
            old, new = scene.change
            if cue == 0:
                track.change["new_before"].append(new in present)
            elif f >= starts[1] + TOY.chunk_frames:  # one chunk to turn
                track.change["new_after"].append(new in present)
                track.change["old_after"].append(old in present)
        if f in keep_frames:
            kept[f] = frame
        f += 1
    track.close()
    return track, kept


def summarise(tracks: list[Track]) -> dict:
    """Mean over seeds of: the first window, the last window, all windows; per-seed window-1 accuracy."""
    first = {m: nanmean([t.windows[0][m] for t in tracks]) for m in METRICS}
    last = {m: nanmean([t.windows[-1][m] for t in tracks]) for m in METRICS}
    every = {m: nanmean([w[m] for t in tracks for w in t.windows]) for m in METRICS}
    seeds = dict(
        background=float(np.mean([t.windows[0]["background_ok"] > 0.5 for t in tracks])),
        object_colours=float(np.mean([t.windows[0]["colour_recall"] > 0.5 for t in tracks])),
        all_object_colours=float(np.mean([t.windows[0]["all_colours"] > 0.5 for t in tracks])),
    )
    by_chunk = [nanmean([t.first_chunks[i] for t in tracks]) for i in range(len(tracks[0].first_chunks))]
    out = dict(first_window=first, last_window=last, all=every, seeds_first_window=seeds, first_window_by_chunk=by_chunk)
    if tracks[0].change["new_before"] or tracks[0].change["new_after"]:
        out["switch"] = {k: float(np.mean([np.mean(t.change[k]) for t in tracks if t.change[k]])) for k in tracks[0].change}
    return out


def evaluate(pipe, policies: list[str], durations: list[float], seeds: int, out: str, heads: str | None = None,
             weights: str | None = None, change_at: float | None = None, sampling: dict | None = None,
             first_seed: int = 0, progress=print) -> dict:
    """Seeds first_seed .. first_seed + seeds - 1 (the frames shown are the first seed's), on the loaded toy
    model `pipe` (`weights`: the --toy-weights it was loaded with, for the report)."""
    if seeds < 1:
        raise UsageError(f"--seeds must be at least 1, got {seeds}")
    if first_seed < 0:
        raise UsageError(f"--first-seed must be 0 or more, got {first_seed}")
    if change_at is not None and not 0 < change_at < min(durations):
        raise UsageError(f"--change-at must fall inside every duration (0..{min(durations):g} s), got {change_at:g}")
    sampling = dict(sampling or {})
    used = schedule_for(TOY.schedule, sampling.get("solver"), sampling.get("context_noise"))  # what the runs use
    out_dir = Path(out)
    runs = [(seconds, policy, seed) for seconds in durations for policy in policies for seed in range(first_seed, first_seed + seeds)]

    def one(pipe, run):
        seconds, policy, seed = run
        show = [int(s * TOY.fps) for s in sorted({0.0, 5.0, 30.0, seconds / 2, seconds - 1 / TOY.fps}) if s < seconds]
        track, kept = run_one(pipe, policy, seconds, seed, Scene.for_seed(seed, change_at), heads if policy.startswith("headforcing") else None,
                              show if seed == first_seed else (), sampling)
        return asdict(track), kept

    done = sharded(pipe, runs, one, out_dir, lambda run: f"{run[1]} {run[0]:g} s seed {run[2]}", progress)
    if done is None:  # a rank other than 0: rank 0 gathered every rank's runs (through files) and writes the report
        return None
    done = {i: (Track(**track), kept) for i, (track, kept) in done.items()}
    results, curves, strips = [], {}, {}
    for seconds in durations:
        for policy in policies:
            tracks = [done[i][0] for i, run in enumerate(runs) if run[:2] == (seconds, policy)]
            strips[(seconds, policy)] = next(done[i][1] for i, run in enumerate(runs) if run == (seconds, policy, first_seed))
            results.append(dict(policy=policy, seconds=seconds, seeds=seeds, **summarise(tracks)))
            curves[(seconds, policy)] = tracks
    out_dir.mkdir(parents=True, exist_ok=True)
    report = dict(policies=policies, durations=durations, seeds=seeds, first_seed=first_seed, change_at=change_at, heads=heads,
                  weights=weights or "shipped", solver=used.solver, context_noise=used.context_noise,
                  blend_chunks=sampling.get("blend_chunks", 0),
                  results=results)
    (out_dir / "toyworld.json").write_text(json.dumps(report, indent=1))
    (out_dir / "toyworld.md").write_text(table(results))
    write_curves(curves, out_dir)
    write_strips(strips, out_dir)
    return report


def gather(done: dict, out_dir: Path, rank: int, size: int, group) -> dict | None:
    """Every rank's runs on rank 0 (None elsewhere): results as JSON, kept frames as .npz (no pickle)."""
    parts = out_dir / ".parts"
    parts.mkdir(parents=True, exist_ok=True)
    (parts / f"rank{rank}.json").write_text(json.dumps({i: result for i, (result, _) in done.items()}))
    np.savez(parts / f"rank{rank}.npz", **{f"{i}_{f}": frame for i, (_, kept) in done.items() for f, frame in kept.items()})
    group.barrier()
    if rank != 0:
        return None
    merged = {}
    for r in range(size):
        results = json.loads((parts / f"rank{r}.json").read_text())
        with np.load(parts / f"rank{r}.npz", allow_pickle=False) as frames:
            kept = {key: frames[key] for key in frames.files}
        for i, fields in results.items():
            mine = {int(k.split("_")[1]): v for k, v in kept.items() if k.split("_")[0] == i}
            merged[int(i)] = (fields, mine)
        (parts / f"rank{r}.json").unlink()
        (parts / f"rank{r}.npz").unlink()
    parts.rmdir()
    return merged


def sharded(pipe, runs: list, one, out_dir: Path, describe, progress=print) -> dict | None:
    """`one(pipe, run) -> (JSON-able result, kept frames)` for every run, each torchrun rank taking every size-th
    on its loaded toy model; rank 0 gets {index: (result, frames)} of them all, the other ranks None."""
    rank, size, _ = world()
    group = Group(size)
    try:
        done = {}
        for i in shard(range(len(runs)), rank, size):
            done[i] = one(pipe, runs[i])
            progress(f"{describe(runs[i])} done" + (f" (rank {rank} of {size})" if size > 1 else ""))
        if size > 1:
            done = gather(done, out_dir, rank, size, group)
    finally:
        group.close()
    return done


# ---- the memory suite -------------------------------------------------------------------------------------
def memory_video(pipe: Pipeline | None, policy: str, seconds: float, seed: int, scene: MemoryScene, heads, sampling: dict):
    """(frames one by one, cues as (first frame, caption)): the world's own ("truth") or a session's, its
    prompt switched at each event."""
    C = TOY.chunk_frames
    n = latent_frames_for(seconds, TOY.fps, C, TOY.vae_stride[0])
    cues = [(f, text) for f, text in scene.cues() if f < n]
    if policy == "truth":
        return scene.frames(n), cues
    session = pipe.session(cues[0][1], policy=policy, seed=seed, heads=heads, **sampling)
    return session_frames(session, n // C, {f // C: text for f, text in cues[1:]}), cues


def run_memory(pipe, policy: str, durations: list[float], seed: int, heads=None, sampling=None, keep=()) -> tuple[dict, dict]:
    """One video of a seed's memory scene as long as the longest duration, measured on each duration's first
    frames (a session does not know its end: the first 60 s of a 300 s video are a 60 s video)."""
    scene = MemoryScene.for_seed(seed, max(durations))
    frames, cues = memory_video(pipe, policy, max(durations), seed, scene, heads, sampling or {})
    return measure_memory(frames, scene, cues, keep, durations)


def said_colours(caption: str) -> set[str]:
    """The object colours a caption names (not the background's)."""
    words = caption.split()
    return {w for i, w in enumerate(words) if w in PALETTE and words[i + 1 : i + 2] != ["background"]}


def measure_memory(frames, scene: MemoryScene, cues: list[tuple[int, str]], keep=(), durations=None) -> tuple[dict, dict]:
    """Per duration (seconds; None: the whole video): identity persistence, every return the video reaches (3 s
    past it), and the captioned check (the colours the caption in force names are on screen); and the frames
    asked to `keep`."""
    said = {f: said_colours(text) for f, text in cues}
    seen, captioned, kept = [], [], {}
    for f, frame in enumerate(frames):
        decoded = decode_state(frame)
        colours = frozenset(o["colour"] for o in decoded["objects"])
        seen.append((decoded["background"], colours))
        named = said[max(c for c in said if c <= f)]
        captioned.append(float(named <= colours))
        if f in keep:
            kept[f] = frame
    returner = scene.world.things[RETURNER].colour
    results = {}
    for seconds in durations or [len(seen) / TOY.fps]:
        n = latent_frames_for(seconds, TOY.fps, TOY.chunk_frames, TOY.vae_stride[0])
        part = seen[:n]
        recalls = [recall(part, e, TOY.fps) for e in scene.returns() if e["back"] + 3 * TOY.fps <= n]
        results[seconds] = dict(identity=identity(part, returner, WINDOW), recalls=recalls, captioned=float(np.mean(captioned[:n])))
    return (results if durations else results[next(iter(results))]), kept


def memory_summary(runs: list[dict]) -> dict:
    """Over seeds: identity persistence (mean, spread), recall per absence and per kind of object (hits of the
    scorable returns, their count), the true colour's return, the captioned check, and chance."""
    def spread(values):
        a = np.asarray(values, float)
        a = a[np.isfinite(a)]
        return dict(mean=float(a.mean()) if a.size else float("nan"), std=float(a.std()) if a.size else float("nan"), seeds=int(a.size))

    recall_table = {}
    for gap in GAPS:
        for who in ("from_start", "late"):
            events = [r for run in runs for r in run["recalls"] if r["gap"] == gap and r["who"] == who]
            if not events:
                continue
            scored = [r["hit"] for r in events if r["hit"] is not None]
            recall_table.setdefault(f"{gap:g}", {})[who] = dict(
                recall=float(np.mean(scored)) if scored else float("nan"), scored=len(scored), events=len(events),
                true_colour=float(np.mean([r["truth"] for r in events])))
    return dict(
        identity_persistence={k: spread([run["identity"][k] for run in runs]) for k in ("background", "object_colour")},
        recall=recall_table, chance=CHANCE, captioned=spread([run["captioned"] for run in runs]))


def evaluate_memory(pipe, policies: list[str], durations: list[float], seeds: int, out: str, heads: str | None = None,
                    weights: str | None = None, sampling: dict | None = None, first_seed: int = 0, progress=print) -> dict | None:
    """`toyworld eval --suite memory` on the loaded toy model: per policy x duration x seed, a memory scene; a report
    per policy."""
    if seeds < 1 or first_seed < 0:
        raise UsageError(f"--seeds must be at least 1 and --first-seed 0 or more, got {seeds} and {first_seed}")
    out_dir = Path(out)
    runs = [(policy, seed) for policy in policies for seed in range(first_seed, first_seed + seeds)]

    def one(pipe, run):
        policy, seed = run
        scene = MemoryScene.for_seed(seed, max(durations))
        keep = sorted({f for d in durations for f in strip_frames(scene, d)}) if seed == first_seed else ()
        by_duration, kept = run_memory(pipe, policy, durations, seed, heads if policy.startswith("headforcing") else None, sampling, keep)
        return {f"{d:g}": r for d, r in by_duration.items()}, kept

    done = sharded(pipe, runs, one, out_dir, lambda run: f"memory: {run[0]} {max(durations):g} s seed {run[1]}", progress)
    if done is None:
        return None
    results, strips = [], {}
    for seconds in durations:
        for policy in policies:
            mine = [done[i][0][f"{seconds:g}"] for i, run in enumerate(runs) if run[0] == policy]
            kept = next(done[i][1] for i, run in enumerate(runs) if run == (policy, first_seed))
            shown = strip_frames(MemoryScene.for_seed(first_seed, max(durations)), seconds)
            strips[(seconds, policy)] = {f: kept[f] for f in shown}
            results.append(dict(policy=policy, seconds=seconds, seeds=seeds, first_seed=first_seed, memory=memory_summary(mine)))
    out_dir.mkdir(parents=True, exist_ok=True)
    report = dict(suite="memory", policies=policies, durations=durations, seeds=seeds, first_seed=first_seed,
                  weights=weights or "shipped", heads=heads, chance=CHANCE,
                  novelty=(sampling or {}).get("episodic", EpisodicConfig()).novelty, results=results)
    (out_dir / "memory.json").write_text(json.dumps(report, indent=1))
    (out_dir / "memory.md").write_text(memory_table(results))
    write_strips(strips, out_dir, prefix="memory_frames")
    return report


def strip_frames(scene: MemoryScene, seconds: float) -> list[int]:
    """Frames around the returner's longest return in the video: before and after it leaves, before and after it
    comes back."""
    back = [e for e in scene.returns() if e["who"] == "from_start" and e["back"] + 3 * TOY.fps < seconds * TOY.fps]
    if not back:
        return []
    e = back[-1]
    return [e["leave"] - TOY.fps, e["leave"] + TOY.fps, e["back"] - TOY.fps, e["back"] + TOY.fps, e["back"] + 2 * TOY.fps]


def memory_table(results: list[dict]) -> str:
    gaps = sorted({g for r in results for g in r["memory"]["recall"]}, key=float)
    head = ("| policy | video | identity: background / keeper colour (mean ± sd over seeds) | "
            + " | ".join(f"recall after {g} s: start / late" for g in gaps) + " | captioned colours |")
    lines = [head, "|" + "---|" * (4 + len(gaps))]
    for r in results:
        m = r["memory"]
        ip = m["identity_persistence"]
        cells = []
        for g in gaps:
            entry = m["recall"].get(g, {})
            cells.append(" / ".join(f"{entry[w]['recall']:.2f} ({entry[w]['scored']})" if w in entry else "–"
                                    for w in ("from_start", "late")))
        lines.append(f"| {r['policy']} | {r['seconds']:g} s | {ip['background']['mean']:.2f} ± {ip['background']['std']:.2f} / "
                     f"{ip['object_colour']['mean']:.2f} ± {ip['object_colour']['std']:.2f} | " + " | ".join(cells)
                     + f" | {m['captioned']['mean']:.2f} |")
    lines += ["", f"Recall: share of scorable returns (count in brackets) whose colour is the one the object left with; "
              f"chance {CHANCE:.2f} (1 in {round(1 / CHANCE)})."]
    return "\n".join(lines) + "\n"


def table(results: list[dict]) -> str:
    head = ("| policy | video | window 1: bg / obj colours / shapes / count | last window: bg / obj colours / shapes / count "
            "| bg distance first→last | speed first→last (px/frame) | frozen last | spurious last |")
    lines = [head, "|" + "---|" * 8]
    for r in results:
        a, b = r["first_window"], r["last_window"]
        lines.append(
            f"| {r['policy']} | {r['seconds']:g} s | {a['background_ok']:.2f} / {a['colour_recall']:.2f} / {a['shape_ok']:.2f} / "
            f"{a['count_ok']:.2f} | {b['background_ok']:.2f} / {b['colour_recall']:.2f} / {b['shape_ok']:.2f} / {b['count_ok']:.2f} "
            f"| {a['background_distance']:.3f} → {b['background_distance']:.3f} | {a['speed']:.2f} → {b['speed']:.2f} "
            f"| {b['frozen']:.2f} | {b['spurious']:.2f} |")
    lines += ["", "| policy | video | share of seeds, window 1: background right on most frames / over half the object colours found on average / every object colour found on most frames |",
              "|---|---|---|"]
    lines += [f"| {r['policy']} | {r['seconds']:g} s | {r['seeds_first_window']['background']:.2f} / "
              f"{r['seeds_first_window']['object_colours']:.2f} / {r['seeds_first_window']['all_object_colours']:.2f} |" for r in results]
    lines += ["", "| policy | video | window 1, object colours found per chunk of 3 frames (does the window fade?) |", "|---|---|---|"]
    lines += [f"| {r['policy']} | {r['seconds']:g} s | {' '.join(f'{v:.2f}' for v in r['first_window_by_chunk'])} |" for r in results]
    if any("switch" in r for r in results):
        lines += ["", "| policy | video | new colour before switch | new colour after | old colour after |", "|---|---|---|---|---|"]
        lines += [f"| {r['policy']} | {r['seconds']:g} s | {r['switch']['new_before']:.2f} | {r['switch']['new_after']:.2f} "
                  f"| {r['switch']['old_after']:.2f} |" for r in results if "switch" in r]
    return "\n".join(lines) + "\n"


def write_curves(curves: dict, out_dir: Path) -> None:
    """Per duration, one PNG: each metric over time (window means over seeds), a line per policy; and a CSV."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = ("background_ok", "colour_recall", "shape_ok", "count_ok", "background_distance", "speed")
    for seconds in sorted({s for s, _ in curves}):
        fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
        rows = []
        for (s, policy), tracks in curves.items():
            if s != seconds:
                continue
            n = len(tracks[0].windows)
            t = (np.arange(n) + 0.5) * WINDOW / TOY.fps
            for ax, m in zip(axes.ravel(), shown):
                y = [nanmean([tr.windows[i][m] for tr in tracks]) for i in range(n)]
                ax.plot(t, y, label=policy)
                ax.set_title(m.replace("_", " "))
                ax.set_xlabel("seconds")
                rows += [dict(policy=policy, metric=m, seconds=round(float(ti), 3), value=float(yi)) for ti, yi in zip(t, y)]
        axes[0, 0].legend()
        fig.suptitle(f"toy world, {seconds:g} s videos (means over seeds, per 21-frame window)")
        fig.tight_layout()
        fig.savefig(out_dir / f"curves_{seconds:g}s.png", dpi=80)
        plt.close(fig)
        with open(out_dir / f"curves_{seconds:g}s.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, ["policy", "metric", "seconds", "value"])
            writer.writeheader()
            writer.writerows(rows)


def write_strips(strips: dict, out_dir: Path, scale: int = 3, prefix: str = "frames") -> None:
    """Per duration, one PNG of seed 0: a row per policy, frames at 0, 5, 30 s, the middle and the end."""
    import cv2

    for seconds in sorted({s for s, _ in strips}):
        first = next(kept for (s, _), kept in strips.items() if s == seconds)
        side = (TOY.size[0] + 2) * scale
        header = np.full((24, 150 + side * len(first), 3), 255, np.uint8)
        for i, f in enumerate(sorted(first)):
            cv2.putText(header, f"{f / TOY.fps:g} s", (150 + i * side + 4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
        rows = [header]
        for (s, policy), kept in strips.items():
            if s != seconds:
                continue
            tiles = [np.pad(kept[f], ((1, 1), (1, 1), (0, 0)), constant_values=255) for f in sorted(kept)]
            row = np.concatenate(tiles, axis=1).repeat(scale, 0).repeat(scale, 1)
            label = np.full((row.shape[0], 150, 3), 255, np.uint8)
            cv2.putText(label, policy, (4, row.shape[0] // 2 + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
            rows.append(np.concatenate([label, row], axis=1))
        grid = np.concatenate(rows, axis=0)
        cv2.imwrite(str(out_dir / f"{prefix}_{seconds:g}s.png"), grid[..., ::-1])
