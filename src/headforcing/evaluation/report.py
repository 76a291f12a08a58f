"""`headforcing eval`: metrics.json, segments.csv and one PNG per metric over time, written only when
every video has been measured (never a partial metrics file)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from ..utils.files import parse_json, publish, read_text
from ..engine.timeline import cue_from_json
from ..errors import UsageError
from ..utils.ranks import Group, shard, world
from .metrics import SEGMENT_METRICS, analyse, frames_of, open_video


def parse_seconds(text: str) -> float:
    try:
        value = float(str(text).removesuffix("s"))
    except ValueError:
        raise UsageError(f"--segments must be seconds like 5s, got {text!r}") from None
    if not value > 0:
        raise UsageError(f"--segments must be positive, got {text!r}")
    return value


def y_range(values) -> tuple[float, float]:
    """A plot's y limits: the values with a margin, and never narrower than a tenth of their size, so that a
    change in the fourth digit (a luma of 0.4458 -> 0.4445) does not fill the plot like a cliff."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    lo, hi = min(finite), max(finite)
    span = max(hi - lo, 0.1 * max(abs(lo), abs(hi)), 1e-6)
    middle = (lo + hi) / 2
    return middle - 0.6 * span, middle + 0.6 * span


def read_prompt_segments(path: str, duration: float) -> list[dict]:
    """A timeline (generate's .timeline.json, or JSONL of {"start", "prompt"}) -> [{start_s, end_s, prompt}]."""
    if not Path(path).exists():
        raise UsageError(f"prompt timeline {path} does not exist")
    text = read_text(path, "prompt timeline")
    try:
        data = parse_json(text, "")
        cues = [(c.start, c.prompt) for c in (cue_from_json(dict(start=c["start_seconds"], prompt=c["prompt"])) for c in data)]
    except (TypeError, KeyError, ValueError):
        try:
            cues = [(c.start, c.prompt) for c in (cue_from_json(parse_json(line, "")) for line in text.splitlines() if line.strip())]
        except ValueError:
            raise UsageError(f"{path} is neither a .timeline.json nor JSONL of {{\"start\", \"prompt\"}}") from None
    if any(start >= duration for start, _ in cues):
        raise UsageError(f"prompt timeline {path} runs past the end of the {duration:.2f} s video")
    ends = [s for s, _ in cues[1:]] + [duration]
    return [dict(start_s=s, end_s=e, prompt=p) for (s, p), e in zip(cues, ends)]


def small_frames(path, side: int = 256) -> tuple[np.ndarray, float]:
    """Every frame at short side `side` (the learned models see 224 px), for the learned metrics:
    ([N, h, w, 3], frame rate)."""
    import cv2

    container, fps = open_video(path)
    out = []
    with container:
        for rgb in frames_of(container, path):
            s = side / min(rgb.shape[:2])
            out.append(cv2.resize(rgb, (round(rgb.shape[1] * s), round(rgb.shape[0] * s)), interpolation=cv2.INTER_AREA))
    return np.stack(out), fps


def expand(paths: list[str]) -> list[tuple[str, str]]:
    """(name, file) of every video: a folder gives its .mp4 files (recursively, sorted; named by their path
    inside it, so DIR/<policy>/<id>.mp4 keeps its policy), a file its name (its path if names repeat)."""
    pairs = []
    for given in paths:
        root = Path(given)
        if root.is_dir():
            found = sorted(p for p in root.rglob("*.mp4") if not p.name.startswith("."))
            if not found:
                raise UsageError(f"folder {root} holds no .mp4 video")
            pairs += [(p.relative_to(root).as_posix(), str(p)) for p in found]
        else:
            pairs.append((root.name, given))
    if len({n for n, _ in pairs}) != len(pairs):
        pairs = [(v, v) for _, v in pairs]
    return pairs


def policy_table(results: dict) -> dict:
    """Per policy (a video's folder: DIR/<policy>/<id>.mp4), the mean of each video-level metric: the table a
    paper reports, one row per policy. Empty when the videos are not in policy folders."""
    groups: dict[str, list[dict]] = {}
    for name, report in results.items():
        if "/" in name:
            groups.setdefault(name.split("/")[0], []).append(report)
    table = {}
    for policy, reports in sorted(groups.items()):
        row = {m: float(np.nanmean([r[m] for r in reports])) for m in VIDEO_METRICS}
        row |= {f"gap_{m}": float(np.nanmean([r["gap"][m] for r in reports])) for m in SEGMENT_METRICS}
        table[policy] = dict(videos=len(reports), **row)
    return table


VIDEO_METRICS = ("temporal_flickering", "dynamic_degree_proxy", "motion_smoothness_proxy", "duration_s")


def evaluate(videos: list[str], out_dir: str, segment_seconds: float = 5.0, prompt_timeline: str | None = None,
             weights_dir: str | None = None, clip_seconds: float = 2.0) -> dict | None:
    """Measure the videos (files or folders of them). Under torchrun each rank measures every world-th video
    and rank 0 writes the merged files once all are done (other ranks return None)."""
    rank, size, _ = world()
    pairs = expand(videos)
    group = Group(size)
    try:
        results, notes, errors = measure(shard(pairs, rank, size), segment_seconds,
                                         prompt_timeline, weights_dir, clip_seconds)
        if size > 1:  # every rank reaches the barrier, even with a bad video: rank 0 says what failed
            parts = Path(out_dir) / ".parts"
            parts.mkdir(parents=True, exist_ok=True)
            (parts / f"rank{rank}.json").write_text(json.dumps(clean(dict(results=results, notes=notes, errors=errors))))
            group.barrier()
            if rank != 0:
                return None
            for r in range(size):
                part = json.loads((parts / f"rank{r}.json").read_text())
                results |= part["results"]
                notes += [n for n in part["notes"] if n not in notes]
                errors += part["errors"]
            for r in range(size):
                (parts / f"rank{r}.json").unlink()
            parts.rmdir()
    finally:
        group.close()
    if errors:
        raise UsageError(errors[0])
    results = {name: results[name] for name, _ in pairs}  # the order given, whichever rank measured it
    metrics = {"videos": results, "notes": notes, "segment_metrics": list(SEGMENT_METRICS)}
    if policy_table(results):
        metrics["policies"] = policy_table(results)
    write_outputs(Path(out_dir), metrics)
    return metrics


def measure(pairs: list[tuple[str, str]], segment_seconds, prompt_timeline, weights_dir, clip_seconds) -> tuple[dict, list, list]:
    """(reports by name, notes, errors): a video that cannot be measured is an error, not a crash."""
    results, notes, errors = {}, [], []
    embedders, text_embed = {}, None
    if weights_dir:
        from .learned import load_embedders

        embedders, text_embed, notes = load_embedders(weights_dir)
    else:
        notes.append("learned-model metrics skipped: no --weights-dir")
    for name, video in pairs:
        try:
            report = analyse(video, segment_seconds)
            if prompt_timeline:
                report["prompt_segments"] = read_prompt_segments(prompt_timeline, report["duration_s"])
        except UsageError as e:
            errors.append(str(e))
            continue
        if embedders:
            from .learned import learned_metrics

            frames, rate = small_frames(video)
            report["learned"] = learned_metrics(frames, rate, embedders, clip_seconds, report.get("prompt_segments"), text_embed)
        results[name] = report
    return results, notes, errors


def clean(value):
    """JSON has no NaN: write null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v) for v in value]
    return value


def write_outputs(out: Path, metrics: dict) -> None:
    """metrics.json, segments.csv, plot_<metric>.png; each file appears whole or not at all."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files: dict[str, bytes] = {"metrics.json": json.dumps(clean(metrics), indent=1).encode()}
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["video", "segment", "start_s", "end_s", *SEGMENT_METRICS])
    for name, report in metrics["videos"].items():
        for i, row in enumerate(report["segments"]):
            writer.writerow([name, i, f"{row['start_s']:.3f}", f"{row['end_s']:.3f}", *(f"{row[m]:.6g}" for m in SEGMENT_METRICS)])
    files["segments.csv"] = table.getvalue().encode()
    for metric in SEGMENT_METRICS:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        for name, report in metrics["videos"].items():
            rows = report["segments"]
            ax.plot([r["start_s"] for r in rows], [r[metric] for r in rows], marker="o", ms=3, label=name)
        ax.set_ylim(*y_range([r[metric] for report in metrics["videos"].values() for r in report["segments"]]))
        ax.set_xlabel("segment start (s)")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} over time")
        ax.legend(fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        files[f"plot_{metric}.png"] = buf.getvalue()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create {out}: {e.strerror}") from None
    for name, data in files.items():
        fd, tmp = tempfile.mkstemp(dir=out, prefix=".partial-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        publish(tmp, out / name)
