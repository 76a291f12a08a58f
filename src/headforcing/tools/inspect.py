"""`headforcing inspect PATH`: what a checkpoint file or Wan folder is, and whether it loads."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UsageError
from ..models.loading import ORIGINAL_LAYOUT, dit_config_from_original, find_wan_folder, missing_local
from ..models.checkpoint import (
    LORA_KEY,
    dit_to_diffusers,
    fit,
    pick_generator,
    read_state_dict,
    strip_prefix,
    umt5_config_from_original,
    umt5_to_transformers,
    vae_config_from_original,
    vae_to_diffusers,
)


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    loadable: bool = True


def summarize(state: dict) -> str:
    tensors = [v for v in state.values() if isinstance(v, torch.Tensor)]
    dtypes = Counter(str(t.dtype).replace("torch.", "") for t in tensors)
    params = sum(t.numel() for t in tensors)
    return f"{len(tensors)} tensors, {params:,} parameters, dtypes {dict(dtypes)}"


def check_against(report: Report, module_on_meta, converted: dict) -> None:
    missing, unexpected, wrong = fit(module_on_meta, converted)
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if items:
            report.lines.append(f"  {label}: {len(items)} e.g. {items[:3]}")
    report.loadable &= not (missing or unexpected or wrong)


def inspect_state(report: Report, name: str, raw: dict) -> None:
    """Classify one state dict by its names and check it against the module it would fill."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    if isinstance(raw, dict) and {"checkpoint", "latents", "noise"} <= set(raw):
        report.lines.append(f"{name}: a recording of the reference pipeline (replay it with `headforcing conformance`)")
        raw = raw["checkpoint"]
    if isinstance(raw, dict) and ("generator_ema" in raw or "generator" in raw):
        report.lines.append(f"{name}: Self-Forcing-format checkpoint with {sorted(k for k in raw if isinstance(k, str))}")
        raw = pick_generator(raw)
    if "generator_lora" in raw:
        raw = raw["generator_lora"]
    state = strip_prefix(raw)
    if state and all(LORA_KEY.match(k) for k in state):
        ranks = sorted({v.shape[0] for k, v in state.items() if ".lora_A" in k})
        report.lines.append(f"{name}: LoRA for {len(state) // 2} modules, rank {ranks}; {summarize(state)}")
        return
    if "patch_embedding.weight" in state:
        config = dit_config_from_original(state)
        report.lines.append(
            f"{name}: Wan DiT, original names ({config['num_layers']} layers, dim "
            f"{config['num_attention_heads'] * config['attention_head_dim']}); {summarize(state)}"
        )
        with torch.device("meta"):
            check_against(report, WanTransformer3DModel(**config), dit_to_diffusers(state))
    elif "encoder.conv1.weight" in state and "decoder.conv1.weight" in state:
        report.lines.append(f"{name}: Wan VAE, original names; {summarize(state)}")
        with torch.device("meta"):
            check_against(report, AutoencoderKLWan(**vae_config_from_original(state)), vae_to_diffusers(state))
    elif "token_embedding.weight" in state and "blocks.0.attn.q.weight" in state:
        from transformers import UMT5EncoderModel

        report.lines.append(f"{name}: umT5 encoder, original names; {summarize(state)}")
        with torch.device("meta"):
            check_against(report, UMT5EncoderModel(umt5_config_from_original(state)), umt5_to_transformers(state))
    else:
        report.lines.append(f"{name}: unknown format ({summarize(state)}); keys like {sorted(state)[:4]}")
        report.loadable = False


def inspect_own(report: Report, path: Path) -> bool:
    """Files this project writes: a session state (generate's .state.safetensors, Session.save) or a toy-world
    checkpoint (the shipped weights, `toyworld train`). False for anything else."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt", device="cpu") as f:
            meta, keys = f.metadata() or {}, list(f.keys())
    except Exception:  # not readable as safetensors: the general path says why
        return False
    if "headforcing" in meta:
        from ..engine.state import read_state

        try:
            state, _ = read_state(str(path))
        except UsageError as e:
            report.lines.append(f"{path.name}: {e}")
            report.loadable = False
            return True
        options = state.get("options", {})
        report.lines.append(f"{path.name}: a headforcing session state (model {state['model'].get('name')}, policy "
                            f"{options.get('policy')}, {state.get('chunk')} chunks, {state.get('frame')} latent frames); "
                            "continue it with `generate --resume` or Pipeline.resume")
        return True
    if keys and all(k.startswith(("transformer.", "words.")) for k in keys):
        from ..models.toy import checkpoint_info, load_toy

        try:
            load_toy(str(path))
        except UsageError as e:
            report.lines.append(f"{path.name}: looks like a toy-world checkpoint but does not load ({e})")
            report.loadable = False
            return True
        try:
            info = checkpoint_info(str(path))
            trained = f", {info.get('steps')} training steps, {info.get('minutes')} min"
        except UsageError:
            trained = ""
        report.lines.append(f"{path.name}: a toy-world model checkpoint ({len(keys)} tensors{trained}); use it with "
                            f"--toy-weights {path}")
        return True
    return False


def inspect_path(path: str | Path) -> Report:
    path = Path(path)
    report = Report()
    if not path.exists():
        raise missing_local(path, "path")
    if path.is_file():
        if path.suffix == ".safetensors" and inspect_own(report, path):
            report.lines.append(f"loadable: {'yes' if report.loadable else 'no'}")
            return report
        try:
            inspect_state(report, path.name, read_state_dict(path))
        except UsageError as e:
            report.lines.append(f"{path.name}: {e}")
            report.loadable = False
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as e:  # names it probes, then lacks
            report.lines.append(f"{path.name}: looks like a known format but lacks what it needs ({type(e).__name__}: {e})")
            report.loadable = False
        report.lines.append(f"loadable: {'yes' if report.loadable else 'no'}")
        return report
    try:
        folder = find_wan_folder(path)
    except UsageError as e:
        return Report([str(e), "loadable: no"], False)
    report.lines.append(f"{path}: Wan2.1-T2V folder, {folder.layout} layout")
    if folder.layout == "original":
        for name in ORIGINAL_LAYOUT[1:3]:
            inspect_state(report, name, read_state_dict(path / name))
    else:
        for sub in ("transformer", "vae", "text_encoder"):
            files = sorted(p.name for p in (path / sub).glob("*.safetensors")) if (path / sub).is_dir() else []
            report.lines.append(f"{sub}/: {files or 'no safetensors files'}")
            report.loadable &= bool(files)
    report.lines.append(f"loadable: {'yes' if report.loadable else 'no'}")
    return report
