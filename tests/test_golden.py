"""Conformance with recordings of the public Self-Forcing pipeline (same weights + draws -> same latents)."""

import torch
from conftest import golden

from headforcing.cli import main
from headforcing.tools.conformance import load_recording, max_abs_error, replay
from headforcing.engine.sampler import Schedule


def test_full9_reproduces_reference_latents():
    assert max_abs_error(golden("full9.pt")) < 1e-4


def test_sink3_window9_reproduces_reference_latents():
    assert max_abs_error(golden("sink3_window9_f15.pt")) < 1e-4


def test_wrong_cache_policy_is_far_from_the_recording():
    """The conformance check can fail: replaying the windowed recording with everything kept is off."""
    rec = load_recording(golden("sink3_window9_f15.pt"))
    rec["config"] = dict(rec["config"], local_attn_size=-1, sink_size=0)
    assert (replay(rec) - rec["latents"]).abs().max().item() > 1e-3


def test_warped_timesteps_match_the_recording():
    cfg = load_recording(golden("full9.pt"))["config"]
    schedule = Schedule(steps=tuple(cfg["denoising_step_list"]), shift=cfg["timestep_shift"])
    assert torch.allclose(torch.tensor(schedule.warped()), torch.tensor(cfg["warped_timesteps"]), atol=0, rtol=0)


def test_cli_conformance_exit_codes(capsys):
    path = str(golden("full9.pt"))
    assert main(["conformance", path]) == 0
    assert "within tolerance" in capsys.readouterr().out
    assert main(["conformance", path, "--tolerance", "1e-9"]) == 1
