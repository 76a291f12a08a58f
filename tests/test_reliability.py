"""Interruptions (SIGINT, SIGTERM, a second signal, a signal at start-up), resuming from the command line,
a full disk, and one line with exit 2 for every bad input."""

import json
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from headforcing.cli import main

SCENE = ["--prompt", "a red circle bounces on a green background@0", "--prompt", "a blue square bounces on a green background@20"]
RUN = ["generate", *SCENE, "--seconds", "40", "--crf", "0"]  # 162 frames of the toy model; lossless, to compare frames


def yuv_frames(path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="yuv420p") for f in container.decode(video=0)]


class Run:
    """`headforcing ARGS` in a subprocess, its stderr read as it comes (the progress bar shows frames made)."""

    def __init__(self, args, cwd, **kw):
        self.proc = subprocess.Popen([sys.executable, "-m", "headforcing.cli", *args], cwd=cwd, stderr=subprocess.PIPE,
                                     stdout=subprocess.PIPE, **kw)
        self.err = b""
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for chunk in iter(lambda: self.proc.stderr.read1(4096), b""):
            self.err += chunk

    def frames_made(self) -> int:
        counts = re.findall(rb"(\d+)/\d+ \[", self.err)
        return int(counts[-1]) if counts else 0

    def wait_for(self, frames: int, stall: float = 900) -> None:
        """Until `frames` are made: waits on progress, failing only if the run ends or makes nothing for `stall` s."""
        made, last = -1, time.time()
        while (now := self.frames_made()) < frames:
            if now != made:
                made, last = now, time.time()
            assert self.proc.poll() is None and time.time() - last < stall, self.err[-500:]
            time.sleep(0.05)

    def catches(self, signum: int) -> bool:
        """Has the process installed its handler for `signum` yet (Linux: /proc/PID/status, SigCgt)?"""
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return False
        mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
        return bool(mask >> (signum - 1) & 1)

    def finish(self, timeout: float = 900) -> tuple[int, str]:
        code = self.proc.wait(timeout)
        self.reader.join(5)
        return code, self.err.decode(errors="replace").split("\r")[-1].strip()


def test_sigint_closes_the_video_saves_the_state_and_resume_equals_the_uninterrupted_run(tmp_path):
    assert main([*RUN, "--out", str(tmp_path / "ref.mp4"), "--quiet"]) == 0
    run = Run([*RUN, "--out", "part.mp4"], tmp_path)
    run.wait_for(30)
    run.proc.send_signal(signal.SIGINT)
    code, last = run.finish()
    assert code == 130 and "Traceback" not in last
    assert last.splitlines()[-1].startswith("headforcing: interrupted: part.mp4 holds the ")
    assert "headforcing generate --resume part.state.safetensors --out FULL.mp4" in last
    made = len(yuv_frames(tmp_path / "part.mp4"))  # the mp4 plays, with every frame of the chunks finished
    assert made >= 30 and made % 3 == 0 and f"holds the {made} frames" in last
    assert not list(tmp_path.glob(".partial-*"))
    assert main(["generate", "--resume", str(tmp_path / "part.state.safetensors"), "--out", str(tmp_path / "full.mp4"), "--quiet"]) == 0
    full, ref = yuv_frames(tmp_path / "full.mp4"), yuv_frames(tmp_path / "ref.mp4")
    assert len(full) == len(ref) == 162 and all(np.array_equal(a, b) for a, b in zip(full, ref))
    assert json.loads((tmp_path / "full.timeline.json").read_text()) == json.loads((tmp_path / "ref.timeline.json").read_text())


def test_sigterm_the_same_with_143(tmp_path):
    run = Run([*RUN, "--out", "part.mp4"], tmp_path)
    run.wait_for(12)
    run.proc.send_signal(signal.SIGTERM)
    code, last = run.finish()
    assert code == 143 and "resume with" in last and (tmp_path / "part.state.safetensors").is_file()
    assert len(yuv_frames(tmp_path / "part.mp4")) >= 12


def test_a_second_signal_stops_at_once(tmp_path):
    run = Run(["generate", "--prompt", "a red circle bounces on a green background", "--seconds", "600", "--out", "v.mp4"], tmp_path)
    run.wait_for(6)
    run.proc.send_signal(signal.SIGINT)
    run.proc.send_signal(signal.SIGINT)
    code, last = run.finish()
    assert code == 130 and "Traceback" not in last and "interrupted" in last
    assert not list(tmp_path.glob(".partial-*"))


def test_a_signal_during_start_up_is_one_line_and_no_file(tmp_path):
    run = Run(["generate", "--prompt", "a red circle", "--seconds", "60", "--out", "v.mp4"], tmp_path)
    while not run.catches(signal.SIGTERM):  # the CLI's handler is in: what follows is start-up (torch, the model)
        assert run.proc.poll() is None, run.err[-500:]
        time.sleep(0.002)
    run.proc.send_signal(signal.SIGTERM)
    code, last = run.finish()
    assert code == 143 and last == "headforcing: interrupted", last
    assert list(tmp_path.iterdir()) == []


def test_a_signal_the_moment_the_handler_is_in_is_one_line(monkeypatch, capsys):
    """The first thing after the handler goes in can be interrupted too (here: the signal lands in the first
    call that follows it): still the one line and 143, no traceback."""
    from types import SimpleNamespace

    from headforcing import cli
    from headforcing.utils import signals

    def interrupted(name=None):
        raise signals.Interrupted(signal.SIGTERM)

    monkeypatch.setattr(cli, "logging", SimpleNamespace(getLogger=interrupted, ERROR=40))  # the CLI's only
    assert main(["generate", "--prompt", "a red circle", "--latents-only"]) == 143
    assert capsys.readouterr().err.strip() == "headforcing: interrupted"


def test_resume_refuses_what_contradicts_the_state(tmp_path, capsys):
    run = Run([*RUN, "--out", "part.mp4", "--seed", "4"], tmp_path)
    run.wait_for(6)
    run.proc.send_signal(signal.SIGINT)
    assert run.finish()[0] == 130
    state = str(tmp_path / "part.state.safetensors")
    cases = [(["--seed", "5"], "--seed 5 contradicts the resumed run's 4"), (["--policy", "longlive"], "--policy 'longlive' contradicts"),
             (["--seconds", "10"], "--seconds 10.0 contradicts"), (["--prompt", "a cat"], "--prompt 'a cat' contradicts")]
    for extra, message in cases:
        assert main(["generate", "--resume", state, "--out", str(tmp_path / "x.mp4"), *extra]) == 2
        assert message in capsys.readouterr().err
    assert main(["generate", "--resume", state, "--out", str(tmp_path / "part.mp4")]) == 2
    assert "is the first part itself" in capsys.readouterr().err
    (tmp_path / "part.mp4").rename(tmp_path / "moved.mp4")
    assert main(["generate", "--resume", state, "--out", str(tmp_path / "x.mp4")]) == 2
    assert "first part" in capsys.readouterr().err and not (tmp_path / "x.mp4").exists()


def test_a_state_names_its_first_part_by_content_and_its_metadata_by_checksum(tmp_path, capsys):
    """Another video in the first part's place, an edited prompt in the state, flags a new run refuses, and a
    state left beside an --out that a later run re-uses: each refused in one line, or removed."""
    import shutil

    from safetensors import safe_open
    from safetensors.torch import save_file

    from headforcing.utils.video import Mp4Writer

    run = Run([*RUN, "--out", "part.mp4"], tmp_path)
    run.wait_for(6)
    run.proc.send_signal(signal.SIGINT)
    assert run.finish()[0] == 130
    state, full = tmp_path / "part.state.safetensors", str(tmp_path / "full.mp4")
    for extra, message in ((["--crf", "99"], "--crf must be 0..51"), (["--trace", str(tmp_path / "t.jsonl")], "--trace does not go")):
        assert main(["generate", "--resume", str(state), "--out", full, *extra]) == 2
        assert message in capsys.readouterr().err
    with safe_open(str(state), "pt") as f:
        meta, tensors = json.loads(f.metadata()["headforcing"]), {k: f.get_tensor(k) for k in f.keys()}
    meta["prompt"] = "a blue circle bounces on a white background"
    save_file(tensors, str(tmp_path / "edited.state.safetensors"), metadata={"headforcing": json.dumps(meta)})
    assert main(["generate", "--resume", str(tmp_path / "edited.state.safetensors"), "--out", full]) == 2
    assert "corrupted or edited" in capsys.readouterr().err
    frames = [f for f in yuv_frames(tmp_path / "part.mp4")]
    shutil.copy(state, tmp_path / "kept.state.safetensors")
    with Mp4Writer(tmp_path / "part.mp4", 32, 32, 4, crf=30) as w:  # the same number of frames, other content
        w.write(np.zeros((len(frames), 32, 32, 3), np.uint8))
    assert main(["generate", "--resume", str(tmp_path / "kept.state.safetensors"), "--out", full]) == 2
    assert "is not the video this state was saved with" in capsys.readouterr().err and not Path(full).exists()
    assert main(["generate", "--prompt", "a red circle", "--seconds", "2", "--out", str(tmp_path / "part.mp4"), "--quiet"]) == 0
    assert not state.exists()  # a new run re-using --out removes the stale state beside it


def test_a_state_that_cannot_be_written_keeps_the_mp4_and_says_so(tmp_path):
    """Ctrl-C under a 1 MB file-size limit: the mp4 (KBs) is kept and plays, the state (MBs) cannot be written:
    one line, exit 130, no half-written file."""
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20))  # noqa: E731
    run = Run([*RUN, "--out", "part.mp4"], tmp_path, preexec_fn=limit)
    run.wait_for(6)
    run.proc.send_signal(signal.SIGINT)
    code, last = run.finish()
    assert code == 130 and "Traceback" not in last, last
    assert last.splitlines()[-1].startswith("headforcing: interrupted: part.mp4 holds the ") and "could not be written" in last
    assert len(yuv_frames(tmp_path / "part.mp4")) >= 6
    assert [p.name for p in tmp_path.iterdir()] == ["part.mp4"]


def test_resume_of_a_state_not_saved_by_generate(tmp_path, capsys):
    import headforcing

    session = headforcing.load("toy").session("a red circle bounces on a green background")
    session.step()
    session.save(str(tmp_path / "s.state.safetensors"))
    assert main(["generate", "--resume", str(tmp_path / "s.state.safetensors"), "--out", str(tmp_path / "x.mp4")]) == 2
    assert "not saved by `headforcing generate`" in capsys.readouterr().err


def limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))


def test_a_full_disk_is_one_line_and_no_half_file(tmp_path):
    """`ulimit -f` stands in for a full disk: writes past it fail (EFBIG)."""
    run = Run(["generate", "--prompt", "a red circle bounces on a green background", "--seconds", "60", "--out", "v.mp4", "--quiet"],
              tmp_path, preexec_fn=limit_file_size)
    code, last = run.finish()
    assert code == 1 and last.startswith("headforcing: error: the disk is full (File too large)") and "removed" in last
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("model", ["toy", "tiny"])
def test_bfloat16_on_a_cpu(model, tmp_path):
    out = tmp_path / "v.mp4"
    assert main(["generate", "--model", model, "--prompt", "a red circle", "--seconds", "2", "--dtype", "bfloat16",
                 "--out", str(out), "--quiet"]) == 0
    assert len(yuv_frames(out)) == (9 if model == "toy" else 33)


BAD = [
    (["--size", "100000x100000"], "larger than 4096x4096"),
    (["--seed", "99999999999999999999999"], "--seed must be an integer in 0..2**63-1"),
    (["--seed", "-1"], "--seed must be an integer in 0..2**63-1"),
    (["--device", "cuda"], "not available on this machine"),
    (["--device", "cuda:1"], "not available on this machine"),
    (["--device", "mps"], "not supported"),
    (["--device", "gpu0"], "unknown device"),
    (["--trace", "/nonexistent/t.jsonl"], "--trace folder /nonexistent does not exist"),
    (["--trace", "/tmp"], "--trace /tmp is a directory"),
    (["--trace", "/dev/full"], "--trace /dev/full is not a regular file"),
    (["--seconds", "1e308"], "--seconds must be at most 1e+07"),
    (["--threads", "0"], "--threads must be 1..1024"),
    (["--toy-weights", "RANDOM"], "is not a toy-world checkpoint"),
    (["--timeline", "BINARY"], "is not UTF-8 text"),
    (["--prompt", "a cat@-1"], "the time after '@' must be seconds >= 0, got '-1'"),
    (["--prompt", "a cat@0", "--prompt", "a dog@1x"], "got '1x'"),
    (["--latents-only"], "--latents-only writes nothing"),
    (["--crf", "60"], "--crf must be 0..51"),
    (["--init-video", "BINARY"], "is not a readable video"),
    (["--init-image", "BINARY"], "is not a readable image"),
    (["--init-video", "CLIP16"], "is 16 fps; the model makes 4 fps video"),
    (["--policy", "headforcing-coarse", "--size", "36x36"], "a Coarse segment pools 2x2 tokens; this token grid is 9x9"),
    (["--init-image", "BIGIMAGE"], "is 5000x4000, larger than 4096x4096"),
]


@pytest.mark.parametrize("extra,message", BAD)
def test_bad_input_is_one_line_exit_2_and_no_file(extra, message, tmp_path, capsys):
    (tmp_path / "random.bin").write_bytes(os.urandom(300))
    (tmp_path / "binary.bin").write_bytes(b"\xff\xfe\x00\x81" * 50)
    if "CLIP16" in extra:
        from headforcing.utils.video import Mp4Writer

        with Mp4Writer(tmp_path / "clip16.mp4", 32, 32, 16) as w:
            w.write(np.zeros((9, 32, 32, 3), np.uint8))
    if "BIGIMAGE" in extra:  # refused by its header: nothing of it is decoded
        from PIL import Image

        Image.new("RGB", (5000, 4000)).save(tmp_path / "big.png")
    names = {"RANDOM": "random.bin", "BINARY": "binary.bin", "CLIP16": "clip16.mp4", "BIGIMAGE": "big.png"}
    extra = [str(tmp_path / names[x]) if x in names else x for x in extra]
    prompt = [] if "--prompt" in extra or "--timeline" in extra else ["--prompt", "a red circle"]
    before = set(tmp_path.iterdir())
    assert main(["generate", *prompt, *extra, "--out", str(tmp_path / "v.mp4"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert set(tmp_path.iterdir()) == before


def test_inspect_a_state_dict_without_the_keys_it_probes(tmp_path, capsys):
    torch.save({"patch_embedding.weight": torch.zeros(2, 2)}, tmp_path / "half.pt")
    assert main(["inspect", str(tmp_path / "half.pt")]) == 1
    assert "lacks what it needs" in capsys.readouterr().out


def test_help_and_version_without_torch():
    """`--help` answers before torch is imported (under a second); `--version` exists."""
    code = ("import sys; from headforcing.cli import build_parser; build_parser().format_help(); "
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "ok"
    done = subprocess.run([sys.executable, "-m", "headforcing.cli", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and re.fullmatch(r"headforcing \d+\.\d+\.\d+\n", done.stdout)


def test_a_reused_out_drops_a_timeline_that_does_not_describe_it(tmp_path):
    out = tmp_path / "v.mp4"
    assert main(["generate", *SCENE, "--seconds", "21", "--out", str(out), "--quiet"]) == 0
    assert out.with_suffix(".timeline.json").is_file()
    assert main(["generate", "--prompt", "a red circle", "--seconds", "2", "--out", str(out), "--quiet"]) == 0
    assert not out.with_suffix(".timeline.json").exists()


def test_outputs_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "v.mp4"
        assert main(["generate", "--prompt", "a red circle", "--seconds", "6", "--out", str(out), "--quiet"]) == 0
        assert main(["eval", str(out), "--out", str(tmp_path / "report")]) == 0
        import headforcing

        session = headforcing.load("toy").session("a red circle")
        session.save(str(tmp_path / "s.state.safetensors"))
    finally:
        os.umask(old)
    files = [out, tmp_path / "report" / "metrics.json", tmp_path / "report" / "segments.csv", tmp_path / "s.state.safetensors"]
    assert all(f.stat().st_mode & 0o777 == 0o644 for f in files), [oct(f.stat().st_mode) for f in files]


def test_inspect_knows_the_files_the_project_writes(tmp_path, capsys):
    """The shipped toy weights, a `toyworld train` checkpoint and a session state are each named and loadable."""
    from headforcing.engine.pipeline import load
    from headforcing.models.toy import weights_path

    session = load("toy").session("a red circle bounces on a green background", policy="longlive")
    session.step()
    session.save(str(tmp_path / "s.state.safetensors"))
    for path, says in ((weights_path(None), "a toy-world model checkpoint (139 tensors, 4600 training steps"),
                       (weights_path("memory"), "a toy-world model checkpoint"),
                       (tmp_path / "s.state.safetensors", "a headforcing session state (model toy, policy longlive, 1 chunks")):
        assert main(["inspect", str(path)]) == 0
        out = capsys.readouterr().out
        assert says in out and out.endswith("loadable: yes\n"), out
    broken = tmp_path / "broken.state.safetensors"
    broken.write_bytes((tmp_path / "s.state.safetensors").read_bytes()[:-64])
    assert main(["inspect", str(broken)]) == 1
    assert "loadable: no" in capsys.readouterr().out


def test_a_run_that_cannot_fit_is_refused_naming_a_size_that_would(tmp_path, capsys, monkeypatch):
    """Checked before anything is allocated, against the memory the machine says is free (here: 1 GiB)."""
    import re as regex

    import torch

    from headforcing.models.specs import TOY
    from headforcing.tools import estimate

    monkeypatch.setattr(estimate, "available_bytes", lambda device: 2**30)
    assert main(["generate", "--prompt", "a red circle", "--size", "2048x1024", "--seconds", "1", "--out", str(tmp_path / "v.mp4")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "1.0 GiB are free" in err, err
    width, height = (int(x) for x in regex.search(r"; (\d+)x(\d+) would fit", err).groups())
    assert width / height == pytest.approx(2, rel=0.1)
    assert estimate.run_bytes(TOY, "headforcing", (width, height), torch.float32) <= 2**30
    assert estimate.run_bytes(TOY, "headforcing", (width + 8, height + 4), torch.float32) > 2**30 * 0.8
    assert list(tmp_path.iterdir()) == []


TWO_SIGNALS_IN_ONE_OPERATION = """
import os, signal, sys, threading, time
import torch
from headforcing.utils import signals
signals.install()
a = torch.randn(3000, 3000)
started = threading.Event()
def send_two():
    started.wait()
    time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGINT)
threading.Thread(target=send_two, daemon=True).start()
with signals.deferred() as stop:
    started.set()
    try:
        a = torch.linalg.matrix_power(a, 40)  # one long C call (seconds): Python's handler runs once, after it
        print("asked to stop once" if stop else "no signal")
    except signals.Interrupted as e:
        print(e.message)
"""

SIGNAL_IN_A_FINALIZER = """
import os, signal, sys
from headforcing.utils import signals
class Library:
    def __del__(self):  # a finalizer that runs during start-up, when the signal lands
        os.kill(os.getpid(), signal.SIGTERM)
signals.install()
Library()  # collected at once: the signal arrives inside __del__, where a raise would be lost
print("start-up done", flush=True)
try:
    with signals.deferred():
        print("the run began: the signal was lost")
except signals.Interrupted as e:
    print(e.message, e.code)
"""


def test_two_signals_inside_one_long_operation_stop_at_once():
    """Two SIGINTs 50 ms apart while one long stretch of C code runs: Python calls the handler once, but the
    wakeup pipe counted two deliveries, so the run stops at once instead of after the chunk."""
    out = subprocess.run([sys.executable, "-c", TWO_SIGNALS_IN_ONE_OPERATION], capture_output=True, text=True, timeout=600)
    assert out.stdout.strip() == "interrupted again: stopped at once", out.stdout + out.stderr


def test_a_signal_inside_a_finalizer_at_start_up_is_not_lost():
    out = subprocess.run([sys.executable, "-c", SIGNAL_IN_A_FINALIZER], capture_output=True, text=True, timeout=600)
    assert out.stdout.split("\n")[:2] == ["start-up done", "interrupted 143"], out.stdout + out.stderr
    assert out.stderr == ""  # nothing printed as "Exception ignored in __del__"


SAME_FRAMES_LOSSY = """
import hashlib, sys
import numpy as np
import torch
from headforcing.utils.video import Mp4Writer
frames = np.load(sys.argv[1])
with Mp4Writer(sys.argv[2], frames.shape[2], frames.shape[1], 4, 18) as mp4:
    for i in range(0, len(frames), 3):  # chunk by chunk with the model's work between, as generate writes
        mp4.write(frames[i : i + 3])
        torch.randn(200, 200) @ torch.randn(200, 200)
print(hashlib.sha256(open(sys.argv[2], "rb").read()).hexdigest())
"""


def test_lossy_mp4_of_the_same_frames_is_the_same_file_in_every_process(tmp_path):
    """The default --crf 18 output is reproducible: the same frames (a toy-world video, 2x upscaled) encoded in
    separate processes give the same bytes (with x264's mb-tree, scripts/x264_repeat.py gave 9 files in 10 runs)."""
    import numpy as np

    import headforcing

    session = headforcing.load("toy").session("a red circle and a blue square bounce on a green background")
    frames = np.concatenate([session.step().frames[0].numpy() for _ in range(30)]).repeat(2, 1).repeat(2, 2)
    np.save(tmp_path / "frames.npy", frames)
    digests = {subprocess.run([sys.executable, "-c", SAME_FRAMES_LOSSY, str(tmp_path / "frames.npy"), str(tmp_path / f"{i}.mp4")],
                              capture_output=True, text=True, timeout=600, check=True).stdout.strip() for i in range(6)}
    assert len(digests) == 1
