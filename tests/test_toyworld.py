"""The procedural world: determinism, captions that match the state, and a state decoder that reads the
truth back from generated frames (so a benchmark built on it measures the model, not the decoder)."""

import numpy as np
import pytest

from headforcing.toyworld.world import PALETTE, decode_state, generate


def overlapping(objects):
    for i, a in enumerate(objects):
        for b in objects[i + 1 :]:
            if abs(a["x"] - b["x"]) < a["r"] + b["r"] + 1 and abs(a["y"] - b["y"]) < a["r"] + b["r"] + 1:
                return True
    return False


def test_same_seed_same_video_and_different_seeds_differ():
    a, sa, ca = generate(3, 30)
    b, sb, cb = generate(3, 30)
    c, _, _ = generate(4, 30)
    assert np.array_equal(a, b) and sa == sb and ca == cb
    assert not np.array_equal(a, c)
    assert a.shape == (30, 64, 64, 3) and a.dtype == np.uint8


def test_caption_matches_the_state():
    for seed in range(20):
        _, states, captions = generate(seed, 2)
        text = captions[0][1]
        state = states[0]
        assert text.endswith(f"on a {state['background']} background")
        for obj in state["objects"]:
            assert f"a {obj['colour']} {obj['shape']}" in text
        assert len({o["colour"] for o in state["objects"]} | {state["background"]}) == len(state["objects"]) + 1


def test_motion_is_constant_speed_with_bounces():
    _, states, _ = generate(7, 200, objects=1)
    xs = np.array([s["objects"][0]["x"] for s in states])
    ys = np.array([s["objects"][0]["y"] for s in states])
    speed = np.hypot(np.diff(xs), np.diff(ys))
    r = states[0]["objects"][0]["r"]
    assert xs.min() >= r - 1e-9 and xs.max() <= 63 - r + 1e-9  # stays inside
    assert np.median(speed) > 0 and np.mean(np.abs(speed - np.median(speed)) < 1e-6) > 0.8  # constant between bounces


def test_scene_change_caption_and_state():
    _, states, captions = generate(5, 40, change_at=24)
    assert captions[1][0] == 24
    before = {o["shape"]: o["colour"] for o in states[23]["objects"]}
    after = {o["shape"]: o["colour"] for o in states[24]["objects"]}
    changed = [shape for shape in before if before[shape] != after[shape]]
    assert len(changed) == 1  # one object, and only from the change frame on
    assert f"a {after[changed[0]]} {changed[0]}" in captions[1][1] and f"a {before[changed[0]]} {changed[0]}" in captions[0][1]
    assert all(f"a {c} {shape}" in captions[1][1] for shape, c in after.items())  # the new caption is the whole scene
    assert captions[1][1].endswith(f"on a {states[24]['background']} background")


@pytest.mark.parametrize("size", [64, 32])  # 32: the toy model's frames
def test_decoder_recovers_the_true_state(size):
    frames_checked = 0
    for seed in range(30):
        frames, states, _ = generate(seed, 24, size, occluder=seed % 3 == 0)
        for frame, state in zip(frames, states):
            decoded = decode_state(frame)
            assert decoded["background"] == state["background"]  # every frame
            truth = {o["colour"]: o for o in state["objects"]}
            found = {o["colour"]: o for o in decoded["objects"]}
            assert set(found) <= set(truth)  # never an object that is not there
            if overlapping(state["objects"]) or seed % 3 == 0:
                continue  # shapes touching each other or the grey bar: one may hide part of another
            frames_checked += 1
            assert set(found) == set(truth)
            for c, o in truth.items():
                assert found[c]["shape"] == o["shape"], (seed, c)
                assert abs(found[c]["x"] - o["x"]) <= 1.0 and abs(found[c]["y"] - o["y"]) <= 1.0
    assert frames_checked > 200


def test_decoder_snaps_noisy_colours():
    frames, states, _ = generate(11, 1, objects=2)
    noisy = np.clip(frames[0].astype(int) + np.random.default_rng(0).integers(-25, 26, frames[0].shape), 0, 255).astype(np.uint8)
    decoded = decode_state(noisy)
    assert decoded["background"] == states[0]["background"]
    assert {o["colour"] for o in decoded["objects"]} == {o["colour"] for o in states[0]["objects"]}
    assert set(PALETTE) >= {o["colour"] for o in decoded["objects"]}
