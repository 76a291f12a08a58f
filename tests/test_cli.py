"""The command line: end to end on the tiny model, and one-line errors with exit code 2 on bad input."""

import json
import subprocess
import sys

import pytest
import torch

from headforcing.cli import main
from headforcing.models.specs import WAN_1_3B
from headforcing.engine.timeline import latent_frames_for
from headforcing.utils.video import count_frames


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "headforcing.cli", *args], capture_output=True, text=True, timeout=600)


def test_generate_20_seconds_end_to_end(tmp_path):
    """Far past the 21-frame window (81 latent frames); the 60 s run is docs/GENERATE.md's, timed there."""
    out = tmp_path / "long.mp4"
    proc = run_cli("generate", "--model", "tiny", "--prompt", "a red ball", "--seconds", "20", "--policy", "headforcing", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    n = latent_frames_for(20, 16, 3)
    assert n == 81 and count_frames(out) == WAN_1_3B.video_frames(n) == 321
    summary = proc.stdout.strip().splitlines()[-1]
    assert summary.startswith("frames 321 (81 latent), duration 20.06 s") and "FPS" in summary and "cache" in summary
    assert "frame/s" in proc.stderr  # the progress bar
    assert [p.name for p in tmp_path.iterdir()] == ["long.mp4"]


def test_three_prompt_30_second_timeline(tmp_path):
    out = tmp_path / "story.mp4"
    proc = run_cli("generate", "--model", "tiny", "--prompt", "a red ball@0", "--prompt", "the ball turns blue@10", "--prompt",
                   "a green cube@20", "--seconds", "30", "--out", str(out), "--trace", str(tmp_path / "trace.jsonl"))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["story.mp4", "story.timeline.json", "trace.jsonl"]
    applied = json.loads((tmp_path / "story.timeline.json").read_text())
    assert [c["prompt"] for c in applied] == ["a red ball", "the ball turns blue", "a green cube"]
    for cue in applied:  # the first chunk boundary at or after the requested time
        assert cue["start_seconds"] >= cue["requested_start"] and cue["start_seconds"] - 12 / 16 < cue["requested_start"]
    assert [c["chunk"] for c in applied] == [0, 14, 27]
    assert count_frames(out) == 489
    trace = [json.loads(line) for line in (tmp_path / "trace.jsonl").read_text().splitlines()]
    assert {t["layer"] for t in trace} == {0, 1, 2} and sum(t["admitted"] + t["merged"] + t["replaced"] for t in trace) > 0


def test_same_seed_same_video_other_seed_differs(tmp_path):
    """Compared losslessly (--crf 0): equal bytes then mean equal frames (the lossy output is reproducible too
    since mbtree=0, test_reliability.py)."""
    paths = [tmp_path / f"{i}.mp4" for i in range(3)]
    for path, seed in zip(paths, (1, 1, 2)):
        assert main(["generate", "--model", "tiny", "--prompt", "x", "--seconds", "0.5", "--seed", str(seed), "--crf", "0",
                     "--out", str(path), "--quiet"]) == 0
    data = [p.read_bytes() for p in paths]
    assert data[0] == data[1] != data[2]


def test_latents_only_run(capsys):
    assert main(["generate", "--model", "tiny", "--prompt", "x", "--seconds", "1", "--latents-only", "--quiet", "--policy", "longlive"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("frames 6 (6 latent)")


def exit_code(args) -> int:
    """main's exit code, including argparse's own exits."""
    try:
        return main(args)
    except SystemExit as e:
        return e.code


def bad_headmap(tmp_path, roles):
    path = tmp_path / "heads.json"
    path.write_text(json.dumps({"roles": roles}))
    return str(path)


BAD = {
    "unknown preset": (["--policy", "nope"], "unknown policy 'nope'"),
    "zero seconds": (["--seconds", "0"], "--seconds must be a positive number"),
    "negative seconds": (["--seconds", "-3"], "--seconds must be a positive number"),
    "size": (["--size", "100x64"], "multiples of 16"),
    "toy size": (["--size", "30x32", "--model", "toy"], "multiples of 4"),
    "size syntax": (["--size", "big"], "size must be WIDTHxHEIGHT"),
    "full too long": (["--policy", "full", "--seconds", "20"], "valid only inside the trained window"),
    "empty prompt": (["--prompt", " "], "--prompt is empty"),
    "timeline order": (["--prompt", "b@0", "--prompt", "c@0.5", "--prompt", "d@0.2"], "prompt starts must increase"),
    "timeline past end": (["--prompt", "b@0", "--prompt", "c@9"], "past the end of the 1.31 s video"),
    "timeline empty prompt": (["--prompt", "b@0", "--prompt", "@0.5"], "is empty"),
    "timeline late start": (["--prompt", "b@0.3"], "must start at 0 s"),
    "same chunk": (["--prompt", "b@0", "--prompt", "c@0.5", "--prompt", "d@0.55"], "fall in the same chunk"),
    "auto on one role": (["--policy", "longlive", "--heads", "auto"], "needs a policy with several roles"),
    "bad rule": (["--heads", "auto", "--rule", "anchor=sink:top200%,memory=rest"], "must be in (0%, 100%]"),
    "context noise": (["--context-noise", "1000"], "--context-noise must be a timestep in 0..999"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_one_line_exit_2_no_file(case, tmp_path, capsys):
    extra, message = BAD[case]
    out = tmp_path / "v.mp4"
    args = ["generate", "--model", "tiny", "--seconds", "1", "--out", str(out), "--quiet"]
    if "--prompt" not in extra:
        args += ["--prompt", "x"]
    assert exit_code(args + extra) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "roles, message",
    [
        ([["local"] * 4] * 2, "HeadMap is 2 layers"),
        ([["local"] * 3] * 3, "the model has 3 layers x 4 heads"),
        ([["local", "anchor", "memory", "boss"]] * 3, "unknown role(s) ['boss']"),
        ("not a list", "HeadMap JSON needs 'roles'"),
    ],
)
def test_malformed_headmap(roles, message, tmp_path, capsys):
    heads = bad_headmap(tmp_path, roles)
    out = tmp_path / "v.mp4"
    assert main(["generate", "--model", "tiny", "--prompt", "x", "--seconds", "1", "--heads", heads, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not out.exists()


def test_unwritable_output(tmp_path, capsys):
    missing = tmp_path / "no" / "such" / "dir" / "v.mp4"
    assert main(["generate", "--prompt", "x", "--seconds", "1", "--out", str(missing), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["generate", "--prompt", "x", "--seconds", "1", "--out", "/sys/v.mp4", "--quiet"]) == 2
    assert "not writable" in capsys.readouterr().err  # /sys refuses new files, even to root


def test_conformance_on_a_non_recording(tmp_path, capsys):
    path = tmp_path / "x.pt"
    path.write_bytes(b"not a torch file")
    assert main(["conformance", str(path)]) == 2
    assert "cannot be read as a plain dict of tensors" in capsys.readouterr().err


def test_set_prompt_between_chunks_equals_a_timeline(tmp_path):
    """A timeline given to `generate` applies its switch through the session's set_prompt: the latents match a
    session stepped by hand with the switch at the planned chunk (and differ from one without it)."""
    import headforcing
    from headforcing.engine.timeline import Cue
    from headforcing.runs.checks import plan
    from headforcing.runs.generate import Request

    work = plan(Request(model="tiny", prompt=[Cue(0, "a red ball"), Cue(1.0, "a blue cube")], seconds=4, latent_frames=12))
    applied = work.timeline[1]["chunk"]
    pipe = headforcing.load("tiny", decode=False)
    session = pipe.session("a red ball", decode=False)
    out = []
    for index in range(4):
        if index == applied:
            session.set_prompt("a blue cube")
        out.append(session.step().latents)
    assert session.history == [dict(chunk=0, frame=0, prompt="a red ball"), dict(chunk=applied, frame=3 * applied, prompt="a blue cube")]
    plain = pipe.session("a red ball", decode=False)
    plain = [plain.step().latents for _ in range(4)]
    assert not torch.equal(plain[-1], out[-1]) and torch.equal(plain[0], out[0])
    trace = tmp_path / "t.jsonl"
    assert main(["generate", "--model", "tiny", "--prompt", "a red ball@0", "--prompt", "a blue cube@1", "--seconds", "2.5",
                 "--latents-only", "--quiet", "--policy", "self-forcing", "--trace", str(trace)]) == 0


def test_generate_with_eval(tmp_path):
    out = tmp_path / "v.mp4"
    assert main(["generate", "--model", "tiny", "--prompt", "x", "--seconds", "6", "--out", str(out), "--eval", "--quiet"]) == 0
    metrics = json.loads((tmp_path / "v.eval" / "metrics.json").read_text())
    report = metrics["videos"]["v.mp4"]
    assert report["frames"] == count_frames(out) and 0 < report["temporal_flickering"] <= 1
    assert len(report["segments"]) == 1  # 6.06 s: one 5 s segment, the 1 s stub dropped


@pytest.mark.parametrize("command", [[], ["generate"], ["profile"], ["eval"], ["bench"], ["toyworld", "train"],
                                     ["toyworld", "eval"], ["conformance"], ["inspect"], ["serve"]])
def test_every_command_explains_itself(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0 and "usage: headforcing" in capsys.readouterr().out


def test_the_timeline_counts_a_continued_images_frames(tmp_path, monkeypatch):
    """After an --init-image, on a model whose VAE makes 4 video frames per latent frame (the first only 1), the
    timeline written beside the mp4 says a switch starts at the frame where its chunk's frames begin in the file,
    counted at the writer (the first generated chunk decodes to 4 frames per latent frame, not 4N-3)."""
    import cv2
    import numpy as np

    from headforcing.engine.pipeline import load
    from headforcing.engine.timeline import Cue
    from headforcing.runs.generate import Request, generate
    from headforcing.utils.video import Mp4Writer

    cv2.imwrite(str(tmp_path / "first.png"), np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    written = []  # frames in the file before each write: the image's, then each chunk's
    real_write = Mp4Writer.write

    def write(self, frames):
        written.append(self.frames)
        return real_write(self, frames)

    monkeypatch.setattr(Mp4Writer, "write", write)
    request = Request(prompt=[Cue(0.0, "a red circle"), Cue(1.2, "a blue square")], seconds=2.0, model="tiny",
                      policy="self-forcing", out=str(tmp_path / "a.mp4"), init_image=str(tmp_path / "first.png"))
    summary = generate(load("tiny"), request)
    switch = summary.timeline[1]
    assert written[0] == 0 and written[1] == 1  # the image, then the first chunk after its one frame
    assert switch["start_frame"] == written[1 + switch["chunk"]] and switch["start_seconds"] == switch["start_frame"] / 16
    assert json.loads((tmp_path / "a.timeline.json").read_text()) == summary.timeline
