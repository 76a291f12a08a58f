"""RoPE with explicit positions: equal to diffusers' table where the table exists, and bounded when compact."""

import pytest
import torch
from conftest import engine_cache, run_chunks
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

from headforcing.cache.policy import Recent, RolePolicy, Sink, preset
from headforcing.cache.store import KVStore
from headforcing.models.specs import TINY
from headforcing.cache.rope import Rope, rotate


def diffusers_rotate(x, position, head_dim, grid):
    """x [S, D] of frame `position`, rotated with diffusers' 1024-entry table (the stock formula)."""
    rope = WanRotaryPosEmbed(head_dim, (1, 1, 1), 1024)
    cos, sin = rope(torch.zeros(1, 1, position + 1, *grid))  # [1, (p+1)*T, 1, D]
    T = grid[0] * grid[1]
    cos, sin = cos[0, -T:, 0], sin[0, -T:, 0]
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos[..., 0::2] - x2 * sin[..., 1::2]
    out[..., 1::2] = x1 * sin[..., 1::2] + x2 * cos[..., 0::2]
    return out


@pytest.mark.parametrize("head_dim", [24, 128])
@pytest.mark.parametrize("position", [0, 7, 20, 1023])
def test_rotation_at_position_equals_diffusers_table(head_dim, position):
    grid = (3, 5)
    x = torch.randn(15, head_dim, generator=torch.Generator().manual_seed(position))
    ours = rotate(x, Rope(head_dim, grid).freqs([position]))
    assert (ours - diffusers_rotate(x, position, head_dim, grid)).abs().max().item() < 1e-5


@pytest.mark.parametrize("positions", ["absolute", "compact"])
def test_stored_key_rotated_later_equals_key_rotated_directly(positions):
    """Keys committed before RoPE and rotated by the store at a later chunk == rotated directly at their
    position (diffusers' table); absolute positions are frame indices, compact ones ranks 0..n-1."""
    grid, T, D = (2, 2), 4, TINY.head_dim
    store = KVStore(RolePolicy((Sink(3), Recent(6)), positions), heads=[0, 1], window_frames=60, chunk_frames=3)
    store.allocate(1, T, D, torch.float32, "cpu")
    rope = Rope(D, grid)
    gen = torch.Generator().manual_seed(0)
    raw = {}
    for chunk in range(6):
        store.begin_chunk(rope, 3 * chunk, 3, rope.freqs)
        q, k, v = (torch.randn(1, 2, 3 * T, D, generator=gen) for _ in range(3))
        store.attend(q, k, v, commit=True)
        store.commit_chunk()
        raw.update({3 * chunk + i: k[0, :, i * T : (i + 1) * T] for i in range(3)})
    store.begin_chunk(rope, 18, 3, rope.freqs)
    assert sorted(store.frames) == [0, 1, 2, 12, 13, 14, 15, 16, 17]
    slot_pos, chunk_pos = store.positions(18, 3)
    rank = {f: r for r, f in enumerate(sorted(store.frames))}
    for slot, (frame, pos) in enumerate(zip(store.frames, slot_pos)):
        assert pos == (frame if positions == "absolute" else rank[frame])
        kept = store.k_ctx[0, :, store._tokens(slot)]
        for h in range(2):
            assert (kept[h] - diffusers_rotate(raw[frame][h], pos, D, grid)).abs().max().item() < 1e-5
    assert chunk_pos == ([18, 19, 20] if positions == "absolute" else [9, 10, 11])


@pytest.mark.parametrize("name", ["headforcing", "infinity-rope", "deep-forcing"])
def test_compact_positions_stay_in_the_trained_window_past_the_rope_table(name):
    """> 1100 latent frames (past diffusers' 1024-entry table; 2001 with the episodic memory of
    headforcing at work): every position <= 20, outputs finite."""
    chunks = 667 if name == "headforcing" else 368  # 2001 / 1104 latent frames
    policy = preset(name)
    cache = engine_cache(policy, policy.resolve_headmap(3, 4), 3 * chunks)
    seen = []
    latents = run_chunks(cache, chunks, latent_hw=(2, 2), on_chunk=lambda i, c: seen.append(c.max_position()))
    assert len(seen) == chunks and max(seen) <= 20 and max(seen) >= 14
    assert torch.isfinite(latents).all()


def test_absolute_positions_follow_the_frame_index():
    policy = preset("self-forcing")
    cache = engine_cache(policy, policy.resolve_headmap(3, 4), 45)
    seen = []
    run_chunks(cache, 15, latent_hw=(2, 2), on_chunk=lambda i, c: seen.append(c.max_position()))
    assert seen == [3 * i + 2 for i in range(15)]
