"""`headforcing eval` on synthetic videos made here, and the learned-metric formulas on tiny random networks."""

import json

import numpy as np
import pytest
import torch

from headforcing.cli import main
from headforcing.evaluation.metrics import analyse
from headforcing.evaluation.learned import (
    ClipImageEmbedder,
    aesthetic,
    clip_score,
    consistency,
    learned_metrics,
    load_aesthetic_head,
    load_embedders,
    split_clips,
)
from headforcing.utils.video import Mp4Writer

H, W, FPS = 64, 96, 16


def write(path, frames):
    with Mp4Writer(path, W, H, fps=FPS) as w:
        w.write(frames)
    return path


def texture(n, shift_per_frame=0.0, level=None):
    """A smooth texture [n, H, W, 3], translated by shift_per_frame px per frame; level: per-frame brightness."""
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    out = []
    for i in range(n):
        xs = x - shift_per_frame * i
        img = 128 + 50 * np.sin(xs / 6.0) * np.cos(y / 7.0)
        if level is not None:
            img = img - img.mean() + level[i]
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.repeat(np.stack(out)[..., None], 3, axis=-1)


def test_static_video(tmp_path):
    r = analyse(write(tmp_path / "s.mp4", texture(160)), 5.0)
    assert r["temporal_flickering"] == pytest.approx(1.0, abs=2e-3)
    assert r["dynamic_degree_proxy"] == 0.0
    assert r["motion_smoothness_proxy"] == pytest.approx(1.0, abs=2e-3)
    assert abs(r["gap"]["luma"]) < 2e-3 and r["gap"]["ssim_to_first"] > 0.99


def test_brightness_drift_has_the_right_sign_and_size(tmp_path):
    n = 20 * FPS
    level = np.linspace(60, 180, n)
    r = analyse(write(tmp_path / "d.mp4", texture(n, level=level)), 5.0)
    first, last = level[: 5 * FPS].mean(), level[-5 * FPS :].mean()
    expected = (last - first) / 255  # about +0.35
    assert r["gap"]["luma"] == pytest.approx(expected, abs=0.02)
    assert r["gap"]["psnr_to_first"] < 20 and len(r["segments"]) == 4
    darker = analyse(write(tmp_path / "d2.mp4", texture(n, level=level[::-1])), 5.0)
    assert darker["gap"]["luma"] == pytest.approx(-expected, abs=0.02)


def test_flickering_video(tmp_path):
    level = np.where(np.arange(96) % 2 == 0, 100.0, 150.0)
    r = analyse(write(tmp_path / "f.mp4", texture(96, level=level)), 2.0)
    assert r["temporal_flickering"] == pytest.approx((255 - 50) / 255, abs=0.02)
    assert r["temporal_flickering"] < 0.85


def test_moving_pattern_is_detected(tmp_path):
    moving = analyse(write(tmp_path / "m.mp4", texture(64, shift_per_frame=3.0)), 2.0)
    assert moving["dynamic_degree_proxy"] == 1.0
    assert np.mean([s["motion"] for s in moving["segments"]]) > moving["motion_threshold_px"]
    assert moving["motion_smoothness_proxy"] > 0.95  # constant motion is re-predicted well


def test_cli_outputs_and_plots(tmp_path, capsys):
    a = write(tmp_path / "a.mp4", texture(160))
    b = write(tmp_path / "b.mp4", texture(160, shift_per_frame=1.0))
    out = tmp_path / "report"
    assert main(["eval", str(a), str(b), "--segments", "2.5s", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["videos"]) == {"a.mp4", "b.mp4"} and len(metrics["videos"]["a.mp4"]["segments"]) == 4
    rows = (out / "segments.csv").read_text().splitlines()
    assert rows[0].startswith("video,segment,start_s,end_s,luma") and len(rows) == 1 + 8
    import matplotlib.image

    for metric in metrics["segment_metrics"]:
        image = matplotlib.image.imread(out / f"plot_{metric}.png")
        assert image.ndim == 3 and image.shape[0] > 100
    assert "learned-model metrics skipped" in capsys.readouterr().out


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: p.write_bytes(b"this is not a video"), "is not a readable video"),
        (lambda p: write(p, texture(20)), "fewer than one 5 s segment"),
    ],
)
def test_bad_videos(setup, message, tmp_path, capsys):
    video = tmp_path / "v.mp4"
    setup(video)
    assert main(["eval", str(video), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_timeline_longer_than_the_video(tmp_path, capsys):
    video = write(tmp_path / "v.mp4", texture(96))
    timeline = tmp_path / "t.jsonl"
    timeline.write_text('{"start": 0, "prompt": "a"}\n{"start": 9, "prompt": "b"}\n')
    assert main(["eval", str(video), "--segments", "2s", "--prompt-timeline", str(timeline), "--out", str(tmp_path / "o")]) == 2
    assert "runs past the end" in capsys.readouterr().err and not (tmp_path / "o").exists()


# ---- learned metrics: formulas on tiny random networks with the real interfaces ---------------------------
def test_consistency_formula():
    f = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    # i=1: prev 1, first 1 -> 1; i=2: prev 0, first 0 -> 0; i=3: prev 0 (cos 0), first max(0, -1) = 0 -> 0
    assert consistency(f) == pytest.approx(1 / 3)
    assert consistency(torch.ones(5, 4)) == pytest.approx(1.0)


def test_clip_splitting():
    clips = split_clips(100, 16, 2.0)  # 32-frame clips: 0-31, 32-63, 64-95, and 96-99 (4 < 16) dropped
    assert [(c.start, c.stop) for c in clips] == [(0, 32), (32, 64), (64, 96)]
    assert [(c.start, c.stop) for c in split_clips(50, 16, 2.0)] == [(0, 32), (32, 50)]


class TinyClip(torch.nn.Module):
    """The interface of an OpenAI CLIP TorchScript model, with random weights."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 8, stride=8)
        self.text = torch.nn.Embedding(100, 8)

    @torch.jit.export
    def encode_image(self, x):
        return self.conv(x).mean((2, 3))

    @torch.jit.export
    def encode_text(self, ids):
        return self.text(ids).mean(1)

    def forward(self, x):
        return self.encode_image(x)


def test_learned_metrics_with_tiny_networks(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "ViT-B-32.pt"
    torch.jit.save(torch.jit.script(TinyClip()), str(path))
    embed = ClipImageEmbedder.load(path)
    head_path = tmp_path / "head.pth"
    torch.save({"weight": torch.randn(1, 8), "bias": torch.zeros(1)}, head_path)
    head = load_aesthetic_head(head_path)
    static = texture(40)
    moving = texture(40, shift_per_frame=4.0)
    text = lambda prompt: torch.randn(1, 8, generator=torch.Generator().manual_seed(len(prompt)))  # noqa: E731
    segments = [dict(start_s=0.0, end_s=2.5, prompt="a"), dict(start_s=2.5, end_s=5.0, prompt="bb")]
    embedders = {"background": embed, "subject": embed, "aesthetic": (embed, head)}
    r_static = learned_metrics(static, 8.0, embedders, 2.0, segments, text)
    r_moving = learned_metrics(moving, 8.0, embedders, 2.0, segments, text)
    assert r_static["background_consistency"] == pytest.approx(1.0, abs=1e-6)
    assert r_moving["background_consistency"] < r_static["background_consistency"]
    assert len(r_static["subject_consistency_per_clip"]) == 3 and "VBench-Long" in r_static["clip_rule"]
    feats_moving = embed(moving)
    assert r_moving["background_consistency_clip2clip"] == pytest.approx(consistency(feats_moving[[0, 16, 32]]))
    feats = embed(static)
    assert r_static["aesthetic_quality"] == pytest.approx(aesthetic(feats, head))
    frames_a = [round(j) for j in np.linspace(0, 19, 8)]
    assert r_static["clip_score_per_segment"][0]["clip_score"] == pytest.approx(clip_score(feats[frames_a], text("a")))


def test_missing_weights_are_skipped_with_notes(tmp_path):
    embedders, text_embed, notes = load_embedders(tmp_path)
    assert embedders == {} and text_embed is None
    assert any("subject consistency skipped" in n for n in notes) and any("aesthetic quality skipped" in n for n in notes)


def test_plot_ranges_keep_small_changes_small():
    """A luma change 0.4458 -> 0.4445 is under 3% of the plot's height; a 0 -> 1 change fills most of it."""
    from headforcing.evaluation.report import y_range

    lo, hi = y_range([0.4458, 0.4445])
    assert (0.4458 - 0.4445) / (hi - lo) < 0.03 and lo < 0.4445 < 0.4458 < hi
    lo, hi = y_range([0.0, 1.0])
    assert 1.0 / (hi - lo) > 0.8
    assert y_range([float("nan")]) == (0.0, 1.0)
