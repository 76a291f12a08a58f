"""Episodic memory: admission, replacement, merge arithmetic, capacity, determinism."""

import torch
from conftest import engine_cache, run_chunks

from headforcing.cache.episodic import EpisodicConfig, EpisodicMemory, read_log
from headforcing.cache.policy import Episodic, Recent, RolePolicy, Sink, preset
from headforcing.cache.store import KVStore
from headforcing.cache.rope import Rope

T, D = 4, 8


def make_store(slots=2, novelty=0.05):
    memory = EpisodicMemory(slots, EpisodicConfig(novelty=novelty))
    store = KVStore(RolePolicy((Sink(1), Episodic(slots), Recent(2))), heads=[0], window_frames=99, chunk_frames=1, memory=memory)
    store.allocate(1, T, D, torch.float32, "cpu")
    return store, memory


def push(store, frame, key_dir, value):
    """Commit one frame whose keys all point along key_dir and whose values are `value`."""
    rope = Rope(D, (2, 2))
    store.begin_chunk(rope, frame, 1, rope.freqs)
    k = key_dir.expand(1, 1, T, D).clone()
    v = torch.full((1, 1, T, D), float(value))
    store.commit_frame(frame, k, v)


def basis(i):
    return torch.nn.functional.one_hot(torch.tensor(i), D).float()


def test_admit_then_replace_least_used_then_merge():
    store, memory = make_store(slots=2, novelty=0.5)
    for f in range(3):  # sink 0, recent 1 2
        push(store, f, basis(f), f)
    push(store, 3, basis(3), 3)  # frame 1 leaves recent: free slot -> admit
    push(store, 4, basis(4), 4)  # frame 2 leaves: admit
    assert [d["action"] for d in read_log(memory.log)] == ["admit", "admit"]
    assert store.held_frames() == [0, 3, 4, 1, 2] and store.occupied == store.capacity
    memory.usage[:] = torch.tensor([0.9, 0.1])  # slot 1 (frame 2) is the least used
    push(store, 5, basis(5), 5)  # frame 3 leaves, orthogonal to both slots: novel -> replaces slot 1
    log = read_log(memory.log)
    assert log[-1]["action"] == "replace" and log[-1]["slot"] == 1
    assert abs(log[-1]["novelty"] - 1.0) < 1e-6
    assert store.held_frames()[3:] == [1, 3]
    push(store, 6, basis(1) * 2, 6)  # frame 4 leaves ...
    # frame 4 (basis 4) is novel again; replaces the least used. Now make a redundant one:
    push(store, 7, basis(5), 7)  # frame 5 leaves (basis 5)
    push(store, 8, basis(5), 8)  # frame 6 leaves (basis 1, same direction as slot holding frame 1) -> merge
    merge = read_log(memory.log)[-1]
    assert merge["action"] == "merge" and merge["frame"] == 6 and merge["count"] == 2
    slot = store.episodic_first + merge["slot"]
    assert store.held_frames()[slot] == 1  # the slot keeps its first frame's position
    v = store.v_ctx[0, 0, store._tokens(slot)]
    assert torch.allclose(v, torch.full_like(v, (1 + 6) / 2))  # count-weighted average of values
    k = store.k_raw[0, 0, store._tokens(slot)]
    assert torch.allclose(k, (basis(1) + 2 * basis(1)).expand(T, D) / 2)  # ... and of keys
    assert store.occupied == store.capacity
    assert [d["action"] for d in read_log(memory.log)] == ["admit", "admit", "replace", "replace", "replace", "merge"]
    assert memory.tally.tolist() == [2, 1, 3]  # admit, merge, replace


def test_capacity_is_never_exceeded_and_runs_are_deterministic():
    policy = preset("headforcing")
    logs = []
    for _ in range(2):
        cache = engine_cache(policy, policy.resolve_headmap(3, 4), 120)

        def check(i, c):
            assert all(s.occupied <= s.capacity for s in c.stores())

        latents = run_chunks(cache, 40, latent_hw=(2, 2), on_chunk=check)
        logs.append((cache.decisions(), latents))
    assert logs[0][0] == logs[1][0] and len(logs[0][0]) > 0
    assert torch.equal(logs[0][1], logs[1][1])
    stores = [s for s in cache.stores() if s.name == "memory"]
    assert all(s.occupied == s.capacity == 18 for s in stores)
