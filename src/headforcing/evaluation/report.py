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

from ..engine.files import publish
from ..errors import UsageError
from .metrics import SEGMENT_METRICS, analyse, frames_of, open_video


def parse_seconds(text: str) -> float:
    try:
        value = float(str(text).removesuffix("s"))
    except ValueError:
        raise UsageError(f"--segments must be seconds like 5s, got {text!r}") from None
    if not value > 0:
        raise UsageError(f"--segments must be positive, got {text!r}")
    return value


def read_prompt_segments(path: str, duration: float) -> list[dict]:
    """A timeline (generate's .timeline.json, or JSONL of {"start", "prompt"}) -> [{start_s, end_s, prompt}]."""
    text = Path(path).read_text() if Path(path).exists() else None
    if text is None:
        raise UsageError(f"prompt timeline {path} does not exist")
    try:
        data = json.loads(text)
        cues = [(c["start_seconds"], c["prompt"]) for c in data]
    except (json.JSONDecodeError, TypeError, KeyError):
        try:
            cues = [(float(json.loads(line)["start"]), json.loads(line)["prompt"]) for line in text.splitlines() if line.strip()]
        except (json.JSONDecodeError, TypeError, KeyError, ValueError):
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


def evaluate(videos: list[str], out_dir: str, segment_seconds: float = 5.0, prompt_timeline: str | None = None,
             weights_dir: str | None = None, clip_seconds: float = 2.0) -> dict:
    results, notes = {}, []
    embedders, text_embed = {}, None
    if weights_dir:
        from .learned import load_embedders

        embedders, text_embed, notes = load_embedders(weights_dir)
    else:
        notes.append("learned-model metrics skipped: no --weights-dir")
    names = [Path(v).name for v in videos]
    if len(set(names)) != len(names):
        names = [str(v) for v in videos]
    for name, video in zip(names, videos):
        report = analyse(video, segment_seconds)
        if prompt_timeline:
            report["prompt_segments"] = read_prompt_segments(prompt_timeline, report["duration_s"])
        if embedders:
            from .learned import learned_metrics

            frames, rate = small_frames(video)
            report["learned"] = learned_metrics(frames, rate, embedders, clip_seconds, report.get("prompt_segments"), text_embed)
        results[name] = report
    metrics = {"videos": results, "notes": notes, "segment_metrics": list(SEGMENT_METRICS)}
    write_outputs(Path(out_dir), metrics)
    return metrics


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
