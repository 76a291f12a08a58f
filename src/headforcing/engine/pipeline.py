"""A loaded model: spec, DiT (with our attention processors and prompt cache), text encoder, VAE, device.

Loading is the expensive part (the real DiT, VAE and umT5-XXL are ~15 GB), so it happens once per process;
sessions (`session.py`) are cheap to open and to throw away, and many of them share one `Pipeline`.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import resource
from collections import OrderedDict
from dataclasses import replace

import numpy as np
import torch

from ..utils import threads
from ..errors import UsageError
from ..models.loading import dit_from_original, find_wan_folder, read_causal_checkpoint
from ..models.specs import WAN_1_3B, ModelSpec, RandomTextEncoder, build_transformer, build_vae, get_spec, to_device
from ..models.text import WanTextEncoder
from ..models.toy import ToyTextEncoder, load_toy
from .attention import cache_route
from .decode import IdentityDecoder, PixelDecoder, StreamingVaeDecoder
from .prompt_cache import install_prompt_cache

PROMPTS_KEPT = 64  # encoded prompts a loaded model keeps (a live session may switch prompts without end)


def pick_device(name: str | None) -> torch.device:
    """The run's device; UsageError for a malformed name or one this machine does not have."""
    try:
        device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; known: cpu, cuda, cuda:N") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise UsageError(f"device {name!r} is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"device {name!r} is not supported; use cpu or cuda")
    return device


def pick_dtype(name: str | None, device: torch.device) -> torch.dtype:
    if name is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if name not in table:
        raise UsageError(f"unknown dtype {name!r}; known: float32, bfloat16")
    return table[name]


def peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class Pipeline:
    """One loaded model. `session(...)` opens a session on it; `resume(path)` continues a saved one."""

    def __init__(self, spec: ModelSpec, transformer, text_encoder, vae, device: torch.device, dtype: torch.dtype):
        self.spec, self.transformer, self.text_encoder, self.vae = spec, transformer, text_encoder, vae
        self.device, self.dtype = device, dtype
        install_prompt_cache(transformer, size=8)
        cache_route(transformer)
        self.prompts: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._fingerprint = None
        self.compiled = None  # CompiledDiT once `compile()` is called: sessions opened after use it
        self.parallel = None  # HeadParallel once `parallelize()` is called: every rank runs each session together

    def parallelize(self) -> None:
        """Run every session's chunks together with the other ranks of this torchrun launch: each rank a share
        of the tokens and of the heads, and the caches of its heads only (engine/parallel.py)."""
        from .parallel import HeadParallel

        self.parallel = HeadParallel()
        self.parallel.install(self.transformer)

    def compile(self, mode: str = "default", backend: str = "inductor") -> None:
        """Compile the DiT whole for steady-state chunks (torch.compile, fullgraph): sessions opened from now on
        run every chunk that starts with a full cache through it. mode: default, reduce-overhead (CUDA graphs)
        or max-autotune."""
        from .compiled import CompiledDiT

        self.compiled = CompiledDiT(self.transformer, mode, backend)

    @property
    def decodes(self) -> bool:
        """Whether sessions can make frames (a VAE was loaded, or the model works on pixels)."""
        return self.spec.pixels or self.vae is not None

    def encode(self, prompt: str) -> torch.Tensor:
        """The prompt's context [1, L, D] on the run's device and dtype, the same tensor each time while it is
        kept (the DiT's prompt cache keys on it)."""
        if prompt in self.prompts:
            self.prompts.move_to_end(prompt)
            return self.prompts[prompt]
        context = self.text_encoder(prompt).to(self.device, self.dtype)
        self.prompts[prompt] = context
        while len(self.prompts) > PROMPTS_KEPT:
            self.prompts.popitem(last=False)
        return context

    def offload_text_encoder(self) -> None:
        """Move umT5 off the GPU once the prompts known in advance are encoded (later ones run on the CPU)."""
        if isinstance(self.text_encoder, WanTextEncoder):
            self.text_encoder.offload()

    def decoder(self, decode: bool = True):
        """A fresh streaming decoder for one session (each has its own causal state)."""
        if not decode:
            return IdentityDecoder()
        if not self.decodes:
            raise UsageError("this model was loaded without a decoder (load(..., decode=False)); it makes latents only")
        return PixelDecoder() if self.spec.pixels else StreamingVaeDecoder(self.vae)

    def fingerprint(self) -> str:
        """A short hash of the DiT's weights (names, shapes and a strided sample of every tensor's values): a
        saved session continues only on the weights it was made with."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            for name, t in sorted(self.transformer.state_dict().items()):
                flat = t.detach().reshape(-1)
                sample = flat[:: max(1, flat.numel() // 4096)].float().cpu().numpy()
                h.update(f"{name}{tuple(t.shape)}".encode())
                h.update(np.ascontiguousarray(sample).tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def encode_frames(self, frames: np.ndarray) -> torch.Tensor:
        """Video frames [N, H, W, 3] uint8 -> clean latents [1, L, C, h, w] float32, as the sampler makes them.
        Wan: the causal VAE (its first frame alone, then 4 frames a latent), normalised by the latents' mean
        and std; pixel models: the frames in [-1, 1]."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).float().div(127.5).sub(1)  # [N, H, W, 3]
        x = x.permute(3, 0, 1, 2)[None]  # [1, 3, N, H, W]
        if self.spec.pixels:
            return x.permute(0, 2, 1, 3, 4).contiguous()  # [1, N, 3, H, W]
        if self.vae is None:
            raise UsageError("encoding frames needs the VAE; load the model with decode=True")
        cfg = self.vae.config
        with torch.no_grad():
            mu = self.vae.encode(x.to(self.device, self.vae.dtype)).latent_dist.mode().float()  # [1, C, L, h, w]
        mean = torch.tensor(cfg.latents_mean, device=mu.device).view(1, -1, 1, 1, 1)
        std = torch.tensor(cfg.latents_std, device=mu.device).view(1, -1, 1, 1, 1)
        return ((mu - mean) / std).permute(0, 2, 1, 3, 4).cpu()  # [1, L, C, h, w]

    def session(self, prompt: str, **options):
        """A new session generating under `prompt`; options: see `Session`."""
        from .session import Session

        return Session(self, prompt, **options)

    def resume(self, path: str):
        """The session saved at `path`, ready to make its next chunk."""
        from .session import Session

        return Session.load(self, path)


def model_spec(model: str = "toy", wan_dir: str | None = None, checkpoint: str | None = None):
    """(spec, Wan folder or None, checkpoint path or None) for a model name or local weights (their env vars
    included), without loading any weights: what a request can be checked against."""
    wan_dir = wan_dir or os.environ.get("HEADFORCING_WAN_DIR")
    checkpoint = checkpoint or os.environ.get("HEADFORCING_CHECKPOINT")
    if bool(wan_dir) != bool(checkpoint):
        given = "--wan-dir" if wan_dir else "--checkpoint"
        raise UsageError(f"real weights need both --wan-dir and --checkpoint (or their env vars); only {given} given")
    folder = find_wan_folder(wan_dir) if wan_dir else None
    if folder is None:
        return get_spec(model), None, None
    return replace(WAN_1_3B, name="local", transformer=folder.transformer_config(), text_len=folder.text_len()), folder, checkpoint


def load(model: str = "toy", *, wan_dir: str | None = None, checkpoint: str | None = None, lora: str | None = None,
         lora_alpha: float | None = None, ema: bool = True, device: str | None = None, dtype: str | None = None,
         toy_weights: str | None = None, text_encoder_device: str | None = None, decode: bool = True,
         parallel: str | None = None) -> Pipeline:
    """Load a model once. `model`: "toy" (the shipped toy-world model), "tiny" (random, for tests) or
    "wan2.1-1.3b" (the real shape; random weights unless `wan_dir` and `checkpoint` name local files, or
    $HEADFORCING_WAN_DIR / $HEADFORCING_CHECKPOINT do). decode=False skips the VAE (latents only).
    parallel="heads": one stream over the ranks of a torchrun launch (each rank its GPU, LOCAL_RANK's)."""
    spec, folder, checkpoint = model_spec(model, wan_dir, checkpoint)
    if parallel not in (None, "heads"):
        raise UsageError(f"unknown parallelism {parallel!r}; known: heads")
    if parallel:
        device = join_ranks(device)
    torch_device = pick_device(device)
    threads.fit(spec.name, torch_device)
    torch_dtype = pick_dtype(dtype, torch_device)
    vae = None
    if folder is None and spec.name == "toy":
        transformer, words = load_toy(toy_weights)
        text_encoder = ToyTextEncoder(words)
    elif folder is None:
        transformer = build_transformer(spec)
        text_encoder = RandomTextEncoder(spec.transformer["text_dim"], spec.text_len)
        vae = build_vae(spec) if decode else None
    else:
        state = read_causal_checkpoint(checkpoint, lora, lora_alpha, ema)
        transformer = dit_from_original(state, spec.transformer, torch_dtype)
        del state
        text_device = pick_device(text_encoder_device) if text_encoder_device else torch_device
        text_encoder = WanTextEncoder(*folder.load_text_encoder(torch_dtype), spec.text_len, text_device)
        vae = folder.load_vae(torch_dtype) if decode else None
    transformer = to_device(transformer, torch_device, torch_dtype)
    if vae is not None:
        vae = vae.to(torch_device)
    pipe = Pipeline(spec, transformer, text_encoder, vae, torch_device, torch_dtype)
    if parallel:
        pipe.parallelize()
    return pipe


def leave_ranks() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def join_ranks(device: str | None) -> str | None:
    """Join this torchrun launch's process group (NCCL on GPUs, gloo on CPUs): the device this rank runs on."""
    import torch.distributed as dist

    from ..utils.ranks import world

    rank, size, local = world()
    if size < 2:
        raise UsageError("--parallel heads runs one stream over several ranks: start it with torchrun --nproc-per-node N (N >= 2)")
    cuda = torch.cuda.is_available() and device in (None, "cuda")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
        atexit.register(leave_ranks)  # a group left alive at exit can abort the process (its threads still running)
    if cuda:
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return device
