"""The Euler solver of the flow (for models trained by plain flow matching, the toy one): with the exact
velocity of a one-point data distribution it lands on that point from any noise; the re-noising solver
(Self Forcing's, kept for distilled models and checked by the golden tests) lands there too at its last x0."""

from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch

from headforcing.engine.sampler import ChunkSampler, Schedule, SeededNoise

TARGET = torch.linspace(-1, 1, 2 * 3 * 4 * 4).reshape(1, 2, 3, 4, 4)  # [B, C, F, H, W]: one clean chunk


class ExactFlow(torch.nn.Module):
    """v(x, t) = (x - x0) / sigma(t): the true flow-matching velocity when all data is TARGET."""

    def __init__(self, schedule):
        super().__init__()
        self.schedule, self.w = schedule, torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(patch_size=(1, 2, 2))
        self.blocks = torch.nn.ModuleList()  # no attention: nothing for the sampler's cache route to serve
        self.calls = 0

    def forward(self, hidden_states, timestep, encoder_hidden_states, return_dict):
        self.calls += 1
        sigma = self.schedule.sigma(float(timestep[0]))
        return ((hidden_states - TARGET) / sigma.clamp_min(1e-6),)


class NoCache:
    layers = []

    def allocate(self, *args):
        pass

    def begin_chunk(self, *args):
        pass

    @contextmanager
    def commit(self):
        yield


@pytest.mark.parametrize("solver", ["euler", "renoise"])
def test_exact_velocity_lands_on_the_data(solver):
    schedule = Schedule(steps=(1000, 875, 750, 500, 250, 125), shift=3.0, solver=solver)
    model = ExactFlow(schedule)
    sampler = ChunkSampler(model, NoCache(), schedule, chunk_frames=3)
    sampler.start(1, (2, 4, 4))
    x0 = sampler.chunk(0, torch.zeros(1, 4, 8), SeededNoise(0), 1, (2, 4, 4))
    assert (x0 - TARGET.permute(0, 2, 1, 3, 4)).abs().max() < 1e-5
    assert model.calls == 6 + 1  # one forward a step, and the commit pass


def test_euler_follows_the_flow_between_steps():
    """With a velocity that is not the data's, Euler moves x by (sigma' - sigma) v exactly: a constant v
    takes the noise to noise - (sigma_0 - sigma_last) v - sigma_last v = noise - v."""
    schedule = Schedule(steps=(1000, 500, 250), shift=1.0, solver="euler")

    class Constant(ExactFlow):
        def forward(self, hidden_states, timestep, encoder_hidden_states, return_dict):
            return (torch.full_like(hidden_states, 0.5),)

    sampler = ChunkSampler(Constant(schedule), NoCache(), schedule, chunk_frames=3)
    sampler.start(1, (2, 4, 4))
    noise = SeededNoise(3)
    first = SeededNoise(3).chunk(0, (1, 3, 2, 4, 4))
    x0 = sampler.chunk(0, torch.zeros(1, 4, 8), noise, 1, (2, 4, 4))
    assert torch.allclose(x0, first - 0.5, atol=1e-6)
