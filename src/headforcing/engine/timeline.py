"""Prompt timelines: which prompt drives which chunk. A switch happens at the first chunk boundary at or
after its requested time (a chunk's time is that of its first output frame)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..models.specs import first_video_frame
from ..utils.files import parse_json, read_text


@dataclass(frozen=True)
class Cue:
    start: float  # seconds, as requested
    prompt: str


def parse_prompt_arg(text: str) -> Cue:
    """'a cat@10' -> Cue(10, 'a cat'); without '@SECONDS' the prompt starts at 0. A tail after the last '@'
    that starts like a number ('@-1', '@1e', '@5s') must be seconds >= 0, else UsageError."""
    prompt, at, tail = text.rpartition("@")
    if not at or not re.match(r"\s*[-+.0-9]", tail):
        return Cue(0.0, text)
    if not re.fullmatch(r"\s*[0-9]*\.?[0-9]+\s*", tail):
        raise UsageError(f"prompt {text!r}: the time after '@' must be seconds >= 0, got {tail.strip()!r}")
    return Cue(float(tail), prompt)


def cue_from_json(item) -> Cue:
    """{"start": seconds >= 0 (a number), "prompt": non-empty text} -> Cue; ValueError otherwise (no coercion:
    42, null, true or a list are not prompts, and true is not a time)."""
    if not isinstance(item, dict) or set(item) - {"start", "prompt"} or "prompt" not in item or "start" not in item:
        raise ValueError
    start, prompt = item["start"], item["prompt"]
    if not isinstance(start, (int, float)) or isinstance(start, bool) or not 0 <= start < math.inf:
        raise ValueError
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError
    return Cue(float(start), prompt)


def read_timeline(path: str | Path) -> list[Cue]:
    """JSONL lines {"start": seconds, "prompt": text}."""
    lines = [line for line in read_text(path, "timeline").splitlines() if line.strip()]
    cues = []
    for n, line in enumerate(lines, 1):
        item = parse_json(line, f"timeline {path} line {n}")
        try:
            cues.append(cue_from_json(item))
        except ValueError:
            raise UsageError(f"timeline {path} line {n}: expected {{\"start\": seconds >= 0, \"prompt\": text}}") from None
    return cues


def chunk_start_seconds(chunk: int, chunk_frames: int, fps: int, stride: int = 4) -> float:
    """Time of a chunk's first output frame."""
    return first_video_frame(chunk * chunk_frames, stride) / fps


def check_timeline(cues: list[Cue], duration: float) -> None:
    if not cues:
        raise UsageError("no prompt given")
    for cue in cues:
        if not cue.prompt.strip():
            raise UsageError(f"the prompt starting at {cue.start:g} s is empty")
    if cues[0].start != 0:
        raise UsageError(f"the first prompt must start at 0 s, not {cues[0].start:g} s")
    for a, b in zip(cues, cues[1:]):
        if b.start <= a.start:
            raise UsageError(f"prompt starts must increase: {b.start:g} s comes after {a.start:g} s")
    if cues[-1].start >= duration:
        raise UsageError(f"a prompt starts at {cues[-1].start:g} s, past the end of the {duration:.2f} s video")


def schedule(cues: list[Cue], num_chunks: int, chunk_frames: int, fps: int, stride: int = 4) -> list[dict]:
    """The timeline actually applied: each cue's first chunk, video frame and time."""
    applied = []
    for cue in cues:
        chunk = next((c for c in range(num_chunks) if chunk_start_seconds(c, chunk_frames, fps, stride) >= cue.start - 1e-9), None)
        if chunk is None:
            raise UsageError(f"the prompt at {cue.start:g} s starts after the last chunk")
        if applied and chunk == applied[-1]["chunk"]:
            raise UsageError(f"prompts at {applied[-1]['requested_start']:g} s and {cue.start:g} s fall in the same chunk")
        frame = first_video_frame(chunk * chunk_frames, stride)
        applied.append(dict(prompt=cue.prompt, requested_start=cue.start, chunk=chunk, start_frame=frame, start_seconds=frame / fps))
    return applied


MAX_SECONDS = 1e7  # past this a count of frames stops being a number anyone means


def latent_frames_for(seconds: float, fps: int, chunk: int, stride: int = 4) -> int:
    """Latent frames (a whole number of chunks) whose stride(N-1)+1 video frames cover `seconds`."""
    if not isinstance(seconds, (int, float)) or not seconds > 0 or not math.isfinite(seconds):
        raise UsageError(f"--seconds must be a positive number, got {seconds}")
    if seconds > MAX_SECONDS:
        raise UsageError(f"--seconds must be at most {MAX_SECONDS:g} (116 days), got {seconds:g}")
    n = math.ceil((seconds * fps + stride - 1) / stride)
    return chunk * math.ceil(n / chunk)
