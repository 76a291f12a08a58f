"""Self-Forcing-family checkpoints -> diffusers Wan DiT weights.

A Self-Forcing checkpoint (`self_forcing_dmd.pt`) is a dict with `generator_ema` / `generator`, whose keys
are original-Wan names behind a wrapper prefix. diffusers ships the original->diffusers name mapping
(`convert_wan_transformer_to_diffusers`); we strip the prefixes, choose the weights, and check that every
parameter is filled.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

from .errors import UsageError

PREFIXES = ("model._fsdp_wrapped_module.", "model.", "module.")


def read_pt(path: str | Path) -> dict:
    """torch.load without unpickling arbitrary objects."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:
        raise UsageError(f"no such file: {path}") from None
    except Exception as e:  # an unsafe pickle, or not a torch file at all
        raise UsageError(
            f"{path} cannot be read as a plain dict of tensors ({type(e).__name__}); "
            "if it holds Python objects, load it once in a trusted session and save the state dict with safetensors"
        ) from None


def strip_prefix(state_dict: dict) -> dict:
    out = {}
    for key, value in state_dict.items():
        for prefix in PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        out[key] = value
    return out


def pick_generator(checkpoint: dict, ema: bool = True) -> dict:
    """The generator's state dict from a Self-Forcing-format checkpoint (or a bare state dict)."""
    order = ("generator_ema", "generator") if ema else ("generator", "generator_ema")
    for key in order:
        if key in checkpoint:
            return checkpoint[key]
    if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return checkpoint
    raise UsageError(f"unknown checkpoint format: top-level keys {sorted(checkpoint)[:8]}")


def to_diffusers(state_dict: dict) -> dict:
    """Original-Wan DiT names (any wrapper prefix) -> diffusers WanTransformer3DModel names."""
    return convert_wan_transformer_to_diffusers(strip_prefix(state_dict))


def load_into(transformer: torch.nn.Module, diffusers_state: dict) -> None:
    """Fill every parameter of `transformer`; wrong shapes, missing or unexpected names are errors."""
    expected = transformer.state_dict()
    missing = sorted(set(expected) - set(diffusers_state))
    unexpected = sorted(set(diffusers_state) - set(expected))
    if missing or unexpected:
        raise UsageError(f"checkpoint does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, tensor in diffusers_state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise UsageError(f"tensor {name} has shape {tuple(tensor.shape)}, the model needs {tuple(expected[name].shape)}")
    transformer.load_state_dict(diffusers_state, strict=True)
