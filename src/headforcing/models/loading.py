"""Real weights from local files only: a Wan2.1-T2V base folder (VAE, umT5 text encoder, tokenizer; either
layout) and a causal DiT checkpoint (Self Forcing, Causal Forcing, Rolling Forcing, LongLive + LoRA).

Every module is built on the meta device and filled by assignment, so loading never holds two copies of
the weights; .pt files are read with weights_only=True and memory-mapped.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

from ..errors import UsageError
from .specs import transformer_config_from_original
from .checkpoint import (
    assign,
    dit_to_diffusers,
    merge_lora,
    pick_generator,
    read_state_dict,
    strip_prefix,
    umt5_config_from_original,
    umt5_to_transformers,
    vae_config_from_original,
    vae_to_diffusers,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub, whatever a library would like to do

DIFFUSERS_LAYOUT = ("transformer/config.json", "vae", "text_encoder", "tokenizer")
ORIGINAL_LAYOUT = ("config.json", "Wan2.1_VAE.pth", "models_t5_umt5-xxl-enc-bf16.pth", "google/umt5-xxl")


def missing_local(path: str | Path, what: str) -> UsageError:
    text = str(path)
    if "/" in text and not text.startswith((".", "/", "~")) and text.count("/") == 1:
        return UsageError(f"{what} {text!r} looks like a hub id: only local files are read (download it first)")
    return UsageError(f"{what} {text} does not exist")


@dataclass(frozen=True)
class WanFolder:
    root: Path
    layout: str  # "diffusers" or "original"

    def transformer_config(self) -> dict:
        if self.layout == "original":
            return transformer_config_from_original(json.loads((self.root / "config.json").read_text()))
        cfg = json.loads((self.root / "transformer" / "config.json").read_text())
        return {k: v for k, v in cfg.items() if not k.startswith("_")}

    def text_len(self) -> int:
        if self.layout == "original":
            return json.loads((self.root / "config.json").read_text()).get("text_len", 512)
        return 512

    def load_vae(self, dtype=torch.float32) -> AutoencoderKLWan:
        if self.layout == "diffusers":
            return AutoencoderKLWan.from_pretrained(self.root / "vae", torch_dtype=dtype).eval().requires_grad_(False)
        return vae_from_original(read_state_dict(self.root / "Wan2.1_VAE.pth"), dtype)

    def load_text_encoder(self, dtype=torch.float32):
        """(tokenizer, UMT5EncoderModel)."""
        from transformers import AutoTokenizer, UMT5EncoderModel

        if self.layout == "diffusers":
            tokenizer = AutoTokenizer.from_pretrained(self.root / "tokenizer", local_files_only=True)
            encoder = UMT5EncoderModel.from_pretrained(self.root / "text_encoder", dtype=dtype, local_files_only=True)
        else:
            tokenizer = AutoTokenizer.from_pretrained(self.root / "google" / "umt5-xxl", local_files_only=True)
            encoder = umt5_from_original(read_state_dict(self.root / "models_t5_umt5-xxl-enc-bf16.pth"), dtype)
        return tokenizer, encoder.eval().requires_grad_(False)


def find_wan_folder(path: str | Path) -> WanFolder:
    """Detect the layout of a Wan2.1-T2V folder; say what is missing if it is incomplete."""
    root = Path(path).expanduser()
    if not root.exists():
        raise missing_local(path, "Wan folder")
    if not root.is_dir():
        raise UsageError(f"Wan folder {root} is a file, not a folder")
    found = sorted(p.name for p in root.iterdir())
    for layout, needs in (("diffusers", DIFFUSERS_LAYOUT), ("original", ORIGINAL_LAYOUT)):
        present = [n for n in needs if (root / n).exists()]
        if present and (layout == "original" or (root / "transformer").exists()):
            missing = [n for n in needs if n not in present]
            if missing:
                raise UsageError(f"{root} looks like the {layout} layout but lacks {missing}; found {found}")
            return WanFolder(root, layout)
    raise UsageError(
        f"{root} is not a Wan2.1-T2V folder: found {found[:10]}; the diffusers layout needs "
        f"{list(DIFFUSERS_LAYOUT)}, the original layout {list(ORIGINAL_LAYOUT)}"
    )


def dit_config_from_original(state: dict) -> dict:
    """A DiT config read off original-Wan tensor shapes (heads assumed 128 wide, as in every Wan size)."""
    dim, in_dim = state["patch_embedding.weight"].shape[:2]
    return transformer_config_from_original(
        dict(
            dim=dim,
            num_heads=dim // 128 if dim % 128 == 0 else 1,
            num_layers=1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks.")),
            ffn_dim=state["blocks.0.ffn.0.weight"].shape[0],
            text_dim=state["text_embedding.0.weight"].shape[1],
            freq_dim=state["time_embedding.0.weight"].shape[1],
            in_dim=in_dim,
            out_dim=state["head.head.weight"].shape[0] // 4,
        )
    )


def dit_from_original(state: dict, config: dict, dtype=torch.float32) -> WanTransformer3DModel:
    """A diffusers Wan DiT filled from original-Wan names (any wrapper prefix)."""
    with torch.device("meta"):
        model = WanTransformer3DModel(**config)
    assign(model, dit_to_diffusers(state), dtype, keep_fp32=model._keep_in_fp32_modules)
    model.rope = WanRotaryPosEmbed(config["attention_head_dim"], config["patch_size"], 1024)  # its only buffers
    return model.eval().requires_grad_(False)


def vae_from_original(state: dict, dtype=torch.float32) -> AutoencoderKLWan:
    with torch.device("meta"):
        vae = AutoencoderKLWan(**vae_config_from_original(state))
    return assign(vae, vae_to_diffusers(state), dtype).eval().requires_grad_(False)


def umt5_from_original(state: dict, dtype=torch.float32):
    from transformers import UMT5EncoderModel

    with torch.device("meta"):
        encoder = UMT5EncoderModel(umt5_config_from_original(state))
    assign(encoder, umt5_to_transformers(state), dtype)
    return encoder.eval().requires_grad_(False)


def read_causal_checkpoint(path: str | Path, lora: str | Path | None = None, lora_alpha=None, ema=True) -> dict:
    """The generator's weights in original-Wan names, prefixes stripped, LoRA merged."""
    if not Path(path).exists():
        raise missing_local(path, "checkpoint")
    state = strip_prefix(pick_generator(read_state_dict(path), ema))
    if lora is not None:
        if not Path(lora).exists():
            raise missing_local(lora, "LoRA")
        state = merge_lora(state, read_state_dict(lora), lora_alpha)
    if "patch_embedding.weight" not in state:
        raise UsageError(f"{path} holds no Wan DiT: keys like {sorted(state)[:4]}")
    return state
