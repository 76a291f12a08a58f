"""Every preset agrees with a naive float64 oracle (explicit per-head frame lists and positions)."""

from dataclasses import replace

import pytest
import torch
from conftest import engine_cache, run_chunks
from oracle import OracleCache

from headforcing.cache.headmap import HeadMap
from headforcing.cache.policy import PRESETS, Policy, preset
from headforcing.models.specs import TINY

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


def run_both(policy, headmap, chunks=CHUNKS, **cache_args):
    cache = engine_cache(policy, headmap, 3 * chunks, **cache_args)
    engine = run_chunks(cache, chunks)
    oracle = run_chunks(OracleCache(policy, headmap, decisions=cache.decisions()), chunks, dtype=torch.float64)
    return engine, oracle, cache.decisions()


@pytest.mark.parametrize("name", PRESETS)
def test_engine_matches_float64_oracle(name):
    policy = preset(name)
    # full is valid inside the 21-frame window only; the others run 2 chunks past their warm-up (retrieval: once
    # the archive can fill its slots)
    chunks = 7 if name == "full" else max(CHUNKS, policy.warmup_chunks(3, 21) + 2)
    headmap = mixed_headmap() if name == "headforcing" else None  # the others: their own default head shares
    headmap = policy.resolve_headmap(TINY.num_layers, TINY.num_heads, headmap)
    engine, oracle, _ = run_both(policy, headmap, chunks)
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


@pytest.mark.parametrize("novelty, later", [(0.0, "replace"), (2.0, "merge")])
def test_headforcing_with_episodic_decisions_matches_oracle(novelty, later):
    """Novelty 0: every frame leaving `recent` replaces the least-used slot; 2: every one is merged."""
    from headforcing.cache.episodic import EpisodicConfig

    policy = preset("headforcing")
    engine, oracle, log = run_both(policy, mixed_headmap(), episodic=EpisodicConfig(novelty=novelty))
    actions = {d["action"] for d in log}
    assert actions == {"admit", later}
    assert (engine - oracle).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", ["headforcing", "longlive", "self-forcing"])
def test_prompt_switch_keep_and_recache_match_oracle(name):
    """A prompt switch at chunk 6 (past every window): `recache` roles re-encode their recent frames under
    the new prompt (headforcing: local and memory; longlive: all), `keep` roles do not (anchor; self-forcing)."""
    policy = preset(name)
    headmap = mixed_headmap() if len(policy.roles) > 1 else policy.resolve_headmap(3, 4)
    cache = engine_cache(policy, headmap, 3 * CHUNKS)
    engine = run_chunks(cache, CHUNKS, switch_at=6)
    oracle_cache = OracleCache(policy, headmap, decisions=cache.decisions())
    oracle = run_chunks(oracle_cache, CHUNKS, dtype=torch.float64, switch_at=6)
    assert (engine - oracle).abs().max().item() < 1e-4
    # the switch changed the video, and re-encoding changed it differently from keeping
    plain = run_chunks(engine_cache(policy, headmap, 3 * CHUNKS), CHUNKS)
    assert (engine[:, 18:] - plain[:, 18:]).abs().max() > 1e-2 and torch.equal(engine[:, :18], plain[:, :18])
    if policy.recache_frames:
        kept = Policy(name, {r: replace(p, on_switch="keep") for r, p in policy.roles.items()})
        no_recache = run_chunks(engine_cache(kept, headmap, 3 * CHUNKS), CHUNKS, switch_at=6)
        assert (engine - no_recache).abs().max() > 1e-3


def test_coarse_level_matches_oracle_through_ring_wraps():
    """Novelty 0: every frame leaving the memory heads' `recent` replaces an episodic slot, and the frame it
    replaces goes, pooled 2x2, to the coarse level; 16 chunks give up more frames than the 8 it holds, so the
    ring wraps. The oracle pools, numbers and weighs (log 4) the pooled frames on its own."""
    from headforcing.cache.episodic import EpisodicConfig
    from headforcing.cache.policy import Episodic, RolePolicy, Sink, Recent

    policy, chunks = preset("headforcing-coarse"), 16
    headmap = mixed_headmap()
    engine, oracle, log = run_both(policy, headmap, chunks, episodic=EpisodicConfig(novelty=0.0))
    replaced = [d for d in log if d["action"] == "replace" and d["layer"] == 0]
    assert len(replaced) > 8 * len(headmap.heads_of(0, "memory")) // 2 and len({d["frame"] for d in replaced}) > 8
    assert (engine - oracle).abs().max().item() < 1e-4
    # what the coarse level holds reaches the video: without it (same episodic slots) the oracle is elsewhere
    plain = Policy("no-coarse", {**policy.roles, "memory": RolePolicy((Sink(3), Episodic(4), Recent(9)), on_switch="recache")})
    without = run_chunks(OracleCache(plain, headmap, decisions=log), chunks, dtype=torch.float64)
    assert (without - oracle).abs().max().item() > 1e-3
