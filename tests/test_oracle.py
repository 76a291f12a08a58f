"""Every preset agrees with a naive float64 oracle (explicit per-head frame lists and positions)."""

import pytest
import torch
from conftest import engine_cache, run_chunks
from oracle import OracleCache

from headforcing.cache.headmap import HeadMap
from headforcing.cache.policy import PRESETS, preset
from headforcing.models import TINY

CHUNKS = 10  # 30 latent frames: past every window (21) and the sinks


def mixed_headmap() -> HeadMap:
    """Every layer mixes roles, and every role appears with 1 and with 2 heads somewhere."""
    return HeadMap(
        (
            ("local", "anchor", "memory", "memory"),
            ("anchor", "anchor", "local", "memory"),
            ("memory", "local", "local", "anchor"),
        )
    )


def run_both(policy, headmap, chunks=CHUNKS):
    engine = run_chunks(engine_cache(policy, headmap, 3 * chunks), chunks)
    oracle = run_chunks(OracleCache(policy, headmap), chunks, dtype=torch.float64)
    return engine, oracle


@pytest.mark.parametrize("name", PRESETS)
def test_engine_matches_float64_oracle(name):
    policy = preset(name)
    chunks = 7 if name == "full" else CHUNKS  # full is valid inside the 21-frame window only
    headmap = mixed_headmap() if len(policy.roles) > 1 else None
    headmap = policy.resolve_headmap(TINY.num_layers, TINY.num_heads, headmap)
    engine, oracle = run_both(policy, headmap, chunks)
    assert engine.shape == (1, 3 * chunks, 16, 4, 4)
    assert (engine - oracle).abs().max().item() < 1e-4


def test_oracle_tells_policies_apart():
    """The comparison above can fail: the oracle of another policy is far from the engine."""
    headmap = mixed_headmap()
    engine = run_chunks(engine_cache(preset("headforcing"), headmap, 30), CHUNKS)
    wrong = preset("headforcing")
    swapped = HeadMap(tuple(tuple({"local": "anchor", "anchor": "local"}.get(r, r) for r in layer) for layer in headmap.roles))
    oracle = run_chunks(OracleCache(wrong, swapped), CHUNKS, dtype=torch.float64)
    assert (engine - oracle).abs().max().item() > 1e-2
