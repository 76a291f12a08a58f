"""Named model shapes, and building the diffusers modules for them.

`wan2.1-1.3b` is the real Self-Forcing-family DiT (Wan2.1-T2V-1.3B); `tiny` is a Wan-shaped model small
enough for CPU tests and demos (the golden recordings' shape). Random weights unless weights are loaded.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel

from ..errors import UsageError
from .schedule import Schedule


def first_video_frame(latent: int, stride: int = 4) -> int:
    """Latent frame j > 0 decodes to video frames s(j-1)+1 .. sj for a VAE of temporal stride s (4j-3 .. 4j
    for Wan's VAE; frame j itself for a pixel-space model, stride 1)."""
    return 0 if latent == 0 else stride * (latent - 1) + 1


@dataclass(frozen=True)
class ModelSpec:
    name: str
    transformer: dict  # WanTransformer3DModel config
    vae: dict = field(default_factory=dict)  # AutoencoderKLWan config
    text_len: int = 512
    size: tuple[int, int] = (832, 480)  # default video (width, height)
    fps: int = 16
    chunk_frames: int = 3
    trained_frames: int = 21  # latent frames of the training window
    vae_stride: tuple[int, int, int] = (4, 8, 8)  # (1, 1, 1): the model works on pixels
    schedule: Schedule = Schedule()  # the sampler's timesteps: Self-Forcing's 4 steps unless the model has its own

    @property
    def num_layers(self) -> int:
        return self.transformer["num_layers"]

    @property
    def num_heads(self) -> int:
        return self.transformer["num_attention_heads"]

    @property
    def head_dim(self) -> int:
        return self.transformer["attention_head_dim"]

    @property
    def latent_channels(self) -> int:
        return self.transformer["in_channels"]

    @property
    def pixels(self) -> bool:
        """The model works on pixels (no VAE): a latent frame is a video frame."""
        return self.vae_stride == (1, 1, 1)

    def video_frames(self, latent_frames: int) -> int:
        """Video frames decoded from `latent_frames` (4N-3 for Wan's VAE, N on pixels): as many as come before
        the first video frame of a next latent frame."""
        return first_video_frame(latent_frames, self.vae_stride[0])

    @property
    def size_multiple(self) -> int:
        return self.vae_stride[1] * self.transformer["patch_size"][1]


def transformer_config_from_original(cfg: dict) -> dict:
    """Original Wan / Self-Forcing argument names -> WanTransformer3DModel config."""
    return dict(
        patch_size=tuple(cfg.get("patch_size", (1, 2, 2))),
        num_attention_heads=cfg["num_heads"],
        attention_head_dim=cfg["dim"] // cfg["num_heads"],
        in_channels=cfg.get("in_dim", 16),
        out_channels=cfg.get("out_dim", 16),
        text_dim=cfg.get("text_dim", 4096),
        freq_dim=cfg.get("freq_dim", 256),
        ffn_dim=cfg["ffn_dim"],
        num_layers=cfg["num_layers"],
        cross_attn_norm=cfg.get("cross_attn_norm", True),
        qk_norm="rms_norm_across_heads" if cfg.get("qk_norm", True) else None,
        eps=cfg.get("eps", 1e-6),
    )


WAN_1_3B = ModelSpec(
    name="wan2.1-1.3b",
    transformer=transformer_config_from_original(
        dict(dim=1536, num_heads=12, num_layers=30, ffn_dim=8960, text_dim=4096, freq_dim=256)
    ),
    vae=dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True]),
    text_len=512,
)

TINY = ModelSpec(
    name="tiny",
    transformer=transformer_config_from_original(
        dict(dim=96, num_heads=4, num_layers=3, ffn_dim=128, text_dim=32, freq_dim=32)
    ),
    vae=dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True]),
    text_len=16,
    size=(64, 64),
)

# The toy-world model (toymodel.py): a Wan DiT on 32x32 RGB pixels in 4x4 patches (64 tokens a frame); a
# "latent frame" is a video frame, 4 a second, so the 21-frame window is 5.25 s like Wan's 21 latent frames.
# Trained here (toytrain.py) by plain flow matching, not distilled: it samples with 4 Euler steps of the flow.
TOY = ModelSpec(
    name="toy",
    transformer=dict(
        patch_size=(1, 4, 4), num_attention_heads=4, attention_head_dim=32, in_channels=3, out_channels=3,
        text_dim=64, freq_dim=64, ffn_dim=512, num_layers=4, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6,
    ),
    text_len=24,
    size=(32, 32),
    fps=4,
    vae_stride=(1, 1, 1),
    schedule=Schedule(steps=(1000, 750, 500, 250), shift=5.0, solver="euler", context_noise=50),
)

SPECS = {s.name: s for s in (TOY, WAN_1_3B, TINY)}


def get_spec(name: str) -> ModelSpec:
    if name not in SPECS:
        raise UsageError(f"unknown model {name!r}; known: {', '.join(SPECS)}")
    return SPECS[name]


def build_transformer(spec: ModelSpec, seed: int = 0) -> WanTransformer3DModel:
    """A diffusers Wan DiT of the spec's shape, random weights drawn from `seed`."""
    torch.manual_seed(seed)
    return WanTransformer3DModel(**spec.transformer).eval().requires_grad_(False)


def to_device(transformer: WanTransformer3DModel, device, dtype) -> WanTransformer3DModel:
    """Move to `device` and cast to `dtype`, keeping the modules Wan runs in float32 (norms, time
    embedding, modulation tables) in float32, as diffusers' from_pretrained(torch_dtype=...) does."""
    transformer.to(device)
    keep = set(transformer._keep_in_fp32_modules)
    for name, param in transformer.named_parameters():
        if param.is_floating_point() and not keep & set(name.split(".")):
            param.data = param.data.to(dtype)
    return transformer


def build_vae(spec: ModelSpec, seed: int = 0) -> AutoencoderKLWan:
    torch.manual_seed(seed)
    return AutoencoderKLWan(**spec.vae).eval().requires_grad_(False)


class RandomTextEncoder:
    """Text embeddings for the tiny model: each word gets a fixed random vector (seeded by its CRC32),
    zero-padded to text_len like Wan's context. Stands in for umT5 where no real weights exist."""

    def __init__(self, text_dim: int, text_len: int):
        self.text_dim, self.text_len = text_dim, text_len

    def __call__(self, prompt: str) -> torch.Tensor:
        out = torch.zeros(1, self.text_len, self.text_dim)  # [1, L, D_text]
        for i, word in enumerate(prompt.lower().split()[: self.text_len]):
            gen = torch.Generator().manual_seed(zlib.crc32(word.encode()))
            out[0, i] = torch.randn(self.text_dim, generator=gen)
        return out
