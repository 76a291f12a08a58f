"""prompt timeline -> chunks -> denoising steps -> commit -> streaming decode -> mp4, in constant memory."""

from __future__ import annotations

import json
import math
import os
import resource
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from tqdm import tqdm

from .cache.headmap import HeadMap
from .cache.headwise import HeadwiseCache
from .cache.policy import Policy, RolePolicy, Sink, preset
from .decode import IdentityDecoder, PixelDecoder, StreamingVaeDecoder
from .errors import UsageError
from .loading import dit_from_original, find_wan_folder, read_causal_checkpoint
from .models import WAN_1_3B, RandomTextEncoder, build_transformer, build_vae, get_spec, to_device
from .profiler import DEFAULT_RULE, HeadProfiler, classify, parse_rule
from .prompt_cache import install_prompt_cache
from .sampler import ChunkSampler, Schedule, SeededNoise
from .text import WanTextEncoder
from .timeline import Cue, check_timeline, schedule
from .toymodel import ToyTextEncoder, load_toy
from .video import Mp4Writer, check_writable


@dataclass
class Request:
    prompt: str | list[Cue]  # one prompt, or a timeline of cues starting at 0 s
    seconds: float
    policy: str = "headforcing"
    model: str = "toy"  # the shipped toy-world model; "tiny" (random), "wan2.1-1.3b" (random unless weights)
    out: str | None = None  # None: latent-only run, nothing written
    seed: int = 0
    size: tuple[int, int] | None = None  # (width, height); the model's default if None
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

    def line(self) -> str:
        return (
            f"frames {self.frames} ({self.latent_frames} latent), duration {self.duration_s:.2f} s, "
            f"took {self.seconds:.2f} s, {self.fps:.1f} FPS, peak memory {self.peak_memory_bytes / 2**20:.0f} MiB, "
            f"cache {self.cache_bytes / 2**20:.2f} MiB"
        )


def latent_frames_for(seconds: float, fps: int, chunk: int, stride: int = 4) -> int:
    """Latent frames (a whole number of chunks) whose stride(N-1)+1 video frames cover `seconds`."""
    if not seconds > 0 or not math.isfinite(seconds):
        raise UsageError(f"--seconds must be a positive number, got {seconds}")
    n = math.ceil((seconds * fps + stride - 1) / stride)
    return chunk * math.ceil(n / chunk)


def pick_device(name: str | None) -> torch.device:
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def pick_dtype(name: str | None, device: torch.device) -> torch.dtype:
    if name is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if name not in table:
        raise UsageError(f"unknown dtype {name!r}; known: float32, bfloat16")
    return table[name]


def profiling_policy() -> Policy:
    """`full` with compact positions: the same computation inside the window, and raw keys kept, so the
    head-wise cache can take its frames over (`--heads auto`)."""
    return Policy("full", {"all": RolePolicy((Sink(None),), "compact")})


def schedule_for(schedule: Schedule, solver: str | None = None, context_noise: int | None = None) -> Schedule:
    """A model's schedule with a request's overrides (None keeps the model's own); UsageError on a commit
    timestep outside the table."""
    if context_noise is not None and not 0 <= context_noise < schedule.num_train_timesteps:
        raise UsageError(f"--context-noise must be a timestep in 0..{schedule.num_train_timesteps - 1}, got {context_noise}")
    overrides = dict(solver=solver, context_noise=context_noise)
    return replace(schedule, **{k: v for k, v in overrides.items() if v is not None})


class Engine:
    """A streaming session: a model, a head-wise cache, a sampler and a decoder; `chunks()` yields chunks as
    they are made, and `set_prompt` between chunks changes the prompt from the next one on."""

    def __init__(self, request: Request):
        self.request = request
        wan_dir = request.wan_dir or os.environ.get("HEADFORCING_WAN_DIR")
        checkpoint = request.checkpoint or os.environ.get("HEADFORCING_CHECKPOINT")
        if bool(wan_dir) != bool(checkpoint):
            given = "--wan-dir" if wan_dir else "--checkpoint"
            raise UsageError(f"real weights need both --wan-dir and --checkpoint (or their env vars); only {given} given")
        folder = find_wan_folder(wan_dir) if wan_dir else None
        spec = self.spec = get_spec(request.model)
        if folder is not None:
            spec = self.spec = replace(WAN_1_3B, name="local", transformer=folder.transformer_config(), text_len=folder.text_len())
        width, height = request.size or spec.size
        if width <= 0 or height <= 0 or width % spec.size_multiple or height % spec.size_multiple:
            raise UsageError(f"size {width}x{height}: width and height must be positive multiples of {spec.size_multiple}")
        self.width, self.height = width, height
        sampling = schedule_for(spec.schedule, request.solver, request.context_noise)
        C = spec.chunk_frames
        stride = spec.vae_stride
        self.latent_frames = request.latent_frames or latent_frames_for(request.seconds, spec.fps, C, stride[0])
        self.num_chunks = self.latent_frames // C
        cues = [Cue(0.0, request.prompt)] if isinstance(request.prompt, str) else list(request.prompt)
        check_timeline(cues, spec.video_frames(self.latent_frames) / spec.fps)
        self.timeline = schedule(cues, self.num_chunks, C, spec.fps, stride[0])
        self.policy = preset(request.policy, C, spec.trained_frames)
        if not self.policy.bounded and self.latent_frames > spec.trained_frames:
            raise UsageError(
                f"policy {request.policy!r} keeps every frame and is valid only inside the trained window of "
                f"{spec.trained_frames} latent frames; {request.seconds} s needs {self.latent_frames}"
            )
        self.auto_heads = request.heads == "auto"
        if self.auto_heads and len(self.policy.roles) == 1:
            raise UsageError(f"--heads auto needs a policy with several roles; {request.policy!r} has one")
        if self.auto_heads:
            unknown = {step.role for step in parse_rule(request.rule)} - set(self.policy.roles)
            if unknown:
                raise UsageError(f"rule names role(s) {sorted(unknown)} that policy {request.policy!r} does not have")
        headmap = HeadMap.load(request.heads) if request.heads and not self.auto_heads else None
        self.headmap = None if self.auto_heads else self.policy.resolve_headmap(spec.num_layers, spec.num_heads, headmap)
        if request.out is not None:
            check_writable(request.out)
        self.device = pick_device(request.device)
        self.dtype = pick_dtype(request.dtype, self.device)
        self.decodes = request.out is not None or request.decode  # frames are made, not just latents

        vae = self._load(folder, checkpoint)
        install_prompt_cache(self.transformer)
        self.texts = {cue["prompt"]: self._encode(cue["prompt"]) for cue in self.timeline}
        if isinstance(self.encode, WanTextEncoder):
            self.encode.offload()  # the prompts are encoded; later set_prompt calls run it on the CPU
        self.sampler = ChunkSampler(self.transformer, None, sampling, chunk_frames=C)
        self.decoder = self._decoder(vae)
        self.latent_chw = (spec.latent_channels, height // stride[1], width // stride[2])
        self.cache = self._new_cache(self.policy, self.headmap) if not self.auto_heads else None
        self.pending_prompt: str | None = None
        self.profile_chunks = min(self.num_chunks, spec.trained_frames // C)

    def _decoder(self, vae):
        if not self.decodes:
            return IdentityDecoder()
        return PixelDecoder() if self.spec.pixels else StreamingVaeDecoder(vae.to(self.device))

    def _load(self, folder, checkpoint):
        """The DiT and the text encoder (shipped toy ones, random ones, or from local files); returns the VAE
        if one is needed."""
        request, spec = self.request, self.spec
        if folder is None and spec.name == "toy":
            transformer, words = load_toy(request.toy_weights)
            self.transformer = to_device(transformer, self.device, self.dtype)
            self.encode = ToyTextEncoder(words)
            return None
        if folder is None:
            self.transformer = to_device(build_transformer(spec), self.device, self.dtype)
            self.encode = RandomTextEncoder(spec.transformer["text_dim"], spec.text_len)
            return build_vae(spec) if self.decodes else None
        state = read_causal_checkpoint(checkpoint, request.lora, request.lora_alpha, request.ema)
        self.transformer = dit_from_original(state, spec.transformer, self.dtype).to(self.device)
        del state
        text_device = torch.device(request.text_encoder_device) if request.text_encoder_device else self.device
        self.encode = WanTextEncoder(*folder.load_text_encoder(self.dtype), spec.text_len, text_device)
        return folder.load_vae(self.dtype) if self.decodes else None

    def _new_cache(self, policy: Policy, headmap: HeadMap | None) -> HeadwiseCache:
        spec = self.spec
        headmap = headmap or policy.resolve_headmap(spec.num_layers, spec.num_heads)
        cache = HeadwiseCache(policy, headmap, spec.head_dim, self.latent_frames, spec.chunk_frames)
        cache.install(self.transformer)
        self.sampler.cache = cache
        return cache

    def _encode(self, prompt: str) -> torch.Tensor:
        """The prompt's context [1, L, D], once, on the run's device and dtype (so the DiT's prompt cache
        sees the same tensor at every forward)."""
        return self.encode(prompt).to(self.device, self.dtype)

    def set_prompt(self, prompt: str) -> None:
        """From the next chunk on, generate under `prompt` (roles re-encode or keep recent frames as their
        policy says)."""
        if not prompt.strip():
            raise UsageError("the new prompt is empty")
        if prompt not in self.texts:
            self.texts[prompt] = self._encode(prompt)
        self.pending_prompt = prompt

    def _switch_to_headwise(self) -> None:
        """End of online profiling: classify heads, move the full cache's frames into the head-wise one."""
        self.headmap = classify(self.profiler.stats(), self.request.rule)
        self.headmap.check(self.spec.num_layers, self.spec.num_heads, self.policy.roles)
        full = self.cache
        self.cache = self._new_cache(self.policy, self.headmap)
        self.sampler.start(1, self.latent_chw)
        self.cache.adopt(full)

    def _apply_switch(self, index: int, recent: torch.Tensor | None) -> None:
        """A new prompt from chunk `index`: re-encode the newest frames for `recache` roles."""
        frames = min(self.policy.recache_frames if not self.profiling else 0, index * self.spec.chunk_frames)
        if frames and recent is not None:
            first = index * self.spec.chunk_frames - frames
            self.sampler.recache(recent[:, -frames:], first, self.texts[self.prompt])

    def chunks(self):
        """Yield (chunk index, latents [1, C, c, h, w], decoded frames [1, n, H, W, 3] or the latents)."""
        noise = SeededNoise(self.request.seed)
        self.decoder.reset()
        self.profiling = self.auto_heads
        if self.profiling:  # every run profiles afresh, in a full cache
            self.cache = self._new_cache(profiling_policy(), None)
            self.profiler = HeadProfiler(self.spec.num_layers, self.spec.num_heads, self.spec.chunk_frames, seed=self.request.seed)
            self.profiler.attach(self.cache)
        self.sampler.start(1, self.latent_chw)
        keep = max(self.policy.recache_frames, 1)
        recent = None  # clean latents of the newest frames, for re-encoding at a prompt switch
        cues = {cue["chunk"]: cue["prompt"] for cue in self.timeline}
        self.prompt = cues[0]
        for index in range(self.num_chunks):
            if self.profiling and index == self.profile_chunks:
                self._switch_to_headwise()
                self.profiling = False
            if index in cues and index > 0:
                self.pending_prompt = cues[index]
            if self.pending_prompt is not None:
                self.prompt, self.pending_prompt = self.pending_prompt, None
                self._apply_switch(index, recent)
            latents = self.sampler.chunk(index, self.texts[self.prompt], noise, 1, self.latent_chw)
            recent = latents if recent is None else torch.cat([recent, latents], dim=1)[:, -keep:]
            yield index, latents, self.decoder.decode(latents)


def peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def trace_lines(engine: Engine, index: int) -> list[str]:
    """One JSON line per layer with episodic memory: this chunk's decisions and the slots' state."""
    lines = []
    for layer, lc in enumerate(engine.cache.layers):
        stores = [s for s in lc.stores if s.memory is not None]
        if not stores:
            continue
        decisions = [d for d in engine.cache.episodic_log if d["chunk"] == index and d["layer"] == layer]
        newest = (index + 1) * engine.spec.chunk_frames - 1
        slots = {s.name: [newest - f for f in s.frames[s.episodic_first :]] for s in stores}
        lines.append(json.dumps(dict(
            chunk=index, layer=layer,
            admitted=sum(d["action"] == "admit" for d in decisions),
            merged=sum(d["action"] == "merge" for d in decisions),
            replaced=sum(d["action"] == "replace" for d in decisions),
            novelty=[d["novelty"] for d in decisions], slot_ages=slots,
        )))
    return lines


def generate(request: Request, progress: bool = True) -> Summary:
    engine = Engine(request)
    total = engine.spec.video_frames(engine.latent_frames) if engine.decoder.writes_video else engine.latent_frames
    bar = tqdm(total=total, unit="frame", disable=not progress, desc=f"{request.policy}", dynamic_ncols=True)
    trace = open(request.trace, "w") if request.trace else None
    start = time.perf_counter()
    written = 0
    try:
        writer = Mp4Writer(request.out, engine.width, engine.height, engine.spec.fps) if engine.decoder.writes_video else None
        with writer or nullcontext():
            for index, latents, frames in engine.chunks():
                if writer is not None:
                    writer.write(frames[0].numpy())
                    written = writer.frames
                bar.update(len(frames[0]) if writer is not None else latents.shape[1])
                if trace:
                    trace.writelines(line + "\n" for line in trace_lines(engine, index))
    finally:
        bar.close()
        if trace:
            trace.close()
    seconds = time.perf_counter() - start
    if request.out is not None and len(engine.timeline) > 1:
        sidecar = Path(request.out).with_suffix(".timeline.json")
        sidecar.write_text(json.dumps(engine.timeline, indent=1))
    frames = written or engine.latent_frames
    return Summary(
        model=engine.spec.name,
        frames=frames,
        latent_frames=engine.latent_frames,
        duration_s=engine.spec.video_frames(engine.latent_frames) / engine.spec.fps,
        seconds=seconds,
        fps=frames / seconds,
        peak_memory_bytes=peak_memory(engine.device),
        cache_bytes=engine.cache.nbytes(),
        timeline=engine.timeline,
    )
