"""A session's state in one safetensors file: tensors, and a JSON document in the header's metadata.

Tensors: every store's kept keys (raw; rotated too for absolute positions) and values, occupied slots only;
each episodic memory's and the profiler's random generator; the noise generator; the clean latents kept
for re-encoding; the streaming VAE decoder's causal feature cache; the profiler's sums while profiling.
JSON: format and version, the model's identity (spec and a fingerprint of its weights), the options,
policy and HeadMap, the position (chunks, frames), the prompt, pending switch and history, every store's
frame bookkeeping, the episodic memory's counts and usage, and a sha256 of all tensor bytes (a corrupted
file is refused). Nothing is pickled. A state is checked whole before a session is built from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..cache.episodic import EpisodicConfig
from ..cache.headmap import HeadMap
from ..cache.policy import Episodic
from ..cache.store import part
from ..errors import UsageError, whole
from ..utils.files import parse_json, publish
from .parallel import gather_states, share_states

FORMAT = "headforcing-session"
VERSION = 2  # 2: the checksum covers the metadata too
KINDS = ("denoise", "commit")


def policy_json(policy) -> dict:
    """A policy as data: role -> segments, positions, switch rule (to refuse a changed definition)."""
    def role_json(role) -> dict:
        def segment(s) -> list:  # (an Episodic segment's default rule is left out: older states still match)
            fields = {k: v for k, v in asdict(s).items() if not (isinstance(s, Episodic) and k == "rule" and v == "novelty")}
            return [type(s).__name__, *fields.values()]

        out = dict(segments=[segment(s) for s in role.segments], positions=role.positions, on_switch=role.on_switch)
        if role.memory_at != "time":  # (written only when set: states saved before it existed still match)
            out["memory_at"] = role.memory_at
        return out

    return {name: role_json(role) for name, role in policy.roles.items()}


def model_identity(pipe) -> dict:
    spec = pipe.spec
    return dict(name=spec.name, transformer=json.loads(json.dumps(spec.transformer)), weights=pipe.fingerprint(),
                dtype=str(pipe.dtype).removeprefix("torch."))


def digest(tensors: dict[str, torch.Tensor], meta: dict) -> str:
    """sha256 of every tensor (name, dtype, shape, bytes) and of the metadata (canonical JSON, its own sha256
    left out): an edited prompt or path is caught as surely as a flipped bit."""
    h = hashlib.sha256(json.dumps({k: v for k, v in meta.items() if k != "sha256"}, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# ---- saving ---------------------------------------------------------------------------------------------
def cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu").contiguous().clone()


def prefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A part's tensors under its name in the file (the inverse of `cache.store.part`), copied to the CPU."""
    return {f"{prefix}.{name}": cpu(t) for name, t in tensors.items()}


def stamped(pipe, meta: dict, tensors: dict[str, torch.Tensor]) -> dict:
    """A session's metadata as the file holds it: the format and its version, the model's identity, and the
    checksum of it all."""
    meta = dict(format=FORMAT, version=VERSION, model=model_identity(pipe), **meta)
    meta["sha256"] = digest(tensors, meta)
    return meta


def store_states(cache) -> list[tuple[dict, dict]]:
    """Every store's (meta, tensors), the whole model's under head parallelism (gathered from every rank)."""
    states = [store.state() for store in cache.stores()]
    if cache.split is None:
        return states
    return gather_states(cache.stores(), states, list(cache.policy.roles))


def own_states(cache, saved: list, tensors: dict, path: str) -> list[tuple[dict, dict]]:
    """The saved stores' (meta, tensors) for this cache's stores, in its order (a rank's share of the heads
    under head parallelism, whatever rank count saved them)."""
    stores = cache.stores()
    if cache.split is not None:
        shares = share_states(stores, saved, tensors)
        if isinstance(shares, str):
            raise UsageError(f"{path} is inconsistent: {shares}")
        return shares
    if len(stores) != len(saved):
        raise UsageError(f"{path} is inconsistent: {len(saved)} stores saved, the session has {len(stores)}")
    return [(meta, part(f"store.{i}", tensors)) for i, meta in enumerate(saved)]


def write_state(path: str, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
    """One safetensors file, whole or not at all."""
    target = Path(path)
    if target.suffix != ".safetensors":
        raise UsageError(f"a session state is a .safetensors file, got {path}")
    fd, tmp = tempfile.mkstemp(suffix=".safetensors", prefix=".partial-", dir=target.parent if str(target.parent) else ".")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"headforcing": json.dumps(meta)})
        publish(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# ---- reading --------------------------------------------------------------------------------------------
def read_state(path: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, tensors) of a state file; UsageError for anything that is not a whole, intact state."""
    if not Path(path).is_file():
        raise UsageError(f"session state {path} does not exist")
    try:
        with safe_open(str(path), "pt", device="cpu") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for a truncated or garbled header/body
        raise UsageError(f"{path} is not a session state: not a readable safetensors file ({type(e).__name__})") from None
    try:
        meta = parse_json(header["headforcing"], "session metadata")
        assert isinstance(meta, dict) and meta.get("format") == FORMAT
    except (KeyError, ValueError, AssertionError):  # (ValueError: UsageError of malformed or too deep JSON too)
        raise UsageError(f"{path} is not a headforcing session state (no session metadata)") from None
    if meta.get("version") != VERSION:
        raise UsageError(f"{path} is a session state of format version {meta.get('version')}; this headforcing reads version {VERSION}")
    if digest(tensors, meta) != meta.get("sha256"):
        raise UsageError(f"{path} is corrupted or edited: its tensors and metadata do not match the checksum written with them")
    return meta, tensors


def check_model(meta: dict, pipe, path: str) -> None:
    saved, mine = meta["model"], model_identity(pipe)
    if saved["name"] != mine["name"] or saved["transformer"] != mine["transformer"]:
        raise UsageError(f"{path} was saved with model {saved['name']!r}; the loaded model is {mine['name']!r} (another shape)")
    if saved["weights"] != mine["weights"]:
        raise UsageError(f"{path} was saved with other weights of {saved['name']!r} (fingerprint {saved['weights']}, loaded {mine['weights']})")
    if saved["dtype"] != mine["dtype"]:
        raise UsageError(f"{path} was saved in {saved['dtype']}; the model is loaded in {mine['dtype']} (use --dtype {saved['dtype']})")


def check_fields(meta: dict, path: str) -> None:
    """The JSON's scalars and lists have the types and ranges a session needs (it may have been edited)."""
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise UsageError(f"{path} is inconsistent: {what}")

    text = lambda v: isinstance(v, str) and bool(v.strip())  # noqa: E731
    need(all(whole(meta.get(k)) for k in ("chunk", "frame")) and meta.get("origin") in (0, 1), "chunk, frame or origin")
    need(text(meta.get("prompt")) and (meta.get("pending") is None or text(meta["pending"])), "prompt or pending prompt")
    blend = meta.get("blend")
    need(blend is None or (isinstance(blend, list) and len(blend) == 2 and text(blend[0]) and whole(blend[1])), "blend state")
    history = meta.get("history")
    need(isinstance(history, list) and bool(history) and all(
        isinstance(h, dict) and whole(h.get("chunk")) and whole(h.get("frame")) and text(h.get("prompt")) for h in history), "prompt history")
    counts = meta.get("episodic_counts")
    need(isinstance(counts, dict) and sorted(counts) == ["admit", "merge", "replace"] and all(whole(v) for v in counts.values()),
         "episodic counts")
    for i, store in enumerate(meta.get("stores") or []):
        memory = store.get("memory") if isinstance(store, dict) else None
        need(isinstance(store, dict) and isinstance(store.get("frames"), list) and all(whole(f) for f in store["frames"])
             and whole(store.get("recent_next")), f"store {i}'s frames")
        need(memory is None or (isinstance(memory, dict) and isinstance(memory.get("count"), list)
             and isinstance(memory.get("usage"), list) and len(memory["count"]) == len(memory["usage"])
             and all(whole(c, 1) for c in memory["count"])
             and all(isinstance(u, (int, float)) and not isinstance(u, bool) for u in memory["usage"])), f"store {i}'s episodic memory")
    decoder = meta.get("decoder")
    need(decoder is None or (isinstance(decoder, dict) and isinstance(decoder.get("first"), bool) and isinstance(decoder.get("feat"), list)
         and all(k in (None, "Rep", "tensor") for k in decoder["feat"])), "decoder state")
    profiler = meta.get("profiler")
    sampled = profiler.get("sampled_for") if isinstance(profiler, dict) else None
    need(profiler is None or (isinstance(profiler, dict) and (sampled is None or (
        isinstance(sampled, list) and len(sampled) == 2 and all(whole(v) for v in sampled)))), "profiler state")


def session_args(pipe, meta: dict, path: str) -> tuple[str, dict, HeadMap | None, EpisodicConfig | None]:
    """(prompt, options, HeadMap, episodic settings) to open the session a checked state continues."""
    check_model(meta, pipe, path)
    check_fields(meta, path)
    options = dict(meta["options"])
    if options.get("size") is not None:
        options["size"] = tuple(options["size"])
    headmap = HeadMap.from_json(meta["headmap"]) if meta["headmap"] is not None else None
    episodic = EpisodicConfig(**meta["episodic"]) if meta["episodic"] is not None else None
    return meta["prompt"], options, headmap, episodic
