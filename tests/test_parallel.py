"""One stream on several ranks (--parallel heads): head assignment, equality with one process under torchrun
(gloo), each rank's cache its heads' share, saves across rank counts, the CLI and a relayed Ctrl-C."""

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from headforcing.cache.policy import preset
from headforcing.cli import main
from headforcing.engine.parallel import assign, head_costs, imbalance
from headforcing.models.specs import TINY, TOY, WAN_1_3B

HERE = Path(__file__).parent


def torchrun(*args, cwd, env=None):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900, env=env)


# ---- assignment ------------------------------------------------------------------------------------------
def costs_of(spec, policy_name):
    policy = preset(policy_name, spec.chunk_frames, spec.trained_frames)
    headmap = policy.resolve_headmap(spec.num_layers, spec.num_heads)
    return head_costs(policy, headmap, spec.trained_frames, spec.chunk_frames)


@pytest.mark.parametrize("ranks", [2, 3, 4, 6])
def test_every_head_attended_once_and_each_rank_an_equal_count(ranks):
    costs = costs_of(WAN_1_3B, "headforcing")
    for balanced in (True, False):
        for layer in assign(costs, ranks, balanced):
            assert sorted(h for heads in layer for h in heads) == list(range(12))
            assert {len(heads) for heads in layer} == {12 // ranks}


def test_role_balanced_assignment_beats_index_order_for_headforcing():
    for spec, ranks in ((WAN_1_3B, 2), (WAN_1_3B, 3), (WAN_1_3B, 4), (TINY, 2)):
        costs = costs_of(spec, "headforcing")
        balanced, index = imbalance(costs, assign(costs, ranks)), imbalance(costs, assign(costs, ranks, balanced=False))
        assert balanced < index, (spec.name, ranks, balanced, index)


def test_imbalance_is_the_slowest_rank_over_the_mean_and_balanced_finds_the_optimum_on_the_toy_shape():
    costs = costs_of(TOY, "headforcing")
    owned = assign(costs, 2)
    slowest = sum(max(sum(layer[h] for h in heads) for heads in ranks) for layer, ranks in zip(costs, owned))
    assert imbalance(costs, owned) == pytest.approx(slowest / (sum(map(sum, costs)) / 2) - 1)
    for layer, ranks in zip(costs, owned):  # no split of the 4 heads into 2 + 2 has a smaller slowest rank
        best = min(max(sum(layer[h] for h in pair), sum(layer) - sum(layer[h] for h in pair)) for pair in itertools.combinations(range(4), 2))
        assert max(sum(layer[h] for h in heads) for heads in ranks) == best


# ---- two ranks against one process ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("parallel")
    done = torchrun(str(HERE / "parallel_worker.py"), str(folder / "out.json"), str(folder), cwd=folder)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((folder / "out.json").read_text())


@pytest.mark.parametrize("model", ["toy", "tiny"])
def test_two_ranks_make_the_one_process_stream_for_every_preset(two_ranks, model):
    rows = two_ranks[model]
    assert set(rows) >= {"headforcing", "self-forcing", "longlive", "forcing-kv", "memflow", "headforcing+auto"}
    for policy, row in rows.items():
        assert row["diff"] < 1e-4, (policy, row["diff"])


@pytest.mark.parametrize("model", ["toy", "tiny"])
def test_each_rank_keeps_its_heads_share_of_the_cache(two_ranks, model):
    for policy, row in two_ranks[model].items():
        print(f"{model} {policy}: cache bytes per head, one process {row['one_head_bytes']}, ranks {row['rank_head_bytes']}")
        assert row["rank_head_bytes"] == row["rank_expected"], policy
        assert sum(row["rank_head_bytes"]) == row["one_head_bytes"], policy


@pytest.mark.parametrize("model", ["toy", "tiny"])
def test_a_state_resumes_on_one_and_on_two_ranks_whichever_saved_it(two_ranks, model):
    for how, diff in two_ranks[model + "-resume"].items():
        assert diff < 1e-4, (how, diff)


@pytest.mark.parametrize("model", ["toy", "tiny"])
def test_bytes_sent_per_chunk_are_the_computed_volume(two_ranks, model):
    sent = two_ranks[model + "-sent"]
    assert sent["measured"] == sent["computed"] > 0


def test_a_compiled_step_runs_head_parallel(two_ranks):
    row = two_ranks["compiled"]
    assert row["compiled_chunks"] > 0 and row["recompiles"] == 0 and row["diff"] < 1e-3


# ---- the command line --------------------------------------------------------------------------------
def test_generate_on_two_ranks_writes_the_one_process_video(tmp_path):
    args = ["--prompt", "a red circle", "--prompt", "a blue square@3", "--seconds", "6", "--crf", "0", "--quiet"]
    done = torchrun("-m", "headforcing", "generate", "--parallel", "heads", *args, "--out", "two.mp4", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert main(["generate", *args, "--out", str(tmp_path / "one.mp4")]) == 0
    assert (tmp_path / "two.mp4").read_bytes() == (tmp_path / "one.mp4").read_bytes()  # (the toy model: pixels, no VAE)
    assert done.stdout.count("frames 24 (24 latent)") == 1 and "2 ranks" in done.stdout  # rank 0 alone reports


def test_parallel_without_ranks_or_with_a_prompt_set_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["generate", "--parallel", "heads", "--prompt", "x", "--out", str(tmp_path / "x.mp4")]) == 2
    assert "torchrun --nproc-per-node N" in capsys.readouterr().err
    (tmp_path / "p.txt").write_text("x\n")
    assert main(["generate", "--parallel", "heads", "--prompts", str(tmp_path / "p.txt"), "--out-dir", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == "headforcing: error: --parallel does not go with --prompts (each entry of the file is one video into --out-dir)"
    assert not list(tmp_path.glob("*.mp4"))


RELAYED_SIGNAL = """
import os, signal
from headforcing.utils import signals
signals.install()
try:
    with signals.deferred() as stop:
        os.kill(os.getpid(), signal.SIGINT)  # the terminal's Ctrl-C
        os.kill(os.getpid(), signal.SIGINT)  # torchrun passing the same one on
        print("stop after the chunk" if stop else "no signal")
except signals.Interrupted as e:
    print(e.message)
"""


@pytest.mark.parametrize("launched", [True, False])
def test_a_ctrl_c_passed_on_by_torchrun_counts_once(launched):
    """Under torchrun a Ctrl-C reaches each worker from the terminal and again from the launcher: counted once,
    the run stops after its chunk and saves; outside torchrun a second SIGINT still stops at once."""
    env = {k: v for k, v in os.environ.items() if k != "TORCHELASTIC_RUN_ID"} | ({"TORCHELASTIC_RUN_ID": "test"} if launched else {})
    out = subprocess.run([sys.executable, "-c", RELAYED_SIGNAL], capture_output=True, text=True, timeout=600, env=env)
    expected = "stop after the chunk" if launched else "interrupted again: stopped at once"
    assert out.stdout.strip() == expected, out.stdout + out.stderr


def frames_of(chunk: dict) -> list:
    import base64

    import cv2
    import numpy as np

    return [cv2.imdecode(np.frombuffer(base64.b64decode(url.split(",")[1]), np.uint8), cv2.IMREAD_COLOR)[..., ::-1] for url in chunk["frames"]]


def test_serve_on_two_ranks_streams_the_one_process_session(tmp_path):
    """The live page's session on 2 ranks (rank 0 serves, rank 1 repeats its session calls): the frames sent
    equal those of the same session in one process, prompt switch included."""
    import numpy as np
    from websockets.sync.client import connect

    from headforcing.engine.pipeline import load
    from test_server import free_port, receive

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "headforcing",
                             "serve", "--parallel", "heads", "--port", str(port), "--buffer-seconds", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=tmp_path)
    try:
        assert proc.stdout.readline().startswith("headforcing live: http://127.0.0.1:")  # printed once rank 0 listens
        first, second = "a red circle bounces on a green background", "a blue square bounces on a white background"
        with connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as ws:
            receive(ws, "ready")
            ws.send(json.dumps(dict(type="start", prompt=first, policy="headforcing", seed=1)))
            chunks = [receive(ws, "chunk") for _ in range(4)]
            ws.send(json.dumps(dict(type="prompt", prompt=second)))
            chunks += [receive(ws, "chunk") for _ in range(6)]
    finally:
        proc.send_signal(2)  # Ctrl-C: torchrun passes it on; rank 0 shuts down and tells rank 1
        proc.wait(600)
    switch = chunks[-1]["timeline"][1]["chunk"]
    session = load("toy").session(first, policy="headforcing", seed=1)
    for i, chunk in enumerate(chunks):
        if i == switch:
            session.set_prompt(second)
        made = session.step().frames[0].numpy()
        sent = np.stack(frames_of(chunk))
        assert np.abs(made.astype(int) - sent).max() <= 1, i
