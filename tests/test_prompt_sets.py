"""Prompt sets under torchrun (gloo on CPU): every entry exactly once, reruns resume, sharded eval merges."""

import json
import subprocess
import sys

import av
import numpy as np

from headforcing.runs.prompt_sets import entry_seed, read_entries
from headforcing.cli import main

PROMPTS = [f"a {c} circle bounces on a {b} background" for c, b in
           (("red", "green"), ("blue", "white"), ("yellow", "black"), ("white", "blue"), ("green", "red"))]


def torchrun(*args, cwd):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "headforcing", *args]
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def frames(path):
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="yuv420p") for f in container.decode(video=0)]


def manifest(folder):
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


def test_two_ranks_make_every_entry_once_and_a_rerun_makes_nothing(tmp_path):
    (tmp_path / "p.txt").write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "set"
    torchrun("generate", "--prompts", "p.txt", "--out-dir", "set", "--seconds", "2", "--crf", "0", "--quiet", cwd=tmp_path)
    records = manifest(out)
    assert sorted(r["id"] for r in records) == ["00001", "00002", "00003", "00004", "00005"]  # 5 over 2 ranks: none dropped
    assert all(r["status"] == "done" and r["frames"] == 9 for r in records) and {r["rank"] for r in records} == {0, 1}
    assert sorted(p.name for p in out.glob("*.mp4")) == [f"0000{i}.mp4" for i in range(1, 6)]
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")}
    again = torchrun("generate", "--prompts", "p.txt", "--out-dir", "set", "--seconds", "2", "--crf", "0", "--quiet", cwd=tmp_path)
    assert "0 made, " in again.stdout and len(manifest(out)) == 5
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")} == stamps
    # the same line made by one process: the same video (seeds come from the id, not the rank)
    assert main(["generate", "--prompts", str(tmp_path / "p.txt"), "--out-dir", str(tmp_path / "one"), "--seconds", "2",
                 "--crf", "0", "--quiet"]) == 0  # lossless: x264's lossy output may differ run to run
    assert all(np.array_equal(a, b) for a, b in zip(frames(out / "00003.mp4"), frames(tmp_path / "one" / "00003.mp4")))
    assert [r["seed"] for r in records if r["id"] == "00003"] == [entry_seed(0, "00003")]
    # eval over the folder, sharded: the merged report equals one process's
    torchrun("eval", str(out), "--out", "report2", "--segments", "1s", cwd=tmp_path)
    assert main(["eval", str(out), "--out", str(tmp_path / "report1"), "--segments", "1s"]) == 0
    merged, single = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("report2", "report1"))
    assert merged == single and len(merged["videos"]) == 5
    assert not (tmp_path / "report2" / ".parts").exists()


def test_bad_lines_are_recorded_and_the_rest_made(tmp_path, capsys):
    lines = [PROMPTS[0], '{"prompt": "%s", "seed": 7, "id": "seven"}' % PROMPTS[1], '{"bogus": 1}', "{not json",
             '{"timeline": [{"start": 0, "prompt": "%s"}, {"start": 1, "prompt": "%s"}]}' % (PROMPTS[2], PROMPTS[3]),
             '{"prompt": "%s", "id": "seven"}' % PROMPTS[4], '{"timeline": [{"start": 0, "prompt": "x"}, {"start": 99, "prompt": "y"}]}']
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "set"
    assert main(["generate", "--prompts", str(tmp_path / "p.jsonl"), "--out-dir", str(out), "--seconds", "2", "--quiet"]) == 0
    by_line = {r["line"]: r for r in manifest(out)}
    assert [by_line[n]["status"] for n in (1, 2, 5)] == ["done"] * 3 and by_line[2]["id"] == "seven" and by_line[2]["seed"] == 7
    assert by_line[3]["error"].startswith("line 3: needs") and by_line[4]["error"] == "line 4: not a JSON object"
    assert "used by an earlier line" in by_line[6]["error"] and "past the end" in by_line[7]["error"]
    assert sum(r["status"] == "failed" for r in manifest(out)) == 4  # + the repeated id "seven" on line 6
    assert (out / "00005.timeline.json").is_file() and not (out / "00003.mp4").exists()
    assert "3 made, 0 already done, 4 failed" in capsys.readouterr().out


def test_policies_folders_and_an_unfinished_video_is_redone(tmp_path, capsys):
    (tmp_path / "p.txt").write_text("\n".join(PROMPTS[:2]) + "\n")
    out = tmp_path / "set"
    args = ["generate", "--prompts", str(tmp_path / "p.txt"), "--out-dir", str(out), "--seconds", "2", "--quiet",
            "--policies", "self-forcing,headforcing"]
    assert main(args) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.mp4")) == [
        "headforcing/00001.mp4", "headforcing/00002.mp4", "self-forcing/00001.mp4", "self-forcing/00002.mp4"]
    # a video whose manifest line is missing (the run was killed before it was written) and one cut short
    kept = [r for r in manifest(out) if (r["policy"], r["id"]) != ("headforcing", "00002")]
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    (out / "self-forcing" / "00001.mp4").write_bytes(b"cut")
    capsys.readouterr()
    assert main(args) == 0
    assert "2 made, 2 already done, 0 failed" in capsys.readouterr().out
    assert main(["eval", str(out), "--out", str(tmp_path / "report"), "--segments", "1s"]) == 0
    table = json.loads((tmp_path / "report" / "metrics.json").read_text())["policies"]
    assert sorted(table) == ["headforcing", "self-forcing"] and table["headforcing"]["videos"] == 2


def test_prompt_set_flags_that_do_not_go_together(tmp_path, capsys):
    (tmp_path / "p.txt").write_text("x\n")
    for extra, message in ((["--out", "v.mp4"], "--out does not go with --prompts"), ([], "needs both --prompts FILE and --out-dir"),
                           (["--policy", "full", "--policies", "full"], "--policy or --policies")):
        args = ["generate", "--prompts", str(tmp_path / "p.txt"), *extra] + (["--out-dir", str(tmp_path / "d")] if extra else [])
        assert main(args) == 2 and message in capsys.readouterr().err
    assert read_entries(str(tmp_path / "p.txt"))[0].id == "00001"


def test_toyworld_eval_sharded_equals_one_process(tmp_path):
    args = ["toyworld", "eval", "--policies", "truth,self-forcing", "--seconds", "6", "--seeds", "3"]
    torchrun(*args, "--out", "two", cwd=tmp_path)
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    for name in ("toyworld.json", "frames_6s.png", "curves_6s.csv"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    assert not (tmp_path / "two" / ".parts").exists()
