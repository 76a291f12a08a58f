"""`headforcing bench`: the counted-FLOP model against PyTorch's FLOP counter, and the CPU smoke run."""

import json

import pytest
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from headforcing.tools.bench import chunk_flops, forward_flops
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
    assert (tmp_path / "bench.md").read_text().startswith("| policy | seconds |")
    assert "| headforcing | 1 | 21 |" in capsys.readouterr().out
