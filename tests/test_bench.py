"""`headforcing bench`: the counted-FLOP model against PyTorch's FLOP counter, and the CPU smoke run."""

import json

import pytest
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from headforcing.tools.bench import bench, chunk_flops, forward_flops
from headforcing.cli import main
import headforcing


@pytest.mark.parametrize("policy", ["self-forcing", "headforcing"])
def test_flop_model_matches_pytorch_counter(policy):
    """FLOPs of chunk 4's five forwards, counted by PyTorch while they run vs our formula."""
    session = headforcing.load("tiny", decode=False).session("x", policy=policy, decode=False)
    for _ in range(4):
        session.step()
    predicted = chunk_flops(session)
    # the math backend runs attention as matmuls, which the counter sees (the fused CPU kernel it does not)
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        session.step()
    counted = counter.get_total_flops()
    # the counter also sees the patch embedding, time/text embeddings and output head, which the model omits
    assert predicted == pytest.approx(counted, rel=0.05)


def test_forward_flops_by_hand():
    cfg = dict(attention_head_dim=2, num_attention_heads=1, num_layers=1, ffn_dim=3)
    # d=2, s=1, text 1, one group of 1 head over 4 keys:
    # proj 4*2*1*2*2=32, attn 2*2*1*4*2*1=32, cross 2*2*1*4 + 2*2*1*4 + 2*2*1*1*2 = 40, ffn 2*2*1*2*3 = 24
    assert forward_flops(cfg, 1, 1, [(1, 4)]) == 32 + 32 + 40 + 24


def test_bench_cpu_smoke(tmp_path, capsys):
    assert main(["bench", "--policies", "self-forcing,headforcing", "--seconds", "1", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "bench.json").read_text())
    assert [r["policy"] for r in rows] == ["self-forcing", "headforcing"]
    for r in rows:
        assert r["frames"] == 21 and r["e2e_fps"] > 0 and r["dit_fps"] > r["e2e_fps"] and r["vae_fps"] > r["e2e_fps"]
        assert r["tflops"] > 0 and r["cache_bytes"] > 0 and r["device"] == "cpu" and r["model"] == "tiny"
    assert (tmp_path / "bench.md").read_text().startswith("| policy | compile | seconds |")
    assert "| headforcing | eager | 1 | 21 |" in capsys.readouterr().out


def test_one_session_gives_every_duration(tmp_path):
    """Rows for 1 s and 2 s come from one session: the 1 s row counts exactly the chunks a 1 s run makes."""
    rows = bench(headforcing.load("tiny"), ["self-forcing"], [1, 2])
    assert [(r["seconds"], r["frames"], r["latent_frames"]) for r in rows] == [(1, 21, 6), (2, 33, 9)]
    assert rows[0]["flops"] < rows[1]["flops"]


def test_gpu_report_script_runs_every_mode_and_keeps_failures(tmp_path, monkeypatch):
    """The GPU script's plumbing on the CPU (tiny model): a row per mode x duration with the compile counters,
    gpu.json / gpu.md written; a mode that fails becomes a row saying why and the next mode still runs."""
    from headforcing.engine.pipeline import Pipeline
    from headforcing.tools import bench as bench_module

    real_compile = Pipeline.compile

    def compile_or_fail(self, mode="default", backend="inductor"):
        if mode == "max-autotune":
            raise RuntimeError("no autotuning here\nsecond line")
        real_compile(self, mode, backend)

    monkeypatch.setattr(Pipeline, "compile", compile_or_fail)
    rows = bench_module.gpu_report(headforcing.load("tiny"), str(tmp_path), [5], ["self-forcing"], log=lambda line: None,
                                   modes=("eager", "max-autotune", "default"))
    assert [r["compile"] for r in rows] == ["eager", "max-autotune", "default"]
    assert rows[1]["error"] == "RuntimeError: no autotuning here"
    assert rows[0]["compiled_chunks"] == 0 and rows[2]["compiled_chunks"] == 1 and rows[2]["recompiles"] == 0
    assert json.loads((tmp_path / "gpu.json").read_text()) == json.loads(json.dumps(rows))
    assert "failed: RuntimeError: no autotuning here" in (tmp_path / "gpu.md").read_text()


def test_gpu_report_refused_without_a_gpu(tmp_path, capsys):
    assert main(["bench", "--gpu-report", str(tmp_path / "r")]) == 2
    assert "has none" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_gpu_report_skips_what_is_past_its_time_budget(tmp_path):
    from headforcing.tools.bench import gpu_report

    rows = gpu_report(headforcing.load("tiny"), str(tmp_path), [5], ["self-forcing", "headforcing"], log=lambda line: None, budget_s=0)
    assert len(rows) == 6 and all(r["error"] == "TimeoutError: skipped, past the 0 s budget" for r in rows)
