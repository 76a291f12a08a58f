"""Every code block of the README runs as written (in a fresh folder), except those listed with the reason."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# shell lines not run here, and why
NOT_RUN = {
    "pip install": "the install itself: CI runs it before the tests",
    "python -m pytest": "the test command itself",
    "headforcing serve": "a server does not end: tests/test_server.py drives it in a subprocess",
}


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def shell_lines() -> list[str]:
    lines = [line.split("  #")[0].strip() for block in blocks("bash") for line in block.splitlines()]
    return [line for line in lines if line and not any(line.startswith(skip) for skip in NOT_RUN)]


def test_the_readme_has_the_blocks_a_new_user_needs():
    assert shell_lines() and blocks("python")
    assert any(line.startswith("headforcing generate") for line in shell_lines())


@pytest.mark.parametrize("line", shell_lines())
def test_readme_shell_lines_run(line, tmp_path):
    args = line.split()
    assert args[0] == "headforcing", line
    words = re.findall(r'"[^"]*"|\S+', line)
    argv = [w.strip('"') for w in words[1:]]
    done = subprocess.run([sys.executable, "-m", "headforcing", *argv], cwd=tmp_path, capture_output=True, text=True,
                          timeout=1200)
    assert done.returncode == 0, done.stderr[-2000:]
    if "--out" in argv:
        assert (tmp_path / argv[argv.index("--out") + 1]).stat().st_size > 0


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_readme_python_blocks_run(index, tmp_path):
    done = subprocess.run([sys.executable, "-c", blocks("python")[index]], cwd=tmp_path, capture_output=True, text=True,
                          timeout=1200)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "chunks" in done.stdout and (tmp_path / "s.state.safetensors").exists()
    from headforcing.utils.video import count_frames

    assert count_frames(tmp_path / "s.mp4") == 120  # 40 chunks of 3 frames
