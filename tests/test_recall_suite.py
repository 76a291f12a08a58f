"""The recall suite (`toyworld eval --suite recall`): its scenes, its scoring, its statistics, its reference caches."""

import json
import subprocess
import sys

import numpy as np
import pytest

from headforcing.cli import main
from headforcing.models.toy import PALETTE
from headforcing.toyworld import recall as R
from headforcing.toyworld.world import decode_state


def test_scenes_have_many_returns_of_every_gap_for_objects_from_the_start_and_late_ones():
    counts = {}
    for seed in range(200, 204):
        scene = R.RecallScene.for_seed(seed, 600)
        for event in scene.returns(2400).values():
            counts[(event["gap"], event["who"])] = counts.get((event["gap"], event["who"]), 0) + 1
    assert set(counts) == {(g, w) for g in R.GAPS for w in ("from_start", "late")}
    assert min(counts.values()) >= 12  # >= 3 a seed a cell: 200 scored returns need ~70 seeds of 600 s at worst
    assert sum(counts.values()) / 4 >= 55


def test_late_entrants_come_after_the_first_window_and_colours_go_unsaid_after_the_first_leave():
    scene = R.RecallScene.for_seed(205, 200)
    first_leave = {}
    for frame, index, action in scene.events:
        if action == "enter":
            assert index in R.LATE and frame > 21
        first_leave.setdefault(index, frame if action == "leave" else None)
    returns, shown = scene.returns(800), []
    for f, (frame, caption) in enumerate(scene.play(800)):
        if f // 3 in returns and f % 3 == 0:
            event = returns[f // 3]
            assert event["colour"] not in caption  # the caption never says the returner's colour
            shown.append(event["colour"] in {o["colour"] for o in decode_state(frame)["objects"]})
    assert len(shown) >= 10 and np.mean(shown) >= 0.8  # (a returner may come back hidden behind another: not scored)
    absent = [o for o in range(6) if any(e[1] == o and e[2] == "leave" for e in scene.events)]
    assert sorted(absent) == list(range(6))


def test_the_worlds_own_frames_score_one_over_hundreds_of_returns():
    events = [e for seed in range(210, 214) for e in R.run(None, "truth", "teacher", seed, 600)]
    assert len(events) >= 200 and all(e["hit"] for e in events)


def test_a_cache_that_recolours_returns_scores_chance():
    """The returner painted in a colour drawn at random among those it could take: recall ~ the stated chance."""
    rng = np.random.default_rng(0)

    def recolour(truth, event, background):
        choice = str(rng.choice([c for c in PALETTE if c not in {background, *event["others"]}]))
        frames = truth.copy()
        frames[(frames == PALETTE[event["colour"]]).all(-1)] = PALETTE[choice]
        return frames

    events = []
    for seed in range(220, 224):
        background = R.RecallScene.for_seed(seed, 600).world.background
        events += R.run(None, "truth", "teacher", seed, 600, draw=lambda chunk, truth, event: recolour(truth, event, background))
    hits, chance = sum(e["hit"] for e in events), float(np.mean([e["chance"] for e in events]))
    low, high = R.wilson(hits, len(events))
    assert len(events) >= 200 and low <= chance <= high and hits < 0.35 * len(events)


def test_wilson_interval_against_published_values():
    """Wilson (1927) 95% intervals: 5 of 10 -> [0.2366, 0.7634]; 0 of 10 -> [0, 0.2775]; 10 of 10 -> [0.7225, 1]."""
    assert np.allclose(R.wilson(5, 10), (0.2366, 0.7634), atol=1e-4)
    assert np.allclose(R.wilson(0, 10), (0.0, 0.2775), atol=1e-4)
    assert np.allclose(R.wilson(10, 10), (0.7225, 1.0), atol=1e-4)
    assert all(np.isnan(R.wilson(0, 0)))


def test_teacher_forced_drawing_leaves_the_cache_as_feeding_the_truth_does():
    """`Session.step(truth)` draws a chunk but commits the truth: the cache after it equals a session fed the truth."""
    import torch

    from headforcing.engine.pipeline import load

    pipe = load("toy")
    scene = R.RecallScene.for_seed(230, 30)
    frames = np.stack([f for f, _ in scene.play(27)])
    caption = scene.world.caption()
    a, b = (pipe.session(caption, policy="headforcing", seed=1) for _ in range(2))
    for c in range(9):
        truth = pipe.encode_frames(frames[3 * c : 3 * c + 3])
        a.feed(truth)
        if c % 3 == 2:
            drawn = b.step(truth)
            assert drawn.latents.shape == truth.shape and not torch.equal(drawn.latents, truth)
        else:
            b.feed(truth)
    for sa, sb in zip(a.cache.stores(), b.cache.stores()):
        assert torch.equal(sa.k_raw if sa.k_raw is not None else sa.k_ctx, sb.k_raw if sb.k_raw is not None else sb.k_ctx)
        assert torch.equal(sa.v_ctx, sb.v_ctx)


def test_the_oracle_is_not_below_real_caches_and_a_window_is_not_above_chance_past_it():
    """On the same seeds (teacher-forced, the packaged memory model): the oracle's recall is not significantly
    below any real policy's, and the window, which cannot hold a frame 15 s back, is not significantly above chance."""
    from headforcing.engine.pipeline import load

    pipe = load("toy", toy_weights="memory")
    runs = {p: R.run(pipe, p, "teacher", 241, 180) for p in ("oracle", "window", "longlive")}
    oracle = sum(e["hit"] for e in runs["oracle"])
    for policy in ("window", "longlive"):
        hits = sum(e["hit"] for e in runs[policy])
        assert R.wilson(oracle, len(runs["oracle"]))[1] >= R.wilson(hits, len(runs[policy]))[0], policy
    far = [e for e in runs["window"] if e["gap"] >= 15]
    assert len(far) >= 8 and R.wilson(sum(e["hit"] for e in far), len(far))[0] <= np.mean([e["chance"] for e in far])


def test_recall_cli_writes_json_table_and_plot_and_two_ranks_match_one(tmp_path, capsys):
    args = ["toyworld", "eval", "--suite", "recall", "--policies", "truth", "--seconds", "120", "--seeds", "3", "--first-seed", "250"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    assert "| teacher | truth |" in capsys.readouterr().out
    report = json.loads((tmp_path / "one" / "recall.json").read_text())
    cell = report["results"][0]["recall"]["30"]["late"]
    assert set(cell) == {"value", "scored", "low", "high", "chance"} and cell["value"] == 1.0 and cell["scored"] > 0
    assert [r["mode"] for r in report["results"]] == ["teacher", "free"]
    assert (tmp_path / "one" / "recall.png").stat().st_size > 10_000 and (tmp_path / "one" / "recall.md").exists()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "headforcing", *args,
           "--out", str(tmp_path / "two")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "two" / "recall.json").read_bytes() == (tmp_path / "one" / "recall.json").read_bytes()


@pytest.mark.parametrize("argv, message", [
    (["--policies", "nope"], "unknown policy 'nope'"),
    (["--modes", "sideways"], "--modes takes teacher and/or free"),
    (["--seconds", "60,120"], "one duration"),
    (["--seconds", "10"], "30 s or more"),
    (["--seconds", "nan"], "--seconds must be positive"),
])
def test_bad_recall_arguments_are_one_line(argv, message, tmp_path, capsys):
    base = ["toyworld", "eval", "--suite", "recall", "--policies", "truth", "--seconds", "60", "--out", str(tmp_path / "r")]
    assert main(base + argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()
