"""The retrieval memory (a Retrieved segment): per-head top-k reads from an archive of frames that left `recent`."""

import pytest
import torch
from conftest import engine_cache, run_chunks
from oracle import OracleCache
from test_oracle import mixed_headmap

import headforcing
from headforcing.cache.archive import Archive
from headforcing.cache.policy import Episodic, Policy, Recent, Retrieved, RolePolicy, Sink, preset
from headforcing.errors import UsageError

CHUNKS = 12


def retrieval_policy(memory_at="time", every=1, episodic=0) -> Policy:
    memory = (Sink(3),) + ((Episodic(episodic),) if episodic else ()) + (Retrieved(3, 8, every), Recent(3))
    return Policy("retrieval-test", {
        "local": RolePolicy((Recent(3),), on_switch="recache"),
        "anchor": RolePolicy((Sink(3), Recent(3))),
        "memory": RolePolicy(memory, on_switch="recache", memory_at=memory_at),
    })


class NewestOracle(OracleCache):
    """The oracle with another selection rule: the newest k archived frames instead of the best-matching."""

    def retrieve(self, layer, head, b, q_mean):
        chosen = super().retrieve(layer, head, b, q_mean)
        return self.archived(layer, head)[-len(chosen):] if chosen else []


@pytest.mark.parametrize("memory_at, every, episodic", [("time", 1, 0), ("near", 1, 2), ("time", 2, 2)])
def test_retrieval_matches_float64_oracle_and_the_choice_matters(memory_at, every, episodic):
    """The oracle scores archived frames on its own (float64 cosine of mean query and mean key, per head), keeps
    the top 3 in time order at the positions `memory_at` gives; the engine agrees through a ring wrap of the
    8-frame archive and a prompt switch. Heads choose different frames, and another choice is far off."""
    policy, headmap = retrieval_policy(memory_at, every, episodic), mixed_headmap()
    chosen = []

    def on_chunk(i, cache):
        store = next(s for s in cache.layers[0].stores if s.archive is not None and len(s.heads) == 2)
        if store.archive.full:
            q = torch.randn(1, 2, 48, store.archive.k.shape[-1], generator=torch.Generator().manual_seed(i))
            chosen.append(store.archive.chosen_frames(q))

    cache = engine_cache(policy, headmap, 3 * CHUNKS)
    engine = run_chunks(cache, CHUNKS, on_chunk=on_chunk, switch_at=9)
    oracle = run_chunks(OracleCache(policy, headmap, decisions=cache.decisions()), CHUNKS, dtype=torch.float64, switch_at=9)
    assert (engine - oracle).abs().max().item() < 1e-4
    wrong = run_chunks(NewestOracle(policy, headmap, decisions=cache.decisions()), CHUNKS, dtype=torch.float64, switch_at=9)
    assert (wrong - oracle).abs().max().item() > 1e-3
    archive = next(s.archive for s in cache.stores() if s.archive is not None)
    assert archive.held == 8 and set((archive.frames % every).tolist()) == {0}  # full, and the ring wrapped:
    assert archive.frames.min().item() > -(-3 // every) * every  # the first archived frame was overwritten
    assert any(not torch.equal(c[0, 0], c[0, 1]) for c in chosen)  # two heads of one group chose differently
    assert all(torch.equal(c, c.sort(-1).values) for c in chosen)  # in time order


def test_archive_keeps_every_pth_leaving_frame_in_a_ring():
    archive = Archive(slots=2, size=3, every=2)
    archive.allocate(1, 1, 4, 6, torch.float32, "cpu")
    for frame in range(3, 12):
        archive.offer(frame, torch.full((1, 1, 4, 6), float(frame)), torch.zeros(1, 1, 4, 6))
    assert sorted(archive.frames.tolist()) == [6, 8, 10] and archive.held == 3 and archive.full
    assert archive.k[0, 0, :, 0, 0].tolist() == archive.frames.float().tolist()


def test_state_round_trip_and_refusals():
    archive = Archive(slots=2, size=4)
    archive.allocate(1, 2, 4, 6, torch.float32, "cpu")
    for frame in range(5):
        archive.offer(frame, torch.randn(1, 2, 4, 6), torch.randn(1, 2, 4, 6))
    meta, tensors = archive.state()
    copy = Archive(slots=2, size=4)
    copy.allocate(1, 2, 4, 6, torch.float32, "cpu")
    assert copy.check_state(meta, tensors) is None
    copy.load_state(meta, tensors)
    q = torch.randn(1, 2, 8, 6)
    assert torch.equal(copy.chosen_frames(q), archive.chosen_frames(q)) and (copy.held, copy.next) == (4, 1)
    assert copy.check_state({**meta, "next": 7}, tensors) == "ring position"
    assert copy.check_state({**meta, "frames": [1, 2]}, tensors) == "frames"
    assert "k" in copy.check_state(meta, {**tensors, "k": tensors["k"][:, :1]})


def test_saved_session_resumes_to_the_bit_with_an_archive(tmp_path):
    """A state saved after the archive wrapped resumes to the same latents as the uninterrupted run."""
    pipe = headforcing.load("toy")
    prompt = "a red circle bounces on a green background"
    whole = pipe.session(prompt, policy="headforcing-retrieval", seed=4, decode=False)
    made = [whole.step().latents for _ in range(72)]  # every 4th frame of 48 archived: 192 frames wrap the ring
    first = pipe.session(prompt, policy="headforcing-retrieval", seed=4, decode=False)
    for _ in range(68):
        first.step()
    assert any(s.archive is not None and s.archive.held == s.archive.size for s in first.cache.stores())
    first.save(str(tmp_path / "s.safetensors"))
    resumed = pipe.resume(str(tmp_path / "s.safetensors"))
    assert all(torch.equal(resumed.step().latents, made[i]) for i in range(68, 72))


@pytest.mark.parametrize("segments, message", [
    ((Sink(3), Retrieved(4, 2), Recent(3)), "slots <= archive"),
    ((Sink(3), Retrieved(2, 4)), "Recent"),
    ((Sink(3), Episodic(2), Retrieved(2, 4), Recent(3)), None),
])
def test_retrieved_segment_checks(segments, message):
    if message is None:
        assert RolePolicy(segments).capacity(21) == 3 + 2 + 2 + 3
        return
    with pytest.raises(UsageError, match=message):
        RolePolicy(segments)


def test_warmup_counts_the_frames_that_fill_the_archive():
    """pyramid-forcing's wave heads archive every 3rd frame leaving a 3-frame recent window after a 3-frame
    sink: frames 3, 6, .., 18 fill its 6 slots; 18 leaves when frame 21 arrives: 22 frames, 8 chunks."""
    assert preset("pyramid-forcing").warmup_chunks(3, 21) == 8
