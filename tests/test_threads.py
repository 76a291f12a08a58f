"""CPU thread counts: the model's recorded count capped by the free cores; the user's choice always wins."""

import subprocess
import sys

import pytest
import torch

from headforcing.utils import threads


@pytest.fixture
def fresh(monkeypatch):
    """No user choice recorded, no OMP_NUM_THREADS; torch's count restored after."""
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "_chosen", None)
    monkeypatch.setattr(threads, "_at_import", torch.get_num_threads())
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("free, expected", [(2.0, 2), (1.05, 1), (0.2, 1), (7.6, 2), (None, 2)])
def test_the_recorded_count_capped_by_the_free_cores(fresh, monkeypatch, free, expected):
    monkeypatch.setattr(threads, "free_cores", lambda wait=0.0: free)
    assert threads.fit("toy", "cpu") == expected == torch.get_num_threads()


def test_a_count_set_by_the_user_is_kept(fresh, monkeypatch):
    monkeypatch.setattr(threads, "free_cores", lambda wait=0.0: 8.0)
    torch.set_num_threads(3)  # after importing headforcing: the user's
    assert threads.fit("toy", "cpu") == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(threads._at_import)
    assert threads.fit("toy", "cpu") == threads._at_import


def test_an_unmeasured_shape_and_a_gpu_keep_torchs_default(fresh, monkeypatch):
    monkeypatch.setattr(threads, "free_cores", lambda wait=0.0: 1.0)
    now = torch.get_num_threads()
    assert threads.fit("wan2.1-1.3b", "cpu") == now and threads.fit("toy", "cuda") == now


def test_free_cores_sees_another_process_spinning():
    """A child spinning on one core shows as one core less free (our own CPU time is not counted)."""
    import os

    if not os.path.exists("/proc/stat"):
        pytest.skip("needs Linux's /proc/stat")
    spin = subprocess.Popen([sys.executable, "-c", "while 1: pass"])
    try:
        busy = threads.free_cores(wait=0.5)
    finally:
        spin.kill()
        spin.wait()
    assert busy is not None and busy <= os.cpu_count() - 0.7


def test_threads_flag_and_environment_reach_the_run(tmp_path):
    code = ("import sys, torch; from headforcing.cli import main; "
            "main(sys.argv[1:]); print('THREADS', torch.get_num_threads())")
    args = ["generate", "--prompt", "a red circle", "--seconds", "1", "--quiet", "--out", str(tmp_path / "v.mp4")]
    flag = subprocess.run([sys.executable, "-c", code, *args, "--threads", "3"], capture_output=True, text=True, timeout=300)
    assert "THREADS 3" in flag.stdout, flag.stderr
    env = dict(__import__("os").environ, OMP_NUM_THREADS="1")
    told = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300)
    assert "THREADS 1" in told.stdout, told.stderr
