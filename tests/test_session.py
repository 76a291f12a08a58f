"""Sessions: a model loaded once, sessions with no fixed end, save/resume (exact, in a new process), refused
states, sessions side by side, continuing a given clip."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import headforcing
from headforcing.cache.policy import PRESETS
from headforcing.engine.state import digest
from headforcing.errors import UsageError

PROMPTS = ("a red circle bounces on a green background", "a blue square bounces on a red background",
           "a white triangle bounces on a black background")
SIZES = {"toy": None, "tiny": (32, 32)}
# (policy, heads, chunks, save after, prompt switches {chunk: prompt index}): a switch before the save point
# and one after; `full` stays inside its 21-frame window; heads="auto" is saved after its profiling window
# (7 chunks) and once while still profiling.
CASES = [(p, None, 7, 3, {1: 1, 5: 2}) if p == "full" else (p, None, 10, 8, {2: 1, 9: 2}) for p in PRESETS]
CASES += [("headforcing", "auto", 10, 8, {2: 1, 9: 2}), ("headforcing", "auto", 9, 4, {2: 1, 6: 2})]


def run(session, start: int, stop: int, switches: dict) -> list:
    out = []
    for index in range(start, stop):
        if index in switches:
            session.set_prompt(PROMPTS[switches[index]])
        out.append(session.step())
    return out


CHILD = """
import json, sys
import torch
from safetensors.torch import save_file
import headforcing
from headforcing.utils import threads
from test_session import PROMPTS, run
threads.use(1)  # as the parent: the machine's load must not choose another count (other float rounding)
jobs = json.loads(sys.argv[1])
pipe = headforcing.load(jobs["model"])
for job in jobs["runs"]:
    session = pipe.resume(job["state"])
    chunks = run(session, job["start"], job["stop"], {int(k): v for k, v in job["switches"].items()})
    tensors = {f"latents.{i}": c.latents.contiguous() for i, c in enumerate(chunks)}
    tensors |= {f"frames.{i}": c.frames.contiguous() for i, c in enumerate(chunks)}
    save_file(tensors, job["out"])
"""


@pytest.mark.parametrize("model", ["toy", "tiny"])
def test_resume_in_a_new_process_equals_the_uninterrupted_run(model, tmp_path, monkeypatch):
    """For every preset (and heads="auto", saved after and during its profiling window), with a prompt switch
    before and after the save point: run k chunks, save, resume in a new Python process, run the rest —
    latents and decoded frames equal those of the run never interrupted. Both processes run one thread: a
    count chosen from the machine's load could differ between them (and so would the VAE's float rounding)."""
    from headforcing.utils import threads as headforcing_threads

    threads = torch.get_num_threads()
    monkeypatch.setattr(headforcing_threads, "_chosen", 1)  # as `--threads 1`: no session looks at the load again
    torch.set_num_threads(1)
    try:
        check_resumed_runs(model, tmp_path)
    finally:
        torch.set_num_threads(threads)


def check_resumed_runs(model, tmp_path):
    pipe = headforcing.load(model)
    expected, jobs = {}, []
    for n, (policy, heads, chunks, save_at, switches) in enumerate(CASES):
        options = dict(policy=policy, heads=heads, seed=n, size=SIZES[model])
        expected[n] = run(pipe.session(PROMPTS[0], **options), 0, chunks, switches)
        session = pipe.session(PROMPTS[0], **options)
        run(session, 0, save_at, switches)
        state = tmp_path / f"{n}.state.safetensors"
        session.save(str(state))
        jobs.append(dict(state=str(state), start=save_at, stop=chunks, switches=switches, out=str(tmp_path / f"{n}.out.safetensors")))
    subprocess.run([sys.executable, "-c", CHILD, json.dumps(dict(model=model, runs=jobs))], check=True,
                   cwd=str(tmp_path), env={"PYTHONPATH": str(__import__("pathlib").Path(__file__).parent), "PATH": ""})
    for n, (policy, heads, chunks, save_at, _) in enumerate(CASES):
        got = load_file(jobs[n]["out"])
        for i, want in enumerate(expected[n][save_at:]):
            assert torch.equal(got[f"latents.{i}"], want.latents), (policy, heads, save_at + i)
            assert torch.equal(got[f"frames.{i}"], want.frames), (policy, heads, save_at + i)


def test_a_resumed_session_that_is_not_exact_is_detected():
    """The comparison above can fail: a session resumed with its noise generator's state lost (re-seeded)
    makes other latents."""
    pipe = headforcing.load("toy")
    a = pipe.session(PROMPTS[0], seed=4)
    want = run(a, 0, 5, {})[-1].latents
    b = pipe.session(PROMPTS[0], seed=4)
    run(b, 0, 4, {})
    b.noise.gen.manual_seed(4)
    assert not torch.equal(b.step().latents, want)


@pytest.fixture(scope="module")
def toy():
    return headforcing.load("toy")


@pytest.fixture()
def saved(toy, tmp_path):
    session = toy.session(PROMPTS[0], seed=2)
    run(session, 0, 6, {3: 1})
    path = tmp_path / "s.state.safetensors"
    session.save(str(path))
    return path


def test_corrupted_truncated_or_foreign_states_are_refused(toy, saved, tmp_path):
    data = saved.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    flipped = tmp_path / "flipped.safetensors"
    body = bytearray(data)
    body[-100] ^= 0xFF  # a bit of tensor data, not the header
    flipped.write_bytes(bytes(body))
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(3)}, str(foreign))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    meta, tensors = read(saved)
    future = tmp_path / "future.safetensors"
    save_file(tensors, str(future), metadata={"headforcing": json.dumps({**meta, "version": 99})})
    changed = tmp_path / "changed.safetensors"  # written by a headforcing whose preset was defined otherwise
    policy = {**meta["policy"], "memory": {**meta["policy"]["memory"], "on_switch": "keep"}}
    other = {**meta, "policy": policy}
    save_file(tensors, str(changed), metadata={"headforcing": json.dumps({**other, "sha256": digest(tensors, other)})})
    edited = tmp_path / "edited.safetensors"  # the same change made by hand: the checksum covers the metadata
    save_file(tensors, str(edited), metadata={"headforcing": json.dumps(other)})
    cases = [(truncated, "not a readable safetensors"), (flipped, "corrupted"), (foreign, "not a headforcing session state"),
             (garbage, "not a readable safetensors"), (future, "version 99"), (changed, "another definition of policy"),
             (edited, "corrupted or edited"),
             (tmp_path / "missing.safetensors", "does not exist")]
    for path, message in cases:
        with pytest.raises(UsageError, match=message):
            toy.resume(str(path))
    assert len(str(UsageError)) and all("\n" not in m for _, m in cases)
    want = run(toy.session(PROMPTS[0], seed=2), 0, 7, {3: 1})[-1].latents  # the refusals left nothing behind
    assert torch.equal(toy.resume(str(saved)).step().latents, want)


def read(path):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["headforcing"]), {k: f.get_tensor(k) for k in f.keys()}


def test_a_state_of_another_model_or_weights_is_refused(saved):
    with pytest.raises(UsageError, match="saved with model 'toy'"):
        headforcing.load("tiny").resume(str(saved))
    other = headforcing.load("toy")
    with torch.no_grad():
        other.transformer.proj_out.weight[0, 0] += 1e-3
    with pytest.raises(UsageError, match="other weights"):
        other.resume(str(saved))


def test_two_sessions_stepped_alternately_equal_each_alone(toy):
    """Two sessions on one loaded model (different policies, prompts, seeds; a switch in one) share the DiT
    and its prompt cache but nothing of their state."""
    tiny = headforcing.load("tiny")
    for pipe, policies in ((toy, ("headforcing", "longlive")), (tiny, ("self-forcing", "headforcing"))):
        def open_both():
            return (pipe.session(PROMPTS[0], policy=policies[0], seed=1, size=SIZES[pipe.spec.name]),
                    pipe.session(PROMPTS[1], policy=policies[1], seed=2, size=SIZES[pipe.spec.name]))

        alone = [run(s, 0, 6, {3: 2} if k == 0 else {}) for k, s in enumerate(open_both())]
        a, b = open_both()
        together = ([], [])
        for index in range(6):
            together[0].extend(run(a, index, index + 1, {3: 2}))
            together[1].extend(run(b, index, index + 1, {}))
        for mine, theirs in zip(alone, together):
            assert all(torch.equal(x.latents, y.latents) and torch.equal(x.frames, y.frames) for x, y in zip(mine, theirs))


def test_no_fixed_end_and_constant_cache(toy):
    """A bounded session holds the same cache bytes whatever its length; `full` is refused past the window."""
    session = toy.session(PROMPTS[0], policy="headforcing", decode=False)
    sizes = [session.step() and session.cache.nbytes() for _ in range(40)]
    assert len(set(sizes)) == 1 and session.stats()["latent_frames"] == 120
    full = toy.session(PROMPTS[0], policy="full", decode=False)
    run(full, 0, 7, {})
    with pytest.raises(UsageError, match="valid only inside the trained window of 21 latent frames"):
        full.step()


def test_committing_a_clip_is_the_samplers_own_commit():
    """On the tiny Wan model: a session continuing the first 3 chunks of another session's latents (committed
    as context), with the same noise state, makes that session's 4th chunk — latents and decoded frames."""
    pipe = headforcing.load("tiny")
    for policy in ("self-forcing", "headforcing", "longlive"):
        a = pipe.session(PROMPTS[0], policy=policy, seed=7, size=(32, 32))
        made = run(a, 0, 4, {})
        b = pipe.session(PROMPTS[0], policy=policy, seed=7, size=(32, 32))
        noise = pipe.session(PROMPTS[0], seed=7).noise
        given = torch.cat([c.latents for c in made[:3]], dim=1)
        for _ in range(3):  # the noise the 3 given chunks took in `a`
            b.noise.chunk(0, (1, 3, *b.latent_chw))
            for i in range(len(b.sampler.timesteps) - 1):
                b.noise.step(0, i, (1, 3, *b.latent_chw))
        clip = b.start_from(given)
        assert torch.equal(clip, torch.cat([c.frames for c in made[:3]], dim=1))
        nxt = b.step()
        assert torch.equal(nxt.latents, made[3].latents) and torch.equal(nxt.frames, made[3].frames), policy
        assert noise is not b.noise


def test_wan_clip_encoding_keeps_the_first_frame_alone_and_the_count():
    """Wan's causal VAE: 4L-3 frames -> L latent frames (the first alone), and decoding them gives 4L-3 frames."""
    pipe = headforcing.load("tiny")
    frames = np.random.default_rng(0).integers(0, 255, (9, 32, 32, 3), dtype=np.uint8)
    latents = pipe.encode_frames(frames)
    assert latents.shape == (1, 3, 16, 4, 4)
    first = pipe.encode_frames(frames[:1])
    assert torch.allclose(latents[:, :1], first, atol=1e-5)  # frame 0 encodes the same with or without the rest
    session = pipe.session(PROMPTS[0], size=(32, 32))
    assert session.start_from(latents).shape == (1, 9, 32, 32, 3)


def test_image_start_commits_one_frame_then_chunks(toy):
    image = np.zeros((1, 32, 32, 3), np.uint8)
    image[..., 1] = 170
    session = toy.session(PROMPTS[0], policy="headforcing")
    out = session.start_from(toy.encode_frames(image))
    assert out.shape == (1, 1, 32, 32, 3) and session.origin == 1 and session.frame == 1
    chunk = session.step()
    assert chunk.first_frame == 1 and session.frame == 4
    with pytest.raises(UsageError, match="only before its first chunk"):
        session.start_from(toy.encode_frames(image))
    with pytest.raises(UsageError, match="cannot be committed in chunks of 3"):
        toy.session(PROMPTS[0]).start_from(torch.zeros(1, 2, 3, 32, 32))


def test_toy_clip_continued_keeps_its_scene(toy):
    """A 5 s world clip continued for 10 s under its own caption: the caption's background on every frame,
    object colours found about as often as the model finds them unprompted, and the continuation picks up
    where the clip ends (its first frame is nearer the clip's last than an unprompted video's frame there)."""
    from headforcing.toyworld.eval import frame_metrics, read_frame
    from headforcing.toyworld.world import generate, make_world

    colours, unprompted = [], []
    for seed in range(3):
        world = make_world(seed, 32)
        clip, _, _ = generate(seed, 21, 32)
        session = toy.session(world.caption(), seed=seed)
        given = session.start_from(toy.encode_frames(np.stack(clip)))
        assert np.array_equal(given[0].numpy(), np.stack(clip))  # pixels: the clip itself opens the output
        after = np.concatenate([session.step().frames[0].numpy() for _ in range(13)])
        alone = toy.session(world.caption(), seed=seed)
        own = np.concatenate([alone.step().frames[0].numpy() for _ in range(20)])[21:]
        truth = {t.colour: t.shape for t in world.things}
        for frames, out in ((after, colours), (own, unprompted)):
            rows = [frame_metrics(read_frame(f, world.background), world.background, truth, None) for f in frames]
            if out is colours:
                assert all(r["background_ok"] for r in rows), seed
            out.append(np.mean([r["colour_recall"] for r in rows]))
        last = clip[-1].astype(float)
        assert np.abs(after[0] - last).mean() < np.abs(own[0] - last).mean(), seed
    assert np.mean(colours) >= np.mean(unprompted) - 0.1, (colours, unprompted)


def test_a_blended_switch_moves_the_text_linearly_and_resumes_exactly(toy, tmp_path):
    """blend_chunks=2: the two chunks after a switch see the old prompt's context moved 1/3 and 2/3 of the
    way to the new one, then the new one; a session saved in the middle of a blend resumes exactly."""
    old, new = (toy.encode(p) for p in PROMPTS[:2])
    session = toy.session(PROMPTS[0], blend_chunks=2, seed=3)
    run(session, 0, 2, {})
    session.set_prompt(PROMPTS[1])
    seen = []
    session.sampler.commit = lambda latents, text, first_frame=None, model=None: seen.append(text)  # the text each chunk commits with
    run(session, 2, 5, {})
    assert torch.allclose(seen[0], torch.lerp(old, new, 1 / 3)) and torch.allclose(seen[1], torch.lerp(old, new, 2 / 3))
    assert seen[2] is new and session.blend is None
    want = run(toy.session(PROMPTS[0], blend_chunks=2, seed=3), 0, 6, {3: 1})
    half = toy.session(PROMPTS[0], blend_chunks=2, seed=3)
    run(half, 0, 4, {3: 1})
    half.save(str(tmp_path / "b.state.safetensors"))
    again = run(toy.resume(str(tmp_path / "b.state.safetensors")), 4, 6, {})
    assert all(torch.equal(a.latents, b.latents) for a, b in zip(again, want[4:]))


def test_a_state_of_another_decoder_or_without_its_features_is_refused(tmp_path):
    """The tiny model decodes with the streaming VAE: a state whose decoder has other causal convolutions is
    refused as another decode setting, one missing a feature tensor as inconsistent (both re-signed, as a
    headforcing that wrote them would)."""
    pipe = headforcing.load("tiny")
    session = pipe.session("a red circle", size=(32, 32))
    session.step()
    path = tmp_path / "s.safetensors"
    session.save(str(path))
    meta, tensors = read(path)
    feats = meta["decoder"]["feat"]
    j = feats.index("tensor")
    for name, changed, kept, message in (
        ("other", {**meta, "decoder": {**meta["decoder"], "feat": feats + [None]}}, tensors, "does not decode with"),
        ("missing", meta, {k: t for k, t in tensors.items() if k != f"decoder.feat.{j}"}, f"decoder.feat.{j} is missing"),
    ):
        edited = tmp_path / f"{name}.safetensors"
        save_file(kept, str(edited), metadata={"headforcing": json.dumps({**changed, "sha256": digest(kept, changed)})})
        with pytest.raises(UsageError, match=message):
            pipe.resume(str(edited))
