"""`bench --estimate`: the memory table is computed, and agrees with what is really allocated or shipped."""

import json

import pytest
import torch

from headforcing.cache.policy import PRESETS
from headforcing.cli import main
from headforcing.engine.pipeline import load
from headforcing.models.specs import TINY, TOY, WAN_1_3B
from headforcing.tools.estimate import cache_bytes, dit_parameters, estimate

from conftest import shared_dir


@pytest.mark.parametrize("policy", [p for p in PRESETS if p != "full"])
def test_cache_bytes_equal_a_real_sessions(policy):
    """On the meta device, the bytes a real session allocates (tiny model, 64x64, float32)."""
    pipe = load("tiny", decode=False)
    session = pipe.session("a red circle", policy=policy, decode=False)
    assert cache_bytes(TINY, policy, (64, 64), torch.float32) == session.cache.nbytes() > 0


def test_parameters_equal_the_real_checkpoint_and_the_shipped_toy():
    manifest = shared_dir() / "reference" / "self_forcing_generator_1.3b.json"
    if manifest.exists():
        shapes = json.loads(manifest.read_text())["tensors"]
        counted = sum(int(torch.tensor(s).prod()) if s else 1 for s in shapes.values())
        assert dit_parameters(WAN_1_3B) == counted
    toy, _ = load("toy").transformer, None
    assert dit_parameters(TOY) == sum(p.numel() for p in toy.parameters())


def test_the_estimate_command_prints_both_sizes_and_every_bounded_preset(capsys):
    assert main(["bench", "--estimate", "--model", "tiny", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "| 832x480 | 1560 |" in out and "| 1280x720 | 3600 |" in out and "longlive" in out and "full" not in out.split("cache:")[1].split("|")[0]
    report = estimate(TINY, [(64, 64)], torch.float32)
    assert report["sizes"]["64x64"]["tokens_per_frame"] == 16
    assert main(["bench", "--estimate", "--dtype", "int8"]) == 2
