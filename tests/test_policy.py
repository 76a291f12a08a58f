"""HeadMap and policies as data."""

import pytest

from headforcing.cache.headmap import HeadMap
from headforcing.cache.policy import DEFAULT_FRACTIONS, Episodic, Recent, RolePolicy, Sink, preset, window_policy
from headforcing.errors import UsageError


def test_headmap_json_round_trip(tmp_path):
    hm = HeadMap.by_fraction(30, 12, DEFAULT_FRACTIONS)
    path = tmp_path / "heads.json"
    hm.save(path)
    assert HeadMap.load(path) == hm
    assert hm.counts() == {"anchor": 90, "local": 60, "memory": 210}  # 3 / 2 / 7 heads in each of 30 layers
    assert all(sorted(layer) == sorted(hm.roles[0]) for layer in hm.roles)
    assert len({layer for layer in hm.roles}) > 1  # the split rotates over heads


def test_headmap_rejects_bad_json(tmp_path):
    path = tmp_path / "h.json"
    path.write_text("{not json")
    with pytest.raises(UsageError, match="not valid JSON"):
        HeadMap.load(path)
    with pytest.raises(UsageError, match="cannot read HeadMap"):
        HeadMap.load(tmp_path / "missing.json")
    with pytest.raises(UsageError, match="does not match its num_layers"):
        HeadMap.from_json({"num_layers": 2, "roles": [["local"]]})


def test_presets_are_the_published_windows():
    sf = preset("self-forcing").roles["all"]
    assert (sf.sink, sf.recent, sf.positions) == (0, 18, "absolute")  # 21 frames with the chunk
    ll = preset("longlive").roles["all"]
    assert (ll.sink, ll.recent, ll.positions) == (3, 6, "absolute")  # 3 sink + 9 latest incl. the chunk
    ir = preset("infinity-rope").roles["all"]
    assert (ir.sink, ir.recent, ir.positions) == (3, 15, "compact")
    hf = preset("headforcing").roles
    assert {n: (r.sink, r.episodic, r.recent) for n, r in hf.items()} == {
        "local": (0, 0, 3),
        "anchor": (3, 0, 3),
        "memory": (3, 6, 9),
    }
    assert all(r.capacity(0) + 3 <= 21 for r in hf.values())
    assert preset("full").roles["all"].sink is None and not preset("full").bounded


def test_window_policy_matches_self_forcing_arguments():
    p = window_policy("x", 9, 3, 3)
    assert p.roles["all"].segments == (Sink(3), Recent(3))
    with pytest.raises(UsageError, match="cannot hold"):
        window_policy("x", 4, 3, 3)


def test_role_policy_validation():
    with pytest.raises(UsageError, match="at most one"):
        RolePolicy((Recent(3), Recent(4)))
    with pytest.raises(UsageError, match="needs a Recent"):
        RolePolicy((Sink(3), Episodic(2)))
    with pytest.raises(UsageError, match="position scheme"):
        RolePolicy((Recent(3),), "relative")
    with pytest.raises(UsageError, match=">= 0"):
        RolePolicy((Recent(-1),))


def test_fractions_over_100_percent():
    with pytest.raises(UsageError, match="exceed 100%"):
        HeadMap.by_fraction(2, 4, {"anchor": 0.75, "local": 0.5, "memory": 0.0})
