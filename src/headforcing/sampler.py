"""The Self-Forcing sampler: chunks of latent frames, few-step flow matching, a clean-context commit.

Per chunk: x = noise; for each warped timestep t_i: v = DiT(x, t_i); x0 = x - sigma(t_i) v; if not last,
x = (1 - sigma(t_{i+1})) x0 + sigma(t_{i+1}) eps. The chunk is the last x0; one more forward of x0 at
t = 0 writes its keys/values into the cache (5 forwards per chunk with 4 steps). That re-noising solver
suits distilled few-step models (Self Forcing's); a model trained by plain flow matching (the toy one)
samples with Euler steps of the flow instead, x = x + (sigma_{i+1} - sigma_i) v, and the last x0.
Latents are [B, F, C, H, W] (frames second, as in Self-Forcing); the DiT takes [B, C, F, H, W].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .cache.headwise import HeadwiseCache


@dataclass(frozen=True)
class Schedule:
    """FlowMatch table (shift 5, sigma_min 0, extra_one_step) and Self-Forcing's warped timesteps."""

    steps: tuple[int, ...] = (1000, 750, 500, 250)
    shift: float = 5.0
    num_train_timesteps: int = 1000
    solver: str = "renoise"  # Self-Forcing's: x0, then fresh noise at the next level; "euler": the flow ODE
    context_noise: int = 0  # the timestep the commit pass gives a chunk's clean x0 (Self-Forcing's option; no noise is added)

    def tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigmas, timesteps), float32 [num_train_timesteps], as the reference computes them."""
        s = torch.linspace(1.0, 0.0, self.num_train_timesteps + 1)[:-1]
        sigmas = self.shift * s / (1 + (self.shift - 1) * s)
        return sigmas, sigmas * self.num_train_timesteps

    def warped(self) -> list[float]:
        """The timesteps the model is actually given: step k of the 1000-step table."""
        _, timesteps = self.tables()
        extended = torch.cat([timesteps, torch.zeros(1)])
        return [float(extended[self.num_train_timesteps - s]) for s in self.steps]

    def sigma(self, t: float) -> torch.Tensor:
        """sigma of the nearest table timestep (float32 scalar)."""
        sigmas, timesteps = self.tables()
        return sigmas[torch.argmin((timesteps - t).abs())]


class SeededNoise:
    """Noise from one CPU generator: the same seed gives the same video on any device."""

    def __init__(self, seed: int):
        self.gen = torch.Generator().manual_seed(seed)

    def chunk(self, index: int, shape) -> torch.Tensor:
        return torch.randn(shape, generator=self.gen)

    def step(self, index: int, step: int, shape) -> torch.Tensor:
        return torch.randn(shape, generator=self.gen)


class RecordedNoise:
    """Replays the draws of a recording: initial noise [B, F, C, H, W] and one re-noising draw per step."""

    def __init__(self, noise: torch.Tensor, step_noises: list[torch.Tensor], steps_per_chunk: int):
        self.noise, self.step_noises, self.per_chunk = noise, step_noises, steps_per_chunk

    def chunk(self, index: int, shape) -> torch.Tensor:
        frames = shape[1]
        return self.noise[:, index * frames : (index + 1) * frames].reshape(shape)

    def step(self, index: int, step: int, shape) -> torch.Tensor:
        return self.step_noises[index * self.per_chunk + step].reshape(shape)


class ChunkSampler:
    def __init__(self, transformer, cache: HeadwiseCache, schedule: Schedule = Schedule(), chunk_frames: int = 3):
        self.transformer, self.cache, self.schedule = transformer, cache, schedule
        self.chunk_frames = chunk_frames
        self.timesteps = schedule.warped()
        self.sigmas = [schedule.sigma(t) for t in self.timesteps]
        param = next(transformer.parameters())
        self.device, self.dtype = param.device, param.dtype

    def velocity(self, x: torch.Tensor, t: float, text: torch.Tensor) -> torch.Tensor:
        """DiT flow prediction for x [B, F, C, H, W] (float32 in and out)."""
        timestep = torch.full((x.shape[0],), t, device=self.device, dtype=torch.float32)
        out = self.transformer(
            hidden_states=x.permute(0, 2, 1, 3, 4).to(self.device, self.dtype),
            timestep=timestep,
            encoder_hidden_states=text,
            return_dict=False,
        )[0]
        return out.permute(0, 2, 1, 3, 4).float()

    def start(self, batch: int, latent_chw: tuple[int, int, int]) -> None:
        patch = self.transformer.config.patch_size
        grid = (latent_chw[1] // patch[1], latent_chw[2] // patch[2])
        self.cache.allocate(batch, grid, self.dtype, self.device)

    @torch.no_grad()
    def chunk(self, index: int, text: torch.Tensor, noise, batch: int, latent_chw) -> torch.Tensor:
        """Sample chunk `index` and commit it to the cache; returns its x0 [B, C_frames, C, H, W] float32."""
        shape = (batch, self.chunk_frames, *latent_chw)
        self.cache.begin_chunk(index * self.chunk_frames, self.chunk_frames)
        text = text.to(self.device, self.dtype)
        x = noise.chunk(index, shape).to(self.device, torch.float32)
        euler = self.schedule.solver == "euler"
        for i, (t, sigma) in enumerate(zip(self.timesteps, self.sigmas)):
            v = self.velocity(x, t, text)
            x0 = (x.double() - sigma.double() * v.double()).float()
            if i + 1 < len(self.timesteps):
                s_next = self.sigmas[i + 1].to(self.device)
                if euler:  # a step along the flow: the sample keeps its noise, so it commits to what it drew
                    x = (x.double() + (s_next.double() - sigma.double()) * v.double()).float()
                else:
                    eps = noise.step(index, i, shape).to(self.device, torch.float32)
                    x = (1 - s_next) * x0 + s_next * eps
        with self.cache.commit():
            self.velocity(x0, float(self.schedule.context_noise), text)
        return x0

    @torch.no_grad()
    def recache(self, latents: torch.Tensor, first_frame: int, text: torch.Tensor) -> None:
        """Re-encode committed frames (clean latents [B, R, C, H, W] of frames first_frame..) under a new
        prompt, for the roles whose policy says `recache` (one forward at the commit's timestep, block-causal)."""
        with self.cache.recaching(first_frame, latents.shape[1]):
            self.velocity(latents.to(self.device, torch.float32), float(self.schedule.context_noise),
                          text.to(self.device, self.dtype))
