"""Measured head roles by default: profiles keyed by the weights' fingerprint.

`headforcing profile` measures where each head's attention goes (cache/profiler.py) and writes the statistics
with the weights' fingerprint (`Pipeline.fingerprint()`). A typed policy run without `--heads` takes its roles
from such a profile, classified by the policy's own rule, when one matches the loaded weights:
  1. the user's profiles, `headforcing profile --install` (folder $HEADFORCING_PROFILES, default
     ~/.cache/headforcing/profiles/<fingerprint>.json);
  2. the profiles shipped beside the packaged toy weights (`weights/*.heads.json`).
With none, the policy's fixed shares by head index (`HeadMap.by_fraction`), as before; `--heads auto` profiles the
first window online instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..cache.headmap import HeadMap
from ..cache.profiler import classify
from ..errors import UsageError

SHIPPED = Path(__file__).resolve().parents[1] / "weights"


def user_folder() -> Path:
    return Path(os.environ.get("HEADFORCING_PROFILES", Path.home() / ".cache" / "headforcing" / "profiles"))


def find_profile(fingerprint: str) -> tuple[dict, str] | None:
    """(the statistics, where they came from) of a profile made on these weights, or None."""
    mine = user_folder() / f"{fingerprint}.json"
    candidates = ([mine] if mine.is_file() else []) + sorted(SHIPPED.glob("*.heads.json"))
    for path in candidates:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a damaged cached profile is ignored, never fatal: the default shares still apply
        if isinstance(data, dict) and data.get("weights") == fingerprint and isinstance(data.get("stats"), dict):
            return data["stats"], str(path)
    return None


def measured_headmap(fingerprint: str, rule: str, num_layers: int, num_heads: int) -> tuple[HeadMap, str] | None:
    """The HeadMap a profile of these weights gives under `rule` (and its source), or None when there is no
    profile or the rule leaves a role without heads."""
    found = find_profile(fingerprint)
    if found is None:
        return None
    stats, source = found
    if (stats.get("num_layers"), stats.get("num_heads")) != (num_layers, num_heads):
        return None
    try:
        return classify(stats, rule), source
    except UsageError:
        return None


def install(data: dict) -> Path:
    """Keep a profile (a heads file carrying `weights` and `stats`) as the default for those weights."""
    folder = user_folder()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{data['weights']}.json"
    tmp = path.with_suffix(".partial")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)
    return path
