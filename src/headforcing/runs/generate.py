"""`headforcing generate`: a request checked on its own, a model loaded, one session stepped chunk by chunk
over a prompt timeline, frames streamed into an mp4, in constant memory."""

from __future__ import annotations

import errno
import hashlib
import json
import signal
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..cache.policy import DEFAULT_RULE
from ..engine.pipeline import model_spec, peak_memory, pick_device, pick_dtype
from ..tools.estimate import check_fits
from ..engine.session import SessionOptions, check_options
from ..engine.timeline import Cue, check_timeline, latent_frames_for, schedule
from ..utils.files import check_output
from ..utils.video import Mp4Writer, check_writable, read_clip, read_image, write_timeline
from ..utils import signals
from ..errors import RunError, UsageError


@dataclass
class Request:
    prompt: str | list[Cue]  # one prompt, or a timeline of cues starting at 0 s
    seconds: float  # of generated video (after the clip, when one is continued)
    policy: str = "headforcing"
    model: str = "toy"  # the shipped toy-world model; "tiny" (random), "wan2.1-1.3b" (random unless weights)
    out: str | None = None  # None: latent-only run, nothing written
    seed: int = 0
    size: tuple[int, int] | None = None  # (width, height); the model's default (or the clip's) if None
    heads: str | None = None  # HeadMap JSON for multi-role policies, or "auto": profile the first window online
    rule: str = DEFAULT_RULE  # classification rule for --heads auto
    device: str | None = None
    dtype: str | None = None
    wan_dir: str | None = None  # a Wan2.1-T2V folder (or $HEADFORCING_WAN_DIR): VAE, umT5, tokenizer
    checkpoint: str | None = None  # the causal DiT (or $HEADFORCING_CHECKPOINT)
    lora: str | None = None  # a LoRA merged into the DiT (LongLive)
    lora_alpha: float | None = None  # None: alpha = rank
    ema: bool = True  # generator_ema if the checkpoint has it
    text_encoder_device: str | None = None  # default: the run's device; moved off the GPU after encoding
    trace: str | None = None  # JSONL of episodic-memory decisions, one line per chunk and layer
    latent_frames: int | None = None  # overrides `seconds` (whole chunks)
    decode: bool = False  # decode with the VAE even when nothing is written (benchmarks)
    toy_weights: str | None = None  # a toy-world checkpoint (toyworld train) instead of the shipped one
    solver: str | None = None  # "euler" or "renoise" instead of the model's own solver (comparisons)
    context_noise: int | None = None  # the commit pass's timestep instead of the model's own (0..999)
    init_video: str | None = None  # a clip to continue
    init_image: str | None = None  # an image to start from
    crf: int = 18  # H.264 quality (0: lossless)
    compile: str | None = None  # torch.compile mode for steady-state chunks (default, reduce-overhead, max-autotune)
    parallel: str | None = None  # "heads": one stream over the ranks of a torchrun launch (engine/parallel.py)

    def load_args(self) -> dict:
        return dict(wan_dir=self.wan_dir, checkpoint=self.checkpoint, lora=self.lora, lora_alpha=self.lora_alpha,
                    ema=self.ema, device=self.device, dtype=self.dtype, toy_weights=self.toy_weights,
                    text_encoder_device=self.text_encoder_device, decode=self.out is not None or self.decode,
                    parallel=self.parallel)

    def session_options(self, size=None) -> SessionOptions:
        return SessionOptions(policy=self.policy, heads=self.heads, rule=self.rule, seed=self.seed, size=size or self.size,
                              solver=self.solver, context_noise=self.context_noise, decode=self.out is not None or self.decode)


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


@dataclass
class Plan:
    """A request checked against its model's spec, before any weights are loaded."""

    spec: object
    options: SessionOptions
    latent_frames: int  # to generate
    timeline: list[dict]  # cues as applied to the generated chunks
    init: np.ndarray | None  # the frames to continue [N, H, W, 3] uint8 (the usable tail of a clip, or an image)


def fit_clip(frames: np.ndarray, fps: float, spec, size, path: str) -> np.ndarray:
    """The tail of a clip that encodes to whole chunks of latent frames (Wan: 4L-3 frames, L a multiple of the
    chunk; pixels: L frames), after checking its frame rate and size; UsageError when it does not fit."""
    if abs(fps - spec.fps) > 0.01:
        raise UsageError(f"clip {path} is {fps:g} fps; the model makes {spec.fps} fps video (resample it first)")
    height, width = frames.shape[1:3]
    if size is not None and tuple(size) != (width, height):
        raise UsageError(f"clip {path} is {width}x{height}; --size asks for {size[0]}x{size[1]}")
    C, stride = spec.chunk_frames, spec.vae_stride[0]
    latents = C * (((len(frames) + stride - 1) // stride) // C)  # the most whole chunks it can fill
    if latents == 0:
        raise UsageError(f"clip {path} has {len(frames)} frames; at least {spec.video_frames(C)} are needed (one chunk)")
    return frames[len(frames) - spec.video_frames(latents) :]


def read_init(request: Request, spec) -> np.ndarray | None:
    if request.init_video and request.init_image:
        raise UsageError("give --init-video or --init-image, not both")
    if request.init_video:
        frames, fps = read_clip(request.init_video)
        return fit_clip(frames, fps, spec, request.size, request.init_video)
    if request.init_image:
        frames = read_image(request.init_image)
        height, width = frames.shape[1:3]
        if request.size is not None and tuple(request.size) != (width, height):
            raise UsageError(f"image {request.init_image} is {width}x{height}; --size asks for {request.size[0]}x{request.size[1]}")
        return frames
    return None


def plan(request: Request) -> Plan:
    if not 0 <= request.crf <= 51:
        raise UsageError(f"--crf must be 0..51, got {request.crf}")
    spec, _, _ = model_spec(request.model, request.wan_dir, request.checkpoint)
    init = read_init(request, spec)
    options = request.session_options(size=(init.shape[2], init.shape[1]) if init is not None else None)
    policy, _ = check_options(spec, options)
    C = spec.chunk_frames
    latent_frames = request.latent_frames or latent_frames_for(request.seconds, spec.fps, C, spec.vae_stride[0])
    num_chunks = latent_frames // C
    cues = [Cue(0.0, request.prompt)] if isinstance(request.prompt, str) else list(request.prompt)
    check_timeline(cues, spec.video_frames(latent_frames) / spec.fps)
    given = 0 if init is None else (1 if request.init_image else (len(init) + spec.vae_stride[0] - 1) // spec.vae_stride[0])
    if not policy.bounded and given + latent_frames > spec.trained_frames:
        raise UsageError(
            f"policy {request.policy!r} keeps every frame and is valid only inside the trained window of "
            f"{spec.trained_frames} latent frames; this run needs {given + latent_frames}"
        )
    if request.out is not None:
        check_writable(request.out)
    if request.trace is not None:
        check_output(request.trace, "--trace")
    device = pick_device(request.device)
    check_fits(spec, policy.name, options.size or spec.size, pick_dtype(request.dtype, device), device)
    return Plan(spec, options, latent_frames, schedule(cues, num_chunks, C, spec.fps, spec.vae_stride[0]), init)


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


def request_json(request: Request) -> dict:
    data = asdict(request)
    data["prompt"] = request.prompt if isinstance(request.prompt, str) else [asdict(c) for c in request.prompt]
    return data


def request_from_json(data: dict) -> Request:
    data = dict(data)
    if not isinstance(data.get("prompt"), str):
        data["prompt"] = [Cue(**c) for c in data["prompt"]]
    if data.get("size") is not None:
        data["size"] = tuple(data["size"])
    return Request(**data)


def generate(pipe, request: Request, work: Plan | None = None, progress: bool = True) -> Summary:
    """One video on a loaded model (`load(request.model, **request.load_args())`); `work`: the request's plan
    if it was checked before loading (`plan(request)`)."""
    work = work or plan(request)
    if request.compile and pipe.compiled is None:
        pipe.compile(request.compile)
    for cue in work.timeline:
        pipe.encode(cue["prompt"])
    pipe.offload_text_encoder()  # the prompts are encoded; later switches run it on the CPU
    session = pipe.session(work.timeline[0]["prompt"], **vars(work.options))
    return stream(pipe, session, request, work.timeline, work.latent_frames, progress, init=work.init)


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# flags that a resumed run takes from its state, and may only repeat
FIXED_BY_STATE = ("prompt", "seconds", "policy", "model", "seed", "heads", "rule", "size", "toy_weights", "wan_dir",
                  "checkpoint", "lora", "lora_alpha", "context_noise", "init_video", "init_image", "dtype")


@dataclass
class Resumed:
    """An interrupted run to finish: the request it continues (with this command's overrides), its state file
    and what the state says of the run (its timeline, its first part)."""

    request: Request
    state: str
    run: dict
    first: Path


def resumed(state: str, out: str | None, given: dict) -> Resumed:
    """The run an interrupted `generate` saved in `state`, checked before anything loads: its first part (the
    mp4 it left) then the rest go into `out`. `given`: flags on the command line (None: not given); one that
    contradicts the state is refused."""
    from ..engine.state import read_state
    from ..utils.video import count_frames

    meta, _ = read_state(state)
    run = meta.get("run")
    if not isinstance(run, dict):
        raise UsageError(f"{state} was not saved by `headforcing generate`; continue it from Python with Pipeline.resume")
    try:
        saved = request_from_json(run["request"])
        first, frames = Path(run["video"]), int(run["frames"])
    except (KeyError, TypeError, ValueError):
        raise UsageError(f"{state} is inconsistent: its run description is incomplete") from None
    for name, value in given.items():
        if value is not None and name in FIXED_BY_STATE and value != getattr(saved, name):
            raise UsageError(f"--{name.replace('_', '-')} {value!r} contradicts the resumed run's {getattr(saved, name)!r}; "
                             "leave it out (the state fixes it)")
    if out is None:
        raise UsageError("give --out FILE.mp4 for the whole video")
    if check_writable(out).resolve() == first.resolve():
        raise UsageError(f"--out {out} is the first part itself; write the whole video to another file")
    if not first.is_file() or count_frames(first) != frames:
        raise UsageError(f"the run's first part {first} is missing or no longer holds its {frames} frames")
    if file_sha256(first) != run.get("video_sha256"):
        raise UsageError(f"the run's first part {first} is not the video this state was saved with (another run wrote it)")
    if given.get("trace") is not None:
        raise UsageError("--trace does not go with --resume (the first part's decisions were not kept)")
    if given.get("crf") is not None and not 0 <= given["crf"] <= 51:
        raise UsageError(f"--crf must be 0..51, got {given['crf']}")
    overrides = {k: given[k] for k in ("device", "text_encoder_device", "crf", "compile") if given.get(k) is not None}
    # (the rank count is the resuming launch's: a state holds every head, whichever ranks saved it)
    return Resumed(replace(saved, out=out, trace=None, parallel=given.get("parallel"), **overrides), state, run, first)


def finish(pipe, job: Resumed, progress: bool = True) -> Summary:
    """Finish a resumed run on a loaded model: the first part copied, then the rest made."""
    if job.request.compile and pipe.compiled is None:
        pipe.compile(job.request.compile)
    session = pipe.resume(job.state)
    return stream(pipe, session, job.request, job.run["timeline"], job.run["latent_frames"], progress, first_part=job.first,
                  clip_frames=job.run["clip_frames"])


def stream(pipe, session, request: Request, timeline: list[dict], latent_frames: int, progress: bool,
           init: np.ndarray | None = None, first_part: Path | None = None, clip_frames: int = 0) -> Summary:
    """Step the session to `latent_frames` generated frames, switching prompts at the timeline's chunks and
    writing frames as they come. The first SIGINT/SIGTERM stops after the chunk in flight: the mp4 is closed
    with every frame so far and the state saved beside it (`signals.Interrupted` then says how to resume).
    Under --parallel heads every rank steps the session; rank 0 alone decodes, writes and reports."""
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
    shifted = [dict(c, start_frame=c["start_frame"] + clip_frames, start_seconds=(c["start_frame"] + clip_frames) / spec.fps)
               for c in timeline]
    if request.out is not None and leads:
        write_timeline(request.out, shifted)
        state_path(request.out).unlink(missing_ok=True)  # an earlier interrupted run's: its first part is replaced
    return Summary(
        model=spec.name, frames=writer.frames if writer is not None else session.frame, latent_frames=session.frame,
        duration_s=(writer.frames if writer is not None else spec.video_frames(session.frame)) / spec.fps,
        seconds=seconds, fps=made / seconds, peak_memory_bytes=peak_memory(pipe.device), cache_bytes=session.cache.nbytes(),
        timeline=shifted, compile=session.stats()["compile"], given=clip_frames if writer is not None else 0,
        parallel=session.stats()["parallel"], leads=leads,
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


def interrupted(session, request: Request, writer, run: dict, signum: int | None) -> None:
    """After a signal: the state saved beside the mp4 (a following rank gives its heads to it), and the one
    line that says how to resume, raised as `signals.Interrupted`."""
    signum = signum or signal.SIGINT  # (a rank told to stop by another saw no signal itself)
    if request.out is None:
        raise signals.Interrupted(signum, f"interrupted after {session.chunk} chunks (nothing was being written)")
    state = str(state_path(request.out))
    if session.follows:
        session.save(state)
        raise signals.Interrupted(signum, "interrupted (the leading rank saved the state)")
    run = dict(run, request=request_json(request), video=str(Path(request.out).resolve()), frames=writer.frames,
               video_sha256=file_sha256(request.out))
    try:
        session.save(state, run=run)
    except Exception as e:  # a full disk, a file-size limit: the mp4 stays, the state is not written
        reason = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
        raise signals.Interrupted(signum, f"interrupted: {request.out} holds the {writer.frames} frames made "
                                  f"so far; the state to resume from could not be written ({reason})") from None
    raise signals.Interrupted(signum, f"interrupted: {request.out} holds the {writer.frames} frames made so far; "
                              f"resume with: headforcing generate --resume {state} --out FULL.mp4")
