"""Prompt sets: `generate --prompts FILE --out-dir DIR`, optionally under torchrun.

Every entry of the file gets a stable id (its "id", else its line number, zero-padded) and a seed (its
"seed", else one derived from the run's --seed and the id), so a video is the same whichever rank or run
makes it. Ranks take disjoint shares (entry i goes to rank i mod world): every entry is made exactly once for
any number of entries and ranks — nothing is dropped to make shares even. One model is loaded per process.
`DIR/manifest.jsonl` gets a line as each video finishes or fails; a rerun skips the entries whose video the
manifest calls done and which still opens with its frames, and redoes the rest.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
import socket
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm import tqdm

from ..utils.files import parse_json, read_text
from ..engine.timeline import Cue, cue_from_json
from ..errors import UsageError
from ..utils.ranks import Group, shard, world

ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass
class Entry:
    line: int
    id: str
    prompt: str | list[Cue] | None = None
    seed: int | None = None
    error: str | None = None  # why the line cannot be made (recorded in the manifest; the others go on)


def parse_line(n: int, text: str) -> Entry:
    """One line: a plain prompt, or JSON {"prompt": ...} / {"timeline": [{"start", "prompt"}, ...]} with optional
    "id" and "seed"."""
    entry = Entry(n, f"{n:05d}")
    if not text.lstrip().startswith("{"):
        entry.prompt = text.strip()
        return entry
    try:
        item = parse_json(text, f"line {n}")
        if not isinstance(item, dict):
            raise ValueError
    except ValueError:  # (UsageError too: malformed or too deeply nested)
        entry.error = f"line {n}: not a JSON object"
        return entry
    entry.id = str(item.get("id", entry.id))
    seed = item.get("seed")
    if not ID.fullmatch(entry.id):
        entry.error = f"line {n}: id {entry.id!r} must be letters, digits, '.', '_' or '-'"
    elif seed is not None and not (isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**63):
        entry.error = f"line {n}: seed must be an integer in 0..2**63-1"
    elif "timeline" in item:
        try:
            if not isinstance(item["timeline"], list):
                raise ValueError
            entry.prompt = [cue_from_json(c) for c in item["timeline"]]
        except ValueError:
            entry.error = f"line {n}: timeline must be a list of {{\"start\": seconds, \"prompt\": text}}"
    elif isinstance(item.get("prompt"), str) and item["prompt"].strip():
        entry.prompt = item["prompt"]
    else:
        entry.error = f"line {n}: needs \"prompt\" (text) or \"timeline\""
    entry.seed = seed
    return entry


def read_entries(path: str) -> list[Entry]:
    lines = read_text(path, "prompts").splitlines()
    entries, seen = [], set()
    for n, text in enumerate(lines, 1):
        if text.strip():
            entry = parse_line(n, text)
            if entry.id in seen and not entry.error:
                entry.error = f"line {n}: id {entry.id!r} is used by an earlier line"
            seen.add(entry.id)
            entries.append(entry)
    if not entries:
        raise UsageError(f"{path} holds no prompt")
    return entries


def entry_seed(run_seed: int, entry_id: str) -> int:
    """A seed of the run's seed and the entry's id (not of its position or rank)."""
    return int.from_bytes(hashlib.sha256(f"{run_seed}/{entry_id}".encode()).digest()[:8], "big") >> 1


def append(manifest: Path, record: dict) -> None:
    """One line, whole, even with several ranks appending at once."""
    with open(manifest, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(json.dumps(record) + "\n")
        f.flush()
        fcntl.flock(f, fcntl.LOCK_UN)


def done(manifest: Path) -> dict[tuple[str, str], dict]:
    """(policy, id) -> the latest 'done' record."""
    out = {}
    if manifest.is_file():
        for line in manifest.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut by a crash: ignored, its video is redone
            if isinstance(record, dict) and record.get("status") == "done":
                out[(record.get("policy"), record.get("id"))] = record
    return out


def complete(record: dict | None, path: Path) -> bool:
    from ..utils.video import count_frames

    if record is None or not path.is_file():
        return False
    try:
        return count_frames(path) == record.get("frames")
    except Exception:  # a file that does not open is not complete
        return False


def run_prompt_set(template, prompts: str, out_dir: str, policies: list[str], progress: bool = True) -> dict:
    """Make every entry of `prompts` under every policy into `out_dir` (this rank's share); returns counts."""
    import torch

    from ..cache.policy import preset
    from ..engine.pipeline import load
    from .generate import generate

    for policy in policies:
        preset(policy)  # an unknown name fails before anything loads
    entries = read_entries(prompts)
    rank, size, local = world()
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create --out-dir {out}: {e.strerror}") from None
    manifest = out / "manifest.jsonl"
    cuda = torch.cuda.is_available() and template.device in (None, "cuda")
    template = replace(template, device=f"cuda:{local}" if cuda else template.device)
    group = Group(size, cuda)
    try:
        finished = done(manifest)
        mine = [(p, e) for p in policies for e in shard(entries, rank, size)]
        total = len(policies) * len(entries)
        bar = tqdm(total=total, unit="video", disable=not progress or rank != 0, desc=f"{size} rank(s)", dynamic_ncols=True)
        bar.update(sum(complete(finished.get((p, e.id)), video_path(out, p, e.id, policies)) for p in policies for e in entries))
        pipe, counts = None, dict(made=0, skipped=0, failed=0)
        for policy, entry in mine:
            path = video_path(out, policy, entry.id, policies)
            if complete(finished.get((policy, entry.id)), path):
                counts["skipped"] += 1
                continue
            record = dict(id=entry.id, line=entry.line, policy=policy, rank=rank, host=socket.gethostname())
            if entry.error is None:
                pipe = pipe or load(template.model, **template.load_args())
                record |= make(pipe, template, entry, policy, path, generate)
            else:
                record |= dict(status="failed", error=entry.error)
            append(manifest, record)
            counts["made" if record["status"] == "done" else "failed"] += 1
            if rank == 0:
                bar.n = count_done(manifest, policies, entries)
                if record["status"] == "done":
                    bar.set_postfix_str(f"{record['fps']:.1f} frames/s")
                bar.refresh()
            else:
                print(f"rank {rank}: {policy}/{entry.id} {record['status']}"
                      + (f" ({record['fps']:.1f} FPS)" if record["status"] == "done" else f": {record['error']}"), file=sys.stderr)
        group.barrier()
        if rank == 0:
            bar.n = count_done(manifest, policies, entries)
            bar.close()
        return dict(counts, rank=rank, world=size, entries=len(entries), manifest=str(manifest))
    finally:
        group.close()


def count_done(manifest: Path, policies: list[str], entries: list[Entry]) -> int:
    """Videos of this set the manifest calls done, made by any rank (rank 0's bar shows them all)."""
    finished = done(manifest)
    return sum((p, e.id) in finished for p in policies for e in entries)


def video_path(out: Path, policy: str, entry_id: str, policies: list[str]) -> Path:
    """DIR/<id>.mp4, or DIR/<policy>/<id>.mp4 when several policies are made."""
    return out / policy / f"{entry_id}.mp4" if len(policies) > 1 else out / f"{entry_id}.mp4"


def make(pipe, template, entry: Entry, policy: str, path: Path, generate) -> dict:
    """One video; its manifest fields (a failure is recorded, not raised: the set goes on)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    seed = entry.seed if entry.seed is not None else entry_seed(template.seed, entry.id)
    request = replace(template, prompt=entry.prompt, seed=seed, policy=policy, out=str(path))
    prompt = entry.prompt if isinstance(entry.prompt, str) else [dict(start=c.start, prompt=c.prompt) for c in entry.prompt]
    start = time.perf_counter()
    try:
        summary = generate(pipe, request, progress=False)
    except UsageError as e:
        return dict(status="failed", error=str(e), prompt=prompt, seed=seed)
    except Exception as e:  # noqa: BLE001 — a failed entry is recorded and the others go on
        return dict(status="failed", error=f"{type(e).__name__}: {e}", prompt=prompt, seed=seed)
    return dict(status="done", prompt=prompt, seed=seed, file=str(path), frames=summary.frames,
                seconds_taken=round(time.perf_counter() - start, 3), fps=summary.fps)
