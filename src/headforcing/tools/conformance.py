"""Replay a recording of the public Self-Forcing pipeline (golden format) and compare latents."""

from __future__ import annotations

from pathlib import Path

import torch

from ..cache.headwise import HeadwiseCache
from ..cache.policy import window_policy
from ..errors import UsageError
from ..models.loading import dit_from_original
from ..models.specs import ModelSpec, transformer_config_from_original
from ..engine.sampler import ChunkSampler, RecordedNoise, Schedule
from ..models.checkpoint import pick_generator, read_pt, strip_prefix

REQUIRED = ("config", "checkpoint", "prompt_embeds", "noise", "step_noises", "latents")


def load_recording(path: str | Path) -> dict:
    rec = read_pt(path)
    missing = [k for k in REQUIRED if not isinstance(rec, dict) or k not in rec]
    if missing:
        raise UsageError(f"{path} is not a recording: missing {missing}")
    return rec


def replay(rec: dict, positions: str = "absolute") -> torch.Tensor:
    """The latents [B, F, C, H, W] that our engine produces from the recording's weights and draws."""
    cfg = rec["config"]
    chunk = cfg["num_frame_per_block"]
    spec = ModelSpec(name="recording", transformer=transformer_config_from_original(cfg), text_len=cfg["text_len"])
    transformer = dit_from_original(strip_prefix(pick_generator(rec["checkpoint"])), spec.transformer)
    policy = window_policy("recording", cfg["local_attn_size"], cfg["sink_size"], chunk, positions)
    batch, frames, channels, height, width = rec["noise"].shape
    headmap = policy.resolve_headmap(spec.num_layers, spec.num_heads)
    cache = HeadwiseCache(policy, headmap, spec.head_dim, window_frames=frames, chunk_frames=chunk)
    schedule = Schedule(steps=tuple(cfg["denoising_step_list"]), shift=cfg["timestep_shift"],
                        context_noise=cfg["context_noise"])
    sampler = ChunkSampler(transformer, cache, schedule, chunk)
    noise = RecordedNoise(rec["noise"], rec["step_noises"], len(schedule.steps) - 1)
    sampler.start(batch, (channels, height, width))
    chunks = [sampler.chunk(i, rec["prompt_embeds"], noise, batch, (channels, height, width)) for i in range(frames // chunk)]
    return torch.cat(chunks, dim=1)


def max_abs_error(path: str | Path) -> float:
    rec = load_recording(path)
    return (replay(rec) - rec["latents"]).abs().max().item()
