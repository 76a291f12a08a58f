"""The mp4 a run writes, chunk by chunk: a resumed run's first part or a continued clip at its start, the prompt
switches of its timeline as it goes, the timeline side file at its end, and on Ctrl-C the state beside it.
`generate` (one request) and `finish` (a resumed one) hand it a loaded model and an open session."""

from __future__ import annotations

import errno
import json
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..engine.pipeline import peak_memory
from ..errors import RunError
from ..utils import signals
from ..utils.files import file_sha256
from ..utils.video import Mp4Writer, write_timeline


@dataclass
class Summary:
    model: str
    frames: int
    latent_frames: int
    duration_s: float
    seconds: float
    fps: float
    peak_memory_bytes: int
    cache_bytes: int
    timeline: list = field(default_factory=list)
    compile: dict | None = None  # the session's compile counters (Session.stats()["compile"])
    given: int = 0  # frames of the video that came from --init-video / --init-image (not made, not in the FPS)
    parallel: dict | None = None  # ranks and head imbalance under --parallel heads (Session.stats()["parallel"])
    leads: bool = True  # False on a rank that only computes for another (it reports nothing)

    def line(self) -> str:
        made = f"{self.frames - self.given} made + {self.given} given, " if self.given else ""
        return (
            f"frames {self.frames} ({made}{self.latent_frames} latent), duration {self.duration_s:.2f} s, "
            f"took {self.seconds:.2f} s, {self.fps:.1f} FPS, peak memory {self.peak_memory_bytes / 2**20:.0f} MiB, "
            f"cache {self.cache_bytes / 2**20:.2f} MiB"
        ) + ("" if self.compile is None else f", compiled {self.compile['compiled_chunks']} of "
             f"{self.compile['compiled_chunks'] + self.compile['eager_chunks']} chunks ({self.compile['recompiles']} recompiles)") + (
            "" if self.parallel is None else f" per rank, {self.parallel['ranks']} ranks (head imbalance {self.parallel['imbalance']:.1%})")


def record(pipe, session, request, timeline: list[dict], latent_frames: int, progress: bool,
           init: np.ndarray | None = None, first_part: Path | None = None, clip_frames: int = 0) -> Summary:
    """Step the session to `latent_frames` generated frames, switching prompts at the timeline's chunks and
    writing frames as they come. The first SIGINT/SIGTERM stops after the chunk in flight: the mp4 is closed
    with every frame so far and the state saved beside it (`signals.Interrupted` then says how to resume).
    Under --parallel heads every rank steps the session; rank 0 alone decodes, writes and reports. `request`:
    the run's `runs.generate.Request` (where to write, how, and what a saved state records of it)."""
    spec = pipe.spec
    agree = pipe.parallel.any if pipe.parallel is not None else bool  # every rank stops after the same chunk
    given_frames = session.frame - session.chunk * spec.chunk_frames  # latent frames of the clip or image
    writes, leads = session.decoder.writes_video, not session.follows
    total = spec.video_frames(given_frames + latent_frames) if writes else latent_frames
    bar = tqdm(total=total, unit="frame", disable=not (progress and leads), desc=request.policy, dynamic_ncols=True)
    trace = open(request.trace, "w") if request.trace and leads else None
    start, writer, made = time.perf_counter(), None, 0
    try:
        with signals.deferred() as stop:
            writer = Mp4Writer(request.out, session.width, session.height, spec.fps, request.crf) if writes else None
            with writer or nullcontext():
                clip_frames = begin(pipe, session, writer, bar, init, first_part, clip_frames)
                made = make_chunks(session, timeline, latent_frames // spec.chunk_frames, writer, bar, trace, lambda: agree(bool(stop)))
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise RunError(f"the disk is full ({e.strerror}) after {writer.frames if writer else 0} frames of {request.out}: "
                           "the partial video was removed and no state was saved") from None
        raise
    finally:
        bar.close()
        if trace:
            trace.close()
    seconds = time.perf_counter() - start
    if agree(bool(stop)):
        interrupted(session, request, writer, dict(timeline=timeline, latent_frames=latent_frames, clip_frames=clip_frames), stop.signum)
    # as applied (the session's history, frames of a continued clip counted in), beside the times asked for
    applied = [dict(prompt=a["prompt"], requested_start=cue["requested_start"], chunk=a["chunk"], start_frame=a["start_frame"],
                    start_seconds=a["start_seconds"]) for a, cue in zip(session.timeline(), timeline)]
    if request.out is not None and leads:
        write_timeline(request.out, applied)
        state_path(request.out).unlink(missing_ok=True)  # an earlier interrupted run's: its first part is replaced
    stats = session.stats()
    return Summary(
        model=spec.name, frames=writer.frames if writer is not None else session.frame, latent_frames=session.frame,
        duration_s=(writer.frames if writer is not None else spec.video_frames(session.frame)) / spec.fps,
        seconds=seconds, fps=made / seconds, peak_memory_bytes=peak_memory(pipe.device), cache_bytes=stats["cache_bytes"],
        timeline=applied, compile=stats["compile"], given=clip_frames if writer is not None else 0,
        parallel=stats["parallel"], leads=leads,
    )


def state_path(video: str) -> Path:
    """Where an interrupted run's state goes: beside its mp4 (out.mp4 -> out.state.safetensors)."""
    return Path(video).with_suffix(".state.safetensors")


def begin(pipe, session, writer, bar, init, first_part, clip_frames: int) -> int:
    """The video's start: a resumed run's first part copied, or a clip (or image) committed and written; the
    frames of the video that were given (not made)."""
    if first_part is not None:
        bar.update(writer.copy(first_part) if writer is not None else 0)
    elif init is not None:
        clip = session.start_from(pipe.encode_frames(init))
        if writer is not None:
            writer.write(clip[0].numpy())
            clip_frames = writer.frames
            bar.update(clip_frames)
    return clip_frames


def make_chunks(session, timeline: list[dict], num_chunks: int, writer, bar, trace, stopping) -> int:
    """Chunks until `num_chunks` or until `stopping()` says a signal came (checked between chunks); the frames
    made (video frames when writing, latent frames otherwise)."""
    cues = {cue["chunk"]: cue["prompt"] for cue in timeline[1:]}
    made = 0
    while session.chunk < num_chunks and not stopping():
        index = session.chunk
        if index in cues:
            session.set_prompt(cues[index])
        chunk = session.step()
        if writer is not None:
            writer.write(chunk.frames[0].numpy())
        count = chunk.frames.shape[1] if writer is not None else chunk.latents.shape[1]
        made += count
        bar.update(count)
        if trace:
            trace.writelines(line + "\n" for line in trace_lines(session, index, session.decisions))
    return made


def interrupted(session, request, writer, run: dict, signum: int | None) -> None:
    """After a signal: the state saved beside the mp4 (a following rank gives its heads to it), and the one
    line that says how to resume, raised as `signals.Interrupted`."""
    signum = signum or signal.SIGINT  # (a rank told to stop by another saw no signal itself)
    if request.out is None:
        raise signals.Interrupted(signum, f"interrupted after {session.chunk} chunks (nothing was being written)")
    state = str(state_path(request.out))
    if session.follows:
        session.save(state)
        raise signals.Interrupted(signum, "interrupted (the leading rank saved the state)")
    run = dict(run, request=request.to_json(), video=str(Path(request.out).resolve()), frames=writer.frames,
               video_sha256=file_sha256(request.out))
    try:
        session.save(state, run=run)
    except Exception as e:  # a full disk, a file-size limit: the mp4 stays, the state is not written
        reason = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
        raise signals.Interrupted(signum, f"interrupted: {request.out} holds the {writer.frames} frames made "
                                  f"so far; the state to resume from could not be written ({reason})") from None
    raise signals.Interrupted(signum, f"interrupted: {request.out} holds the {writer.frames} frames made so far; "
                              f"resume with: headforcing generate --resume {state} --out FULL.mp4")


def trace_lines(session, index: int, decisions: list[dict]) -> list[str]:
    """One JSON line per layer with episodic memory: this chunk's decisions and the slots' state."""
    lines = []
    for layer, lc in enumerate(session.cache.layers):
        stores = [s for s in lc.stores if s.memory is not None]
        if not stores:
            continue
        mine = [d for d in decisions if d["layer"] == layer]
        newest = session.frame - 1
        slots = {s.name: [newest - f for f in s.held_frames()[s.episodic_first :]] for s in stores}
        lines.append(json.dumps(dict(
            chunk=index, layer=layer,
            admitted=sum(d["action"] == "admit" for d in mine),
            merged=sum(d["action"] == "merge" for d in mine),
            replaced=sum(d["action"] == "replace" for d in mine),
            novelty=[d["novelty"] for d in mine], slot_ages=slots,
        )))
    return lines
