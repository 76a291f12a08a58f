"""The Self-Forcing sampler: chunks of latent frames, few-step flow matching, a clean-context commit.

Per chunk: x = noise; for each warped timestep t_i: v = DiT(x, t_i); x0 = x - sigma(t_i) v; if not last,
x = (1 - sigma(t_{i+1})) x0 + sigma(t_{i+1}) eps. The chunk is the last x0; one more forward of x0 at
t = 0 writes its keys/values into the cache (5 forwards per chunk with 4 steps). That re-noising solver
suits distilled few-step models (Self Forcing's); a model trained by plain flow matching (the toy one)
samples with Euler steps of the flow instead, x = x + (sigma_{i+1} - sigma_i) v, and the last x0.
Latents are [B, F, C, H, W] (frames second, as in Self-Forcing); the DiT takes [B, C, F, H, W].
With a compiled DiT, chunks that start with a full cache run its forwards through the compiled graphs.
"""

from __future__ import annotations

import torch

from ..cache.headwise import HeadwiseCache
from .attention import cache_route
from .compiled import CompiledDiT, graphs_compiled
from ..models.schedule import Schedule


class SeededNoise:
    """Noise from one CPU generator: the same seed gives the same video on any device."""

    def __init__(self, seed: int):
        self.gen = torch.Generator().manual_seed(seed)

    def chunk(self, index: int, shape) -> torch.Tensor:
        return torch.randn(shape, generator=self.gen)

    def step(self, index: int, step: int, shape) -> torch.Tensor:
        return torch.randn(shape, generator=self.gen)

    def state(self) -> dict[str, torch.Tensor]:
        return {"generator": self.gen.get_state()}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.gen.set_state(tensors["generator"])


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
    """Samples chunks with one loaded DiT into one session's cache (the DiT's self-attentions are routed to
    that cache for the forwards of each call)."""

    def __init__(self, transformer, cache: HeadwiseCache, schedule: Schedule = Schedule(), chunk_frames: int = 3,
                 compiled: CompiledDiT | None = None):
        self.transformer, self.cache, self.schedule, self.compiled = transformer, cache, schedule, compiled
        # eager (cache-filling) and compiled chunks; graphs compiled by this sampler's chunks, and of those the
        # ones compiled after its first compiled chunk (which compiles the denoising and the commit graph)
        self.compile_stats = dict(eager_chunks=0, compiled_chunks=0, graphs=0, recompiles=0)
        self.route = cache_route(transformer)
        self.chunk_frames = chunk_frames
        self.timesteps = schedule.warped()
        self.sigmas = [schedule.sigma(t) for t in self.timesteps]
        # the dtype the DiT computes in: its input projection's (Wan keeps norms and modulation tables in float32)
        param = transformer.patch_embedding.weight if hasattr(transformer, "patch_embedding") else next(transformer.parameters())
        self.device, self.dtype = param.device, param.dtype

    def velocity(self, x: torch.Tensor, t: float, text: torch.Tensor, model=None) -> torch.Tensor:
        """DiT flow prediction for x [B, F, C, H, W] (float32 in and out), attending through this cache."""
        timestep = torch.full((x.shape[0],), t, device=self.device, dtype=torch.float32)
        with self.route.to(self.cache):
            out = (self.transformer if model is None else model)(
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
        if self.compiled is not None and self.compiled.static_buffers:
            for buffer in self.cache.buffers():
                torch._dynamo.mark_static_address(buffer)

    @torch.no_grad()
    def chunk(self, index: int, text: torch.Tensor, noise, batch: int, latent_chw, first_frame: int | None = None,
              truth: torch.Tensor | None = None) -> torch.Tensor:
        """Sample chunk `index` (latent frames first_frame.., index * chunk_frames unless given) and commit it
        to the cache; returns its x0 [B, C_frames, C, H, W] float32. `truth` (same shape): commit these latents
        instead of the sampled ones (teacher forcing: the model draws, the given frames become the context)."""
        shape = (batch, self.chunk_frames, *latent_chw)
        first_frame = index * self.chunk_frames if first_frame is None else first_frame
        self.cache.begin_chunk(first_frame, self.chunk_frames)
        model = self.compiled.module if self.compiled is not None and self.cache.steady else self.transformer
        graphs = graphs_compiled()
        text = text.to(self.device, self.dtype)
        x = noise.chunk(index, shape).to(self.device, torch.float32)
        euler = self.schedule.solver == "euler"
        for i, (t, sigma) in enumerate(zip(self.timesteps, self.sigmas)):
            v = self.velocity(x, t, text, model)
            x0 = (x.double() - sigma.double() * v.double()).float()
            if i + 1 < len(self.timesteps):
                s_next = self.sigmas[i + 1].to(self.device)
                if euler:  # a step along the flow: the sample keeps its noise, so it commits to what it drew
                    x = (x.double() + (s_next.double() - sigma.double()) * v.double()).float()
                else:
                    eps = noise.step(index, i, shape).to(self.device, torch.float32)
                    x = (1 - s_next) * x0 + s_next * eps
        self.commit(x0 if truth is None else truth, text, model=model)
        self._count(model is not self.transformer, graphs_compiled() - graphs)
        return x0

    def _count(self, compiled: bool, new_graphs: int) -> None:
        stats = self.compile_stats
        if not compiled:
            stats["eager_chunks"] += 1
            return
        stats["graphs"] += new_graphs
        stats["recompiles"] += new_graphs if stats["compiled_chunks"] else 0
        stats["compiled_chunks"] += 1

    @torch.no_grad()
    def commit(self, latents: torch.Tensor, text: torch.Tensor, first_frame: int | None = None, model=None) -> None:
        """Write clean latents [B, n, C, H, W] into the cache: one forward at the commit timestep (Self-Forcing's
        context_noise). Inside `chunk` the chunk is already begun; given frames (a clip to continue) start at
        `first_frame`."""
        if first_frame is not None:
            self.cache.begin_chunk(first_frame, latents.shape[1])
        with self.cache.commit():
            self.velocity(latents.to(self.device, torch.float32), float(self.schedule.context_noise), text.to(self.device, self.dtype), model)

    @torch.no_grad()
    def recache(self, latents: torch.Tensor, first_frame: int, text: torch.Tensor, origin: int = 0) -> None:
        """Re-encode committed frames (clean latents [B, R, C, H, W] of frames first_frame..) under a new
        prompt, for the roles whose policy says `recache` (one forward at the commit's timestep, block-causal)."""
        with self.cache.recaching(first_frame, latents.shape[1], origin):
            self.velocity(latents.to(self.device, torch.float32), float(self.schedule.context_noise),
                          text.to(self.device, self.dtype))
