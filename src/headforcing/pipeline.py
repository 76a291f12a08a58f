"""prompt -> chunks -> denoising steps -> commit -> streaming decode -> mp4, in constant memory."""

from __future__ import annotations

import math
import os
import resource
import time
from dataclasses import dataclass, replace

import torch
from tqdm import tqdm

from .cache.headmap import HeadMap
from .cache.headwise import HeadwiseCache
from .cache.policy import preset
from .decode import IdentityDecoder, StreamingVaeDecoder
from .errors import UsageError
from .loading import dit_from_original, find_wan_folder, read_causal_checkpoint
from .models import WAN_1_3B, ToyTextEncoder, build_transformer, build_vae, get_spec, to_device
from .text import WanTextEncoder
from .sampler import ChunkSampler, SeededNoise
from .video import Mp4Writer, check_writable


@dataclass
class Request:
    prompt: str
    seconds: float
    policy: str = "headforcing"
    model: str = "tiny"
    out: str | None = None  # None: latent-only run, nothing written
    seed: int = 0
    size: tuple[int, int] | None = None  # (width, height); the model's default if None
    heads: str | None = None  # HeadMap JSON for multi-role policies
    device: str | None = None
    dtype: str | None = None
    wan_dir: str | None = None  # a Wan2.1-T2V folder (or $HEADFORCING_WAN_DIR): VAE, umT5, tokenizer
    checkpoint: str | None = None  # the causal DiT (or $HEADFORCING_CHECKPOINT)
    lora: str | None = None  # a LoRA merged into the DiT (LongLive)
    lora_alpha: float | None = None  # None: alpha = rank
    ema: bool = True  # generator_ema if the checkpoint has it
    text_encoder_device: str | None = None  # default: the run's device; moved off the GPU after encoding


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

    def line(self) -> str:
        return (
            f"frames {self.frames} ({self.latent_frames} latent), duration {self.duration_s:.2f} s, "
            f"took {self.seconds:.2f} s, {self.fps:.1f} FPS, peak memory {self.peak_memory_bytes / 2**20:.0f} MiB, "
            f"cache {self.cache_bytes / 2**20:.2f} MiB"
        )


def latent_frames_for(seconds: float, fps: int, chunk: int) -> int:
    """Latent frames (a whole number of chunks) whose 4N-3 video frames cover `seconds`."""
    if not seconds > 0 or not math.isfinite(seconds):
        raise UsageError(f"--seconds must be a positive number, got {seconds}")
    n = math.ceil((seconds * fps + 3) / 4)
    return chunk * math.ceil(n / chunk)


def video_frames(latent_frames: int) -> int:
    return 4 * latent_frames - 3


def pick_device(name: str | None) -> torch.device:
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def pick_dtype(name: str | None, device: torch.device) -> torch.dtype:
    if name is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if name not in table:
        raise UsageError(f"unknown dtype {name!r}; known: float32, bfloat16")
    return table[name]


class Engine:
    """A model, a head-wise cache, a sampler and a decoder; yields chunks as they are made."""

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
        self.latent_frames = latent_frames_for(request.seconds, spec.fps, spec.chunk_frames)
        self.policy = preset(request.policy, spec.chunk_frames, spec.trained_frames)
        if not self.policy.bounded and self.latent_frames > spec.trained_frames:
            raise UsageError(
                f"policy {request.policy!r} keeps every frame and is valid only inside the trained window of "
                f"{spec.trained_frames} latent frames; {request.seconds} s needs {self.latent_frames}"
            )
        headmap = HeadMap.load(request.heads) if request.heads else None
        self.headmap = self.policy.resolve_headmap(spec.num_layers, spec.num_heads, headmap)
        if request.out is not None:
            check_writable(request.out)
        self.device = pick_device(request.device)
        self.dtype = pick_dtype(request.dtype, self.device)

        if folder is None:
            self.transformer = to_device(build_transformer(spec), self.device, self.dtype)
            self.text = ToyTextEncoder(spec.transformer["text_dim"], spec.text_len)(request.prompt)
            vae = build_vae(spec) if request.out is not None else None
        else:
            state = read_causal_checkpoint(checkpoint, request.lora, request.lora_alpha, request.ema)
            self.transformer = dit_from_original(state, spec.transformer, self.dtype).to(self.device)
            del state
            text_device = torch.device(request.text_encoder_device) if request.text_encoder_device else self.device
            encoder = WanTextEncoder(*folder.load_text_encoder(self.dtype), spec.text_len, text_device)
            self.text = encoder(request.prompt)
            encoder.offload()
            vae = folder.load_vae(self.dtype) if request.out is not None else None
        self.cache = HeadwiseCache(self.policy, self.headmap, spec.head_dim, self.latent_frames, spec.chunk_frames)
        self.cache.install(self.transformer)
        self.sampler = ChunkSampler(self.transformer, self.cache, chunk_frames=spec.chunk_frames)
        self.decoder = StreamingVaeDecoder(vae.to(self.device)) if vae is not None else IdentityDecoder()
        stride = spec.vae_stride
        self.latent_chw = (spec.latent_channels, height // stride[1], width // stride[2])

    def chunks(self):
        """Yield (chunk index, latents [1, C, c, h, w], decoded frames or the latents)."""
        noise = SeededNoise(self.request.seed)
        self.decoder.reset()
        self.sampler.start(1, self.latent_chw)
        for index in range(self.latent_frames // self.spec.chunk_frames):
            latents = self.sampler.chunk(index, self.text, noise, 1, self.latent_chw)
            yield index, latents, self.decoder.decode(latents)


def peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def generate(request: Request, progress: bool = True) -> Summary:
    engine = Engine(request)
    total = video_frames(engine.latent_frames) if engine.decoder.writes_video else engine.latent_frames
    bar = tqdm(total=total, unit="frame", disable=not progress, desc=f"{request.policy}", dynamic_ncols=True)
    start = time.perf_counter()
    written = 0
    if engine.decoder.writes_video:
        with Mp4Writer(request.out, engine.width, engine.height, engine.spec.fps) as writer:
            for _, _, frames in engine.chunks():
                writer.write(frames[0].numpy())
                bar.update(len(frames[0]))
            written = writer.frames
    else:
        for _, latents, _ in engine.chunks():
            bar.update(latents.shape[1])
    bar.close()
    seconds = time.perf_counter() - start
    frames = written or engine.latent_frames
    return Summary(
        model=engine.spec.name,
        frames=frames,
        latent_frames=engine.latent_frames,
        duration_s=video_frames(engine.latent_frames) / engine.spec.fps,
        seconds=seconds,
        fps=frames / seconds,
        peak_memory_bytes=peak_memory(engine.device),
        cache_bytes=engine.cache.nbytes(),
    )
