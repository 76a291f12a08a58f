"""Property-based fuzz of every parser a user reaches: each input is accepted or refused with the project's
one-line usage error (argparse's own refusals exit 2), never another exception."""

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

import headforcing
from headforcing.cache.headmap import HeadMap
from headforcing.cache.profiler import classify, parse_rule
from headforcing.cli import build_parser
from headforcing.engine.timeline import Cue, parse_prompt_arg, read_timeline
from headforcing.errors import UsageError
from headforcing.evaluation.report import parse_seconds
from headforcing.runs.generate import Request
from headforcing.runs.checks import plan

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                           max_leaves=12)


def accepted_or_usage_error(fn, *args):
    try:
        return fn(*args)
    except UsageError as e:
        assert "\n" not in str(e)
        return None


@FAST
@given(st.text(max_size=40))
def test_prompt_with_times(text):
    cue = accepted_or_usage_error(parse_prompt_arg, text)
    assert cue is None or (isinstance(cue, Cue) and cue.start >= 0)


@FAST
@given(st.binary(max_size=200) | st.lists(json_values, max_size=4).map(lambda v: "\n".join(json.dumps(x) for x in v).encode()))
def test_timeline_files(tmp_path, data):
    path = tmp_path / "t.jsonl"
    path.write_bytes(data)
    accepted_or_usage_error(read_timeline, path)


@FAST
@given(json_values)
def test_headmap_json(data):
    headmap = accepted_or_usage_error(HeadMap.from_json, data)
    if headmap is not None:
        accepted_or_usage_error(headmap.check, 3, 4, ("local", "anchor", "memory"))


STATS = {kind: {c: [[0.1 * (h + 1) + 0.01 * layer for h in range(4)] for layer in range(3)] for c in ("sink", "current", "previous", "rest")}
         for kind in ("denoise", "commit")}


@FAST
@given(st.text(alphabet="anchorlcmemysikt=:%,>.0123456789 ", max_size=60))
def test_rules(text):
    if accepted_or_usage_error(parse_rule, text) is not None:
        accepted_or_usage_error(classify, STATS, text)


@FAST
@given(st.text(max_size=20), st.sampled_from(["--size", "--seed", "--seconds", "--context-noise", "--crf", "--lora-alpha"]))
def test_flags_parse_or_exit_2(text, flag):
    try:
        build_parser().parse_args(["generate", "--prompt", "x", "--latents-only", flag, text])
    except SystemExit as e:
        assert e.code == 2


@FAST
@given(seconds=st.floats(allow_nan=True, allow_infinity=True) | st.integers(-5, 10**6), seed=st.integers(-(2**70), 2**70),
       size=st.tuples(st.integers(-64, 10**5), st.integers(-64, 10**5)), context_noise=st.none() | st.integers(-2000, 2000),
       crf=st.integers(-5, 60), policy=st.sampled_from([*headforcing.PRESETS, "nope"]))
def test_numbers_are_checked_before_any_work(seconds, seed, size, context_noise, crf, policy):
    request = Request(prompt="a red circle", seconds=seconds, seed=seed, size=size, context_noise=context_noise, crf=crf,
                      policy=policy, latent_frames=None if not isinstance(seconds, int) or seconds < 10**4 else 3)
    accepted_or_usage_error(plan, request)


@FAST
@given(st.text(max_size=12))
def test_segment_lengths(text):
    accepted_or_usage_error(parse_seconds, text)


@pytest.fixture(scope="module")
def saved_state(tmp_path_factory):
    pipe = headforcing.load("toy")
    session = pipe.session("a red circle bounces on a green background", heads="auto")
    for _ in range(2):
        session.step()
    path = tmp_path_factory.mktemp("state") / "s.state.safetensors"
    session.save(str(path))
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["headforcing"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return pipe, meta, tensors


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_state_metadata(saved_state, tmp_path, data):
    """A state whose JSON was edited (any key, any value, nested one level) is resumed or refused in one line."""
    pipe, meta, tensors = saved_state
    edited = json.loads(json.dumps(meta))
    key = data.draw(st.sampled_from(sorted(edited)))
    if isinstance(edited[key], dict) and edited[key] and data.draw(st.booleans()):
        inner = data.draw(st.sampled_from(sorted(edited[key])))
        edited[key][inner] = data.draw(json_values)
    else:
        edited[key] = data.draw(json_values)
    path = tmp_path / "edited.safetensors"
    save_file(tensors, str(path), metadata={"headforcing": json.dumps(edited)})
    session = accepted_or_usage_error(pipe.resume, str(path))
    if session is not None:
        assert isinstance(session.step().latents, torch.Tensor)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@FAST
@given(st.integers(1, 3000), json_values)
def test_json_files_of_any_depth_and_type(tmp_path, depth, value):
    """Deep nesting and wrong types: a timeline, a HeadMap, statistics and a prompt list each refuse in one line
    (a RecursionError, a coerced prompt or a bool start time would be a bug)."""
    from headforcing.runs.prompt_sets import read_entries
    from headforcing.utils.files import read_json

    for text in (nested(depth), json.dumps(value), json.dumps({"start": value, "prompt": "a red circle"}),
                 json.dumps({"start": 0, "prompt": value})):
        path = tmp_path / "x.json"
        path.write_text(text)
        cues = accepted_or_usage_error(read_timeline, path)
        assert cues is None or all(isinstance(c.prompt, str) and c.prompt.strip() and type(c.start) is float for c in cues)
        accepted_or_usage_error(read_json, path, "statistics")
        accepted_or_usage_error(HeadMap.load, path)
        entries = accepted_or_usage_error(read_entries, str(path))
        for entry in entries or []:
            assert entry.error or isinstance(entry.prompt, str) or all(isinstance(c.prompt, str) for c in entry.prompt)


@pytest.mark.parametrize("line, message", [
    ('{"start": 0, "prompt": 42}', "expected"), ('{"start": 0, "prompt": null}', "expected"),
    ('{"start": 0, "prompt": ["a red circle"]}', "expected"), ('{"start": true, "prompt": "a red circle"}', "expected"),
    ('{"start": -1, "prompt": "a red circle"}', "expected"), ('{"start": "1", "prompt": "a red circle"}', "expected"),
    ("[" * 100_000, "nests too deeply"),
])
def test_timeline_values_are_typed_not_coerced(tmp_path, line, message):
    path = tmp_path / "t.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(UsageError, match=message):
        read_timeline(path)


def test_an_endless_file_is_refused_unread():
    from headforcing.utils.files import read_text

    with pytest.raises(UsageError, match="larger than 16 MiB"):
        read_text("/dev/zero", "timeline")


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height (RGB) but holds one row of pixel data: what a file's header says is
    all a size check may trust before decoding."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = zlib.compress(b"\x00" + b"\x80" * 3 * min(width, 64))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", row) + chunk(b"IEND", b""))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(1, 70_000), st.integers(1, 70_000))
def test_image_sizes_from_the_header_are_checked_before_decoding(tmp_path, width, height):
    """An --init-image of any declared size (up to 70,000 x 70,000: a decompression bomb) is planned or refused
    in one line, never a MemoryError, a PIL error or a traceback."""
    path = tmp_path / "start.png"
    path.write_bytes(png_header(width, height))
    accepted_or_usage_error(plan, Request(prompt="a red circle", seconds=1.0, init_image=str(path), latent_frames=3))
