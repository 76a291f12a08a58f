"""The toy world's memory suite: scenes whose captions leave colours unsaid, objects that leave and return,
and a benchmark that only a video that remembers can pass (checked on the world's own frames, a forgetful
video and a memoryless one)."""

import numpy as np
import pytest

from headforcing.cli import main
from headforcing.models.specs import TOY
from headforcing.toyworld.eval import CHANCE, measure_memory, memory_summary, run_memory
from headforcing.toyworld.memory import BACKGROUND, GAPS, KEEPER, LATE, RETURNER, MemoryScene, apply, script, training_clip
from headforcing.toyworld.train import make_batch
from headforcing.models.toy import build_word_encoder
from headforcing.toyworld.world import PALETTE, decode_state


def test_script_covers_every_absence_at_300_s_and_the_short_ones_at_60_s():
    returns = [(i, t) for t, i, a in script(300) if a == "return"]
    assert len(returns) == 8
    scene = MemoryScene.for_seed(0, 300)
    assert sorted(e["gap"] for e in scene.returns()) == sorted(GAPS * 2)
    assert {e["gap"] for e in MemoryScene.for_seed(0, 60).returns()} == {5.0, 15.0}
    assert all(f % TOY.chunk_frames == 0 for f, _, _ in scene.events)  # prompt switches fall on chunk starts


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_absent_objects_are_never_drawn_and_return_with_the_colour_they_left_with(seed):
    scene = MemoryScene.for_seed(seed, 60)
    frames = list(scene.frames(240))
    colours = [{o["colour"] for o in decode_state(f)["objects"]} for f in frames]
    things = scene.world.things
    events = {(i, a): f for f, i, a in scene.events}
    late_colour, returner_colour = things[LATE].colour, things[RETURNER].colour
    assert all(late_colour not in c for c in colours[: events[(LATE, "enter")]])  # not there before it enters
    present = lambda colour, part: np.mean([colour in c for c in part]) > 0.7  # noqa: E731 (objects may overlap)
    assert present(late_colour, colours[events[(LATE, "enter")] : events[(LATE, "leave")]])
    for e in scene.returns():
        who = returner_colour if e["who"] == "from_start" else late_colour
        assert e["colour"] == who
        assert all(who not in c for c in colours[e["leave"] : e["back"]])  # gone while away
        assert present(who, colours[e["back"] : e["back"] + 8])  # back, in the colour it left with
    assert present(things[KEEPER].colour, colours)


def test_captions_leave_the_colours_unsaid():
    cues = MemoryScene.for_seed(4, 60).cues()
    world = MemoryScene.for_seed(4, 60).world
    named = [{w for w in text.split() if w in PALETTE} for _, text in cues]
    assert world.things[KEEPER].colour not in set().union(*named)
    window = TOY.trained_frames
    assert (window, BACKGROUND, "unsay") in MemoryScene.for_seed(4, 60).events  # a prompt switch at the window's end
    assert all((world.background in n) == (f < window) for (f, _), n in zip(cues, named))  # said in window 1 only
    assert all(text.endswith("on a background") for f, text in cues if f >= window)
    first_leave = min(f for f, i, a in MemoryScene.for_seed(4, 60).events if (i, a) == (RETURNER, "leave"))
    assert all((world.things[RETURNER].colour in n) == (f < first_leave) for (f, _), n in zip(cues, named))  # until it leaves
    assert all(f"a {world.things[RETURNER].shape}" in text for f, text in cues if f in {e["back"] for e in
               MemoryScene.for_seed(4, 60).returns() if e["who"] == "from_start"})


def test_the_worlds_own_frames_score_perfectly():
    runs = [run_memory(None, "truth", [300], seed)[0][300] for seed in (0, 1)]
    summary = memory_summary(runs)
    assert summary["identity_persistence"]["background"]["mean"] == 1.0
    assert summary["identity_persistence"]["object_colour"]["mean"] == 1.0
    for gap in GAPS:
        for who in ("from_start", "late"):
            entry = summary["recall"][f"{gap:g}"][who]
            assert entry == dict(recall=1.0, scored=2, events=2, true_colour=1.0)
    assert summary["captioned"]["mean"] == 1.0 and summary["chance"] == CHANCE


def frames_with_returns_recoloured(scene: MemoryScene, n: int, rng, who=RETURNER, random_colours=False):
    """The scene's frames, but the object `who` comes back in another colour (a video that forgot it)."""
    world, pending = scene.copy_world(), list(scene.events)
    keeper = world.things[KEEPER].colour
    for f in range(n):
        while pending and pending[0][0] == f:
            _, index, action = pending.pop(0)
            apply(world, index, action)
            if index == who and action == "return":
                taken = {world.background, keeper} | {t.colour for t in world.things if t.visible and t is not world.things[who]}
                free = sorted(c for c in PALETTE if c not in taken)
                old = world.things[who].colour
                world.things[who].colour = str(rng.choice(free)) if random_colours else next(c for c in free if c != old)
        yield world.render()
        world.step()


def test_a_forgetful_video_misses_every_return_it_recoloured():
    scene = MemoryScene.for_seed(3, 300)
    n = 300 * TOY.fps
    result, _ = measure_memory(frames_with_returns_recoloured(scene, n, np.random.default_rng(0)), scene, scene.cues())
    by_who = {who: [r["hit"] for r in result["recalls"] if r["who"] == who] for who in ("from_start", "late")}
    assert by_who["from_start"] == [False] * 4 and by_who["late"] == [True] * 4


def test_a_memoryless_video_scores_near_chance():
    """Returning objects in a random free colour (what a cache that kept nothing of them would give at best):
    recall near the chance level the report prints."""
    rng = np.random.default_rng(1)
    hits = []
    for seed in range(40):
        scene = MemoryScene.for_seed(seed, 60)
        result, _ = measure_memory(frames_with_returns_recoloured(scene, 240, rng, random_colours=True), scene, scene.cues())
        hits += [r["hit"] for r in result["recalls"] if r["who"] == "from_start" and r["hit"] is not None]
    assert len(hits) == 80
    assert abs(np.mean(hits) - CHANCE) < 0.1


def test_training_clips_hold_memory_cases_inside_the_window():
    rng = np.random.default_rng(7)
    cases = [training_clip(rng, 21, 32) for _ in range(40)]
    returns = [(clip, cues, focus) for clip, cues, focus in cases if len(cues) == 3]
    unsaid = [(clip, cues, focus) for clip, cues, focus in cases if len(cues) == 2]
    assert 10 <= len(returns) <= 30 and 4 <= len(unsaid) <= 18
    assert all(focus == 1 for _, cues, focus in cases if len(cues) == 1)
    for clip, ((_, before), (frame, after)), focus in unsaid:  # a colour stops being said, its object stays
        assert frame == focus * 3 and 0 < frame < 21
        gone = set(before.split()) - set(after.split())
        assert len(gone) == 1 and before.split().count(next(iter(gone))) == 1  # exactly one colour word
        (colour,) = gone
        seen = [colour in {o["colour"] for o in decode_state(f)["objects"]} for f in clip]
        assert np.mean(seen[:frame]) > 0.5 and np.mean(seen[frame:]) > 0.5
    for clip, cues, focus in returns:
        (_, first), (leave, gone), (back, again) = cues
        assert leave % 3 == 0 and back % 3 == 0 and 0 < leave < back < 21
        assert focus * 3 == back  # copying is needed where the object returns
        assert len(gone.split()) < len(first.split()) and len(again.split()) >= len(gone.split())
    words = build_word_encoder()
    _, _, (ids, lengths), mask = make_batch(11, 8, 0, words, 32, memory_share=1.0)
    assert ids.shape == (24, words.text_len)
    assert (mask[:, 0].sum(-1) == words.text_len).all()  # every token sees exactly one caption


def test_memory_suite_cli_on_truth(tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["toyworld", "eval", "--suite", "memory", "--policies", "truth", "--seconds", "60", "--seeds", "2",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| truth | 60 s | 1.00 ± 0.00 / 1.00 ± 0.00 | 1.00 (2) / 1.00 (2) | 1.00 (2) / 1.00 (2) | 1.00 |" in text
    assert (out / "memory.json").exists() and (out / "memory_frames_60s.png").exists()
    assert main(["toyworld", "eval", "--suite", "memory", "--change-at", "3", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_a_model_session_follows_the_scenes_captions():
    """The model's video is made under the scene's captions, each from the frame of its event."""
    import headforcing
    from headforcing.toyworld.eval import memory_video

    pipe = headforcing.load("toy")
    sessions, open_session = [], pipe.session
    pipe.session = lambda *args, **kwargs: sessions.append(open_session(*args, **kwargs)) or sessions[-1]
    scene = MemoryScene.for_seed(5, 20)
    frames, cues = memory_video(pipe, "self-forcing", 20, 5, scene, None, {})
    assert sum(1 for _ in frames) == 81 and len(cues) == 5  # start, background unsaid, leave, enter, return
    assert [(h["frame"], h["prompt"]) for h in sessions[0].history] == cues


def test_tuning_takes_each_knob_to_its_best_value_in_one_pass():
    """Coordinate search on a known score: maximised in one pass, each settings scored once; a knob's best is
    judged with the earlier knobs already at theirs; a tie keeps the value the knob had."""
    from headforcing.toyworld.tune import coordinate_search

    knobs = {"a": (0, 1, 2), "b": ("x", "y"), "c": (5, 6)}
    calls = []

    def score(s):
        calls.append(s)
        return -abs(s["a"] - 2) + (s["b"] == "y") + (s["a"] == 2 and s["c"] == 6)  # c only pays once a is 2

    best, trials = coordinate_search(score, knobs, dict(a=0, b="x", c=5))
    assert best == dict(a=2, b="y", c=6)
    assert len(calls) == len(trials) == len({tuple(sorted(c.items())) for c in calls}) == 3 + 1 + 1
    best, _ = coordinate_search(lambda s: 0.0, knobs, dict(a=1, b="y", c=6))
    assert best == dict(a=1, b="y", c=6)  # all equal: nothing changes
    best, _ = coordinate_search(lambda s: float(s["a"] != 1), knobs, dict(a=1, b="y", c=6))
    assert best == dict(a=0, b="y", c=6)  # 0 and 2 tie above the start: the first of them


def test_the_tuning_score_is_far_recall_keeper_and_background(monkeypatch):
    """measure(): the score is the mean of recall past the window (returns after 15 s or more, scorable ones
    only), the keeper's and the background's identity persistence; with no scorable far return, of the two
    identities."""
    from headforcing.toyworld import tune

    runs = {300: dict(identity=dict(background=0.5, object_colour=0.25), captioned=1.0, recalls=[
                dict(who="from_start", gap=5.0, hit=True, truth=True), dict(who="late", gap=15.0, hit=True, truth=True),
                dict(who="late", gap=30.0, hit=False, truth=False), dict(who="from_start", gap=60.0, hit=None, truth=False)]),
            301: dict(identity=dict(background=1.0, object_colour=0.75), captioned=1.0, recalls=[])}
    monkeypatch.setattr(tune, "run_memory", lambda pipe, policy, durations, seed, sampling: ({durations[0]: runs[seed]}, {}))
    result = tune.measure(None, tune.DEFAULTS, 60.0, range(300, 302))
    assert (result["recall_far"], result["scored_far"], result["keeper"], result["background"]) == (0.5, 2, 0.5, 0.75)
    assert result["score"] == pytest.approx((0.5 + 0.5 + 0.75) / 3)
    runs[300]["recalls"] = runs[300]["recalls"][:1]
    assert tune.measure(None, tune.DEFAULTS, 60.0, range(300, 302))["score"] == pytest.approx((0.5 + 0.75) / 2)


def test_the_packaged_memory_weights_copy_an_unsaid_colour_from_context():
    """Teacher-forced on the world's own frames, the background's colour unsaid: `--toy-weights memory`
    predicts the background of a chunk from pure noise in its true colour when 3 exact chunks before it show
    it, and not without them; the shipped weights, which read colours from the caption only, do not."""
    from headforcing.models.toy import checkpoint_info, load_toy
    from headforcing.toyworld.copying import TOKENS, teacher_forced
    from headforcing.toyworld.train import for_training

    def right(weights, context_chunks):
        model, words = load_toy(weights)
        holder = for_training(model, 3 * TOKENS)
        return np.mean(sum((teacher_forced(model, words, holder, s, "background", context_chunks, 50.0)
                            for s in range(400, 408)), []))

    assert right("memory", 3) >= 0.9 and right("memory", 0) <= 0.3
    assert right(None, 3) <= 0.3
    assert checkpoint_info("memory")["memory_share"] > 0


def test_on_the_memory_checkpoint_a_cache_without_memory_forgets_what_a_sink_keeps(monkeypatch):
    """The suite needs memory: on `--toy-weights memory` (a model that copies from its context), a 3-frame window
    (no sink, nothing older) keeps window 1's background in fewer later windows than `longlive` (a sink of the
    first frames in every head), on the same seeds, and recalls no returning object in its colour; the sink
    keeps the never-said keeper colour in most later windows."""
    import headforcing
    import headforcing.engine.session as session_module
    from headforcing.cache.policy import window_policy

    presets = session_module.preset
    monkeypatch.setattr(session_module, "preset", lambda name, chunk=3, window=21:
                        window_policy(name, 6, 0, chunk) if name == "window-3" else presets(name, chunk, window))
    pipe = headforcing.load("toy", toy_weights="memory")
    summary, hits = {}, {}
    for policy in ("window-3", "longlive"):
        runs = [run_memory(pipe, policy, [45], seed)[0][45] for seed in range(108, 112)]
        summary[policy] = memory_summary(runs)["identity_persistence"]
        hits[policy] = [r["hit"] for run in runs for r in run["recalls"] if r["hit"] is not None]
    assert summary["window-3"]["background"]["mean"] + 0.15 < summary["longlive"]["background"]["mean"]
    assert hits["window-3"] and not any(hits["window-3"])
    assert summary["longlive"]["object_colour"]["mean"] > 0.5
