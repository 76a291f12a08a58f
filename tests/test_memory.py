"""Constant memory: a bounded cache holds the same bytes and at most its capacity, however long the video."""

import pytest
from conftest import engine_cache, run_chunks

from headforcing.cache.policy import PRESETS, preset


@pytest.mark.parametrize("name", [p for p in PRESETS if p != "full"])
def test_cache_bytes_after_10_chunks_equal_after_100(name):
    policy = preset(name)
    cache = engine_cache(policy, policy.resolve_headmap(3, 4), 300)
    record = {}
    early = max(10, policy.warmup_chunks(3, 21) + 1)  # every slot in use (retrieval: once its archive can fill them)

    def on_chunk(i, c):
        if i + 1 in (early, 100):
            record[i + 1] = (c.nbytes(), [s.occupied for s in c.stores()])
        for s in c.stores():
            assert s.occupied <= s.capacity

    coarse = any(r.coarse for r in policy.roles.values())  # pools 2x2 tokens: needs a 2x2 token grid, 4x4 latents
    run_chunks(cache, 100, latent_hw=(4, 4) if coarse else (2, 2), on_chunk=on_chunk)
    assert record[early][0] == record[100][0] > 0
    # after 10 chunks (30 frames) every window is full (and past the warm-up every archive): the counts stop growing too
    assert record[early][1] == record[100][1]


def test_kept_frames_are_the_policy_segments():
    policy = preset("longlive")  # sink 3 + recent 6
    cache = engine_cache(policy, policy.resolve_headmap(3, 4), 90)
    run_chunks(cache, 10, latent_hw=(2, 2))
    assert sorted(cache.layers[0].stores[0].frames) == [0, 1, 2, 24, 25, 26, 27, 28, 29]


def test_full_grows_with_the_run_and_is_sized_by_it():
    policy = preset("full")
    small, large = (engine_cache(policy, policy.resolve_headmap(3, 4), n) for n in (9, 21))
    for c in (small, large):
        run_chunks(c, 3, latent_hw=(2, 2))
    assert large.nbytes() > small.nbytes()
