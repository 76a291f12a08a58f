"""Measured roles by default: a typed policy without --heads takes its roles from a profile of the loaded weights."""

import json

import pytest

import headforcing
from headforcing.cache.policy import DEFAULT_RULE, preset
from headforcing.cache.profiler import classify
from headforcing.cli import main
from headforcing.tools.profile import read_prompts, run_profile

PROMPT = "a red circle bounces on a green background"


@pytest.mark.parametrize("weights", [None, "memory"])
def test_default_toy_roles_are_the_profiled_ones(weights):
    """The shipped profile is what profiling these weights gives today (same prompts, seed, queries), and a
    session without --heads runs with its roles, for headforcing's rule and for another policy's own rule."""
    pipe = headforcing.load("toy", toy_weights=weights)
    stats = run_profile(pipe, read_prompts(None, "toy"), 256)
    for policy in ("headforcing", "forcing-kv"):
        session = pipe.session(PROMPT, policy=policy)
        assert session.headmap == classify(stats, preset(policy).rule)
        assert session.stats()["heads"] == f"profile toy{'-memory' if weights else ''}.heads.json"
    assert pipe.session(PROMPT, policy="self-forcing").stats()["heads"] == "uniform"


def test_installed_profile_becomes_the_default_and_a_damaged_one_is_ignored(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HEADFORCING_PROFILES", str(tmp_path / "profiles"))
    pipe = headforcing.load("tiny")
    before = pipe.session(PROMPT, policy="headforcing")
    assert before.stats()["heads"] == "shares"
    out = tmp_path / "heads.json"
    assert main(["profile", "--model", "tiny", "--chunks", "4", "--queries", "32", "--out", str(out), "--install"]) == 0
    data = json.loads(out.read_text())
    assert data["weights"] == pipe.fingerprint() and "installed" in capsys.readouterr().out
    after = pipe.session(PROMPT, policy="headforcing")
    assert after.stats()["heads"] == f"profile {pipe.fingerprint()}.json"
    assert after.headmap == classify(data["stats"], DEFAULT_RULE) != before.headmap
    other = headforcing.load("tiny", toy_weights=None)  # same weights: same fingerprint, same default
    assert other.session(PROMPT, policy="headforcing").headmap == after.headmap
    (tmp_path / "profiles" / f"{pipe.fingerprint()}.json").write_text("{not json")
    assert pipe.session(PROMPT, policy="headforcing").stats()["heads"] == "shares"


def test_a_profile_of_other_weights_is_not_used(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADFORCING_PROFILES", str(tmp_path))
    pipe = headforcing.load("tiny")
    from headforcing.engine.profiles import SHIPPED

    shipped = json.loads((SHIPPED / "toy.heads.json").read_text())
    (tmp_path / f"{pipe.fingerprint()}.json").write_text(json.dumps({**shipped, "weights": "0" * 16}))
    assert pipe.session(PROMPT, policy="headforcing").stats()["heads"] == "shares"
