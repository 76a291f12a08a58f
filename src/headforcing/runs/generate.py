"""`headforcing generate`, load then run (gpt-fast's `_load_model()` then `generate(model, ...)`): a request checked
on its own (`checks.plan`), the model loaded once, one session stepped chunk by chunk over the prompt timeline
into an mp4 (`recording.record`), in constant memory. An interrupted run is checked (`resumed`) and finished
(`finish`) the same way."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..cache.policy import DEFAULT_RULE
from ..engine.pipeline import load
from ..engine.session import SessionOptions
from ..engine.state import read_state
from ..engine.timeline import Cue
from ..errors import UsageError
from ..utils.files import file_sha256
from ..utils.video import check_writable, count_frames
from .checks import Plan, check_crf, plan
from .recording import Summary, record


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

    def to_json(self) -> dict:
        data = asdict(self)
        data["prompt"] = self.prompt if isinstance(self.prompt, str) else [asdict(c) for c in self.prompt]
        return data

    @classmethod
    def from_json(cls, data: dict) -> "Request":
        data = dict(data)
        if not isinstance(data.get("prompt"), str):
            data["prompt"] = [Cue(**c) for c in data["prompt"]]
        if data.get("size") is not None:
            data["size"] = tuple(data["size"])
        return cls(**data)


def run(request: Request, progress: bool = True) -> Summary:
    """The command: the request checked before anything loads, the model loaded once, the video made."""
    work = plan(request)
    pipe = load(request.model, **request.load_args())
    return generate(pipe, request, work, progress)


def run_resumed(state: str, out: str | None, given: dict, progress: bool = True) -> Summary:
    """`generate --resume`: the interrupted run checked before anything loads, its model loaded, the video finished."""
    job = resumed(state, out, given)
    pipe = load(job.request.model, **job.request.load_args())
    return finish(pipe, job, progress)


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
    return record(pipe, session, request, work.timeline, work.latent_frames, progress, init=work.init)


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
    meta, _ = read_state(state)
    run = meta.get("run")
    if not isinstance(run, dict):
        raise UsageError(f"{state} was not saved by `headforcing generate`; continue it from Python with Pipeline.resume")
    try:
        saved = Request.from_json(run["request"])
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
    if given.get("crf") is not None:
        check_crf(given["crf"])
    overrides = {k: given[k] for k in ("device", "text_encoder_device", "crf", "compile") if given.get(k) is not None}
    # (the rank count is the resuming launch's: a state holds every head, whichever ranks saved it)
    return Resumed(replace(saved, out=out, trace=None, parallel=given.get("parallel"), **overrides), state, run, first)


def finish(pipe, job: Resumed, progress: bool = True) -> Summary:
    """Finish a resumed run on a loaded model: the first part copied, then the rest made."""
    if job.request.compile and pipe.compiled is None:
        pipe.compile(job.request.compile)
    session = pipe.resume(job.state)
    return record(pipe, session, job.request, job.run["timeline"], job.run["latent_frames"], progress, first_part=job.first,
                  clip_frames=job.run["clip_frames"])
