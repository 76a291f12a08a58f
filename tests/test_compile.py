"""The steady-state chunk step compiles whole (torch.compile, fullgraph=True): no graph breaks, no
recompiles once the cache is full, and the same video as eager."""

import pytest
import torch

import headforcing
from headforcing.cache.policy import PRESETS, preset
from headforcing.models.specs import TOY

BOUNDED = [p for p in PRESETS if preset(p).bounded]
PROMPTS = ("a red circle bounces on a green background", "a blue square bounces on a red background",
           "a white triangle and a yellow circle bounce on a black background")


def run(policy, chunks, backend=None, model="toy", switches=None, blend=0, **options):
    """`chunks` chunks of a session (compiled with `backend` unless None); prompt switches {chunk: prompt}."""
    pipe = headforcing.load(model)
    if backend:
        pipe.compile(backend=backend)
    session = pipe.session(PROMPTS[0], policy=policy, seed=5, blend_chunks=blend, **options)
    made = []
    for index in range(chunks):
        if index in (switches or {}):
            session.set_prompt(PROMPTS[switches[index]])
        made.append(session.step())
    return made, session


@pytest.mark.parametrize("policy", BOUNDED)
def test_no_recompiles_over_36_or_120_chunks(policy):
    """Dynamo traces the whole DiT with the head-wise processors (fullgraph=True raises on any graph break):
    one graph for the denoising steps, one for the commit pass, reused for every chunk after the warm-up,
    across prompt switches (one blended) and, for headforcing, the episodic memory's replacements and merges
    (headforcing-coarse: and frames pooled into the coarse level).
    The "eager" backend traces and guards exactly as inductor does, without generating code."""
    # 120 chunks where an archive fills slowly (every 4th frame of 48: 68 chunks) and wraps; 36 for the others
    # (108 frames: five trained windows, every switch after the warm-up)
    retrieval = any(r.retrieval for r in preset(policy).roles.values())
    chunks = 120 if retrieval else 36
    switches = {40: 1, 80: 2, 100: 0} if retrieval else {14: 1, 24: 2, 30: 0}
    _, session = run(policy, chunks, backend="eager", switches=switches, blend=3 if policy == "longlive" else 0, decode=False)
    warmup = preset(policy).warmup_chunks(TOY.chunk_frames, TOY.trained_frames)
    assert session.stats()["compile"] == dict(mode="default", eager_chunks=warmup, compiled_chunks=chunks - warmup,
                                              graphs=session.stats()["compile"]["graphs"], recompiles=0)
    assert session.stats()["compile"]["graphs"] <= 2  # 0 when an earlier test already compiled these shapes
    if any(r.episodic for r in preset(policy).roles.values()):
        counts = session.stats()["episodic"]
        assert counts["replace"] > 0 and counts["merge"] > 0, counts
    if policy == "headforcing-coarse":  # replaced frames reached the coarse level while compiled
        assert all((s.memory.pooled_frames < 2**62).sum() > 0 for s in session.cache.stores() if s.n_coarse)


def test_graphs_are_counted():
    """The counter the test above relies on sees compilations: a fresh model and shape compile 2 graphs."""
    _, session = run("self-forcing", 9, backend="eager", decode=False, size=(48, 32))
    assert session.stats()["compile"] == dict(mode="default", eager_chunks=6, compiled_chunks=3, graphs=2, recompiles=0)


def assert_close(eager, compiled, first_compiled):
    """The first compiled chunk within float32 rounding of eager (1e-5); after it the rollout feeds each chunk's
    tiny differences into the next (measured: about x2 per chunk, so 1e-5 becomes ~3e-3 after 8 chunks and ~4e-2
    after 13, as forcing-kv's measured head map showed), so the 8 chunks after it within 2e-2 and their 8-bit
    frames within 3 levels (2e-2 is 2.5 levels, plus rounding)."""
    first = first_compiled
    assert (eager[first].latents - compiled[first].latents).abs().max().item() < 1e-5
    for a, b in list(zip(eager, compiled))[: first + 9]:
        assert (a.latents - b.latents).abs().max().item() < 2e-2
        assert (a.frames.int() - b.frames.int()).abs().max().item() <= 3


# (memflow and pyramid-forcing are made of segments the others cover -- Retrieved in headforcing-retrieval -- and
# take a minute each to compile here; their graphs are traced whole without recompiles in the test above)
@pytest.mark.parametrize("policy", [p for p in PRESETS if p not in ("memflow", "pyramid-forcing")])
def test_compiled_video_equals_eager(policy):
    """inductor-compiled chunks give the eager video within float tolerance (above), for every preset, across a
    prompt switch and (headforcing) the episodic memory's replacements, with the same episodic decisions."""
    chunks = 7 if policy == "full" else 16
    switches = {4: 1} if policy == "full" else {10: 1}
    eager, eager_session = run(policy, chunks, switches=switches)
    compiled, session = run(policy, chunks, backend="inductor", switches=switches)
    warmup = preset(policy).warmup_chunks(TOY.chunk_frames, TOY.trained_frames)
    assert session.stats()["episodic"] == eager_session.stats()["episodic"]
    if policy == "full":  # valid only inside the window: it never reaches a steady chunk
        assert session.stats()["compile"]["compiled_chunks"] == 0
        assert all(torch.equal(a.latents, b.latents) for a, b in zip(eager, compiled))
        return
    assert session.stats()["compile"]["compiled_chunks"] == chunks - warmup
    assert_close(eager, compiled, warmup)
    if any(r.episodic for r in preset(policy).roles.values()):  # (headforcing-coarse: replaced frames pooled too)
        assert session.stats()["episodic"]["replace"] > 0


def test_compiled_wan_shape_equals_eager():
    """The tiny Wan-shaped model (VAE decoding, re-noising solver), headforcing, across a prompt switch."""
    eager, _ = run("headforcing", 9, model="tiny", switches={7: 1}, size=(32, 32))
    compiled, session = run("headforcing", 9, backend="inductor", model="tiny", switches={7: 1}, size=(32, 32))
    assert session.stats()["compile"]["compiled_chunks"] == 3
    assert_close(eager, compiled, 6)


@pytest.mark.parametrize("policy", BOUNDED)
def test_steady_chunks_never_wait_for_the_device(policy, monkeypatch):
    """After the warm-up, a chunk (its forwards, the commit, the episodic memory's decisions and tallies) and a
    prompt switch read nothing back from the device: every way a tensor's value reaches Python raises here.
    On a GPU each of these would be a host sync, and CUDA-graph replay would stall on it."""
    _, session = run(policy, preset(policy).warmup_chunks(TOY.chunk_frames, TOY.trained_frames), decode=False)

    def forbidden(self, *args, **kwargs):
        raise AssertionError("a tensor's value was read on the host during a steady chunk")

    with monkeypatch.context() as patch:
        for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__"):
            patch.setattr(torch.Tensor, name, forbidden)
        for index in range(12):
            if index == 5:
                session.set_prompt(PROMPTS[1])
            session.step()
    counts = session.stats()["episodic"]  # read after: the tallies were kept on the device
    if policy == "headforcing":
        assert counts["replace"] + counts["merge"] > 0


def test_generate_compile_flag_makes_the_eager_video(tmp_path, capsys):
    """`generate --compile`: the summary counts compiled chunks and recompiles, and the (lossless) video equals
    the eager one within 1 level."""
    from headforcing.cli import main
    from headforcing.utils.video import read_clip

    args = ["generate", "--prompt", PROMPTS[0], "--seconds", "8", "--policy", "longlive", "--crf", "0", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "eager.mp4")]) == 0
    assert main(args + ["--compile", "--out", str(tmp_path / "compiled.mp4")]) == 0
    assert "compiled 8 of 11 chunks (0 recompiles)" in capsys.readouterr().out
    eager, _ = read_clip(str(tmp_path / "eager.mp4"))
    compiled, _ = read_clip(str(tmp_path / "compiled.mp4"))
    assert eager.shape == compiled.shape == (33, 32, 32, 3)
    assert abs(eager.astype(int) - compiled.astype(int)).max() <= 1
    with pytest.raises(SystemExit) as refused:  # argparse's one line
        main(args + ["--compile", "fastest", "--out", str(tmp_path / "x.mp4")])
    assert refused.value.code == 2 and not (tmp_path / "x.mp4").exists()


def test_compile_flag_on_serve_and_bench():
    from headforcing.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["serve", "--compile"]).compile == "default"
    assert parser.parse_args(["serve", "--compile", "reduce-overhead"]).compile == "reduce-overhead"
    assert parser.parse_args(["bench", "--compile", "max-autotune"]).compile == "max-autotune"
    assert parser.parse_args(["serve"]).compile is None
