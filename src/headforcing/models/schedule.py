"""A model's sampling schedule: FlowMatch sigmas and the few timesteps a Self-Forcing-family model was
distilled for (or, for a model trained by plain flow matching, the Euler steps it samples with)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
