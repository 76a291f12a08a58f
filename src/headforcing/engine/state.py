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

from ..cache.episodic import ACTIONS, EMPTY, EpisodicConfig
from ..cache.headmap import HeadMap
from ..cache.policy import Episodic
from ..errors import UsageError
from .decode import StreamingVaeDecoder
from .files import parse_json, publish

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
def save_session(session, path: str, run: dict | None = None) -> None:
    cpu = lambda t: t.detach().to("cpu").contiguous().clone()  # noqa: E731
    tensors = {"noise.generator": session.noise.gen.get_state()}
    if session.recent is not None:
        tensors["recent"] = cpu(session.recent)
    stores = []
    for i, store in enumerate(session.cache.stores()):
        used = slice(0, store.kept * store.T)  # (retrieved slots are refilled from the archive at every forward)
        if store.k_raw is not None:
            tensors[f"store.{i}.k_raw"] = cpu(store.k_raw[:, :, used])
        if store.absolute:
            tensors[f"store.{i}.k_rot"] = cpu(store.k_ctx[:, :, used])
        tensors[f"store.{i}.v"] = cpu(store.v_ctx[:, :, used])
        memory = None
        if store.memory is not None:
            held = store.memory.held
            memory = dict(count=[int(c) for c in store.memory.count[:held].tolist()], usage=store.memory.usage[:held].tolist())
            if store.n_coarse:
                memory["pooled"] = dict(frames=store.memory.pooled_frames.tolist(), next=int(store.memory.pooled_next))
            tensors[f"store.{i}.memory.generator"] = store.memory.gen.get_state()
        archive = None
        if store.archive is not None:
            archive, parts = store.archive.state()
            tensors.update({f"store.{i}.archive.{name}": cpu(t) for name, t in parts.items()})
        stores.append(dict(layer=store.layer, role=store.name, heads=store.heads, frames=store.held_frames(),
                           recent_next=store.recent_next, memory=memory, archive=archive))
    decoder = None
    if isinstance(session.decoder, StreamingVaeDecoder):
        kinds = []
        for j, entry in enumerate(session.decoder.feat_cache):
            if isinstance(entry, torch.Tensor):
                tensors[f"decoder.feat.{j}"] = cpu(entry)
                kinds.append("tensor")
            else:
                kinds.append(entry)  # None, or diffusers' "Rep" marker
        decoder = dict(first=session.decoder.first, feat=kinds)
    profiler = None
    if session.profiler is not None:
        p = session.profiler
        for kind in KINDS:
            tensors[f"profiler.mass.{kind}"] = p.mass[kind].clone()
            tensors[f"profiler.distance.{kind}"] = p.distance[kind].clone()
            tensors[f"profiler.count.{kind}"] = p.count[kind].clone()
        tensors["profiler.generator"] = p.gen.get_state()
        if p.sampled_for is not None:
            tensors["profiler.sample"] = p.sample.clone()
        profiler = dict(sampled_for=p.sampled_for)
    meta = dict(
        format=FORMAT, version=VERSION, model=model_identity(session.pipe),
        options=asdict(session.options), episodic=asdict(session.episodic) if session.episodic else None,
        policy=policy_json(session.policy),
        headmap=session.headmap.to_json() if session.headmap is not None else None,
        chunk=session.chunk, frame=session.frame, origin=session.origin,
        prompt=session.prompt, pending=session.pending, history=session.history, blend=session.blend,
        episodic_counts=session.episodic_counts, stores=stores, decoder=decoder, profiler=profiler,
        run=run,
    )
    meta["sha256"] = digest(tensors, meta)
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


def expect(tensors: dict, name: str, shape: tuple, path: str) -> torch.Tensor:
    t = tensors.get(name)
    if t is None or tuple(t.shape) != tuple(shape):
        got = "missing" if t is None else f"shape {tuple(t.shape)}"
        raise UsageError(f"{path} is inconsistent: {name} is {got}, expected {tuple(shape)}")
    return t


def load_session(pipe, path: str):
    """A session continuing exactly where the one saved at `path` stopped."""
    meta, tensors = read_state(path)
    try:
        return build_session(pipe, meta, tensors, path)
    except UsageError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError) as e:  # edited metadata
        raise UsageError(f"{path} is inconsistent: its metadata does not describe a session ({type(e).__name__}: {e})") from None


def whole(value, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


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


def build_session(pipe, meta: dict, tensors: dict, path: str):
    from .session import Session

    check_model(meta, pipe, path)
    check_fields(meta, path)
    options = dict(meta["options"])
    if options.get("size") is not None:
        options["size"] = tuple(options["size"])
    headmap = HeadMap.from_json(meta["headmap"]) if meta["headmap"] is not None else None
    episodic = EpisodicConfig(**meta["episodic"]) if meta["episodic"] is not None else None
    session = Session(pipe, meta["prompt"], episodic=episodic, headmap=headmap, **options)
    if policy_json(session.policy) != meta["policy"]:
        raise UsageError(f"{path} was saved with another definition of policy {options['policy']!r}")
    if (session.headmap is None) != (meta["headmap"] is None):
        raise UsageError(f"{path} is inconsistent: profiling state and HeadMap disagree")
    restore(session, meta, tensors, path)
    return session


def restore(session, meta: dict, tensors: dict, path: str) -> None:
    """Check every saved piece against the freshly built session, then copy it in."""
    stores = session.cache.stores()
    if len(stores) != len(meta["stores"]):
        raise UsageError(f"{path} is inconsistent: {len(meta['stores'])} stores saved, the session has {len(stores)}")
    writes = []  # (buffer, tokens, tensor) copied in only once everything is checked
    for i, (store, saved) in enumerate(zip(stores, meta["stores"])):
        if (saved["layer"], saved["role"], saved["heads"]) != (store.layer, store.name, store.heads):
            raise UsageError(f"{path} is inconsistent: store {i} is layer {saved['layer']} {saved['role']}, expected layer {store.layer} {store.name}")
        n = len(saved["frames"])
        if store.n_coarse and n == store.coarse_first:  # the episodic slots are full: the coarse ones are attended
            n = store.capacity
        if n > store.capacity:
            raise UsageError(f"{path} is inconsistent: store {i} holds {n} frames, capacity {store.capacity}")
        shape = (1, len(store.heads), n * store.T, store.v_ctx.shape[-1])
        used = slice(0, n * store.T)
        if store.k_raw is not None:
            writes.append((store.k_raw, used, expect(tensors, f"store.{i}.k_raw", shape, path)))
        if store.absolute:
            writes.append((store.k_ctx, used, expect(tensors, f"store.{i}.k_rot", shape, path)))
        writes.append((store.v_ctx, used, expect(tensors, f"store.{i}.v", shape, path)))
        if (saved["memory"] is None) != (store.memory is None):
            raise UsageError(f"{path} is inconsistent: store {i}'s episodic memory")
        pooled = (saved["memory"] or {}).get("pooled")
        if store.n_coarse and not (isinstance(pooled, dict) and isinstance(pooled.get("frames"), list) and len(pooled["frames"]) == 4 * store.n_coarse
                                   and all(whole(f, 0) for f in pooled["frames"]) and whole(pooled.get("next"), 0) and pooled["next"] < 4 * store.n_coarse):
            raise UsageError(f"{path} is inconsistent: store {i}'s coarse level")
        if store.archive is not None:
            parts = {name: tensors[f"store.{i}.archive.{name}"] for name in ("k", "v", "desc") if f"store.{i}.archive.{name}" in tensors}
            wrong = store.archive.check_state(saved.get("archive"), parts)
            if wrong:
                raise UsageError(f"{path} is inconsistent: store {i}'s archive ({wrong})")
        elif saved.get("archive") is not None:
            raise UsageError(f"{path} is inconsistent: store {i} has no archive")
        if saved["recent_next"] >= max(store.n_recent, 1) or (store.memory is not None and len(saved["memory"]["count"]) != max(0, len(saved["frames"]) - store.episodic_first)):
            raise UsageError(f"{path} is inconsistent: store {i}'s ring position or episodic slots")
    feats = []
    if meta["decoder"] is not None:
        if not isinstance(session.decoder, StreamingVaeDecoder) or len(meta["decoder"]["feat"]) != len(session.decoder.feat_cache):
            raise UsageError(f"{path} holds a VAE decoder state this session does not decode with (decode option changed?)")
        for j, kind in enumerate(meta["decoder"]["feat"]):
            if kind == "tensor" and f"decoder.feat.{j}" not in tensors:
                raise UsageError(f"{path} is inconsistent: decoder.feat.{j} is missing")
            feats.append(tensors[f"decoder.feat.{j}"].to(session.decoder.device) if kind == "tensor" else kind)
    # everything checked: copy in
    for buffer, used, t in writes:
        buffer[:, :, used] = t.to(buffer.device, buffer.dtype)
    for i, (store, saved) in enumerate(zip(stores, meta["stores"])):
        frames = list(saved["frames"])
        store.frames, store.recent_next = frames[: store.episodic_first], saved["recent_next"]
        if store.memory is not None:
            memory, held = store.memory, len(frames) - len(store.frames)
            memory.held = held
            for name, values in (("frames", frames[store.episodic_first :]), ("count", saved["memory"]["count"]),
                                 ("usage", saved["memory"]["usage"])):
                buffer = getattr(memory, name)
                buffer[:held] = torch.tensor(values, dtype=buffer.dtype)
            memory.gen.set_state(tensors[f"store.{i}.memory.generator"])
            if store.n_coarse:
                pooled = saved["memory"]["pooled"]
                memory.pooled_frames.copy_(torch.tensor(pooled["frames"]))
                memory.pooled_next.fill_(pooled["next"])
                store.mark_pooled(memory.pooled_frames != EMPTY)
        if store.archive is not None:
            store.archive.load_state(saved["archive"], {name: tensors[f"store.{i}.archive.{name}"] for name in ("k", "v", "desc")})
    if feats:
        session.decoder.feat_cache, session.decoder.first = feats, meta["decoder"]["first"]
    if session.profiler is not None:
        p = session.profiler
        for kind in KINDS:
            p.mass[kind], p.distance[kind], p.count[kind] = (tensors[f"profiler.{x}.{kind}"] for x in ("mass", "distance", "count"))
        p.gen.set_state(tensors["profiler.generator"])
        p.sampled_for = tuple(meta["profiler"]["sampled_for"]) if meta["profiler"]["sampled_for"] else None
        if p.sampled_for is not None:
            p.sample = tensors["profiler.sample"]
    session.noise.gen.set_state(tensors["noise.generator"])
    session.recent = tensors["recent"].to(session.pipe.device) if "recent" in tensors else None
    session.chunk, session.frame, session.origin = meta["chunk"], meta["frame"], meta["origin"]
    session.prompt, session.pending, session.history = meta["prompt"], meta["pending"], meta["history"]
    session.cache.tally.copy_(torch.tensor([meta["episodic_counts"][a] for a in ACTIONS]))
    session.blend = list(meta["blend"]) if meta.get("blend") is not None else None
    for prompt in {session.prompt, session.pending, (session.blend or [None])[0]} - {None}:
        session.pipe.encode(prompt)
