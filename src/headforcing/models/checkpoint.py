"""State dicts: reading files safely, names of the original Wan / umT5 files -> diffusers / transformers
names, LoRA merging, and filling a module built on the meta device (no second copy of the weights).

A Self-Forcing checkpoint (`self_forcing_dmd.pt`) is a dict with `generator_ema` / `generator`, whose keys
are original-Wan names behind a wrapper prefix; diffusers ships the DiT and VAE name mappings, and the
umT5 mapping to transformers' `UMT5EncoderModel` is written here.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers, convert_wan_vae_to_diffusers

from ..errors import UsageError

PREFIXES = ("model._fsdp_wrapped_module.", "base_model.model.", "model.", "module.")


def read_pt(path: str | Path) -> dict:
    """torch.load without unpickling arbitrary objects (memory-mapped where the format allows)."""
    twin = Path(path).with_suffix(".safetensors")
    hint = f"; {twin} beside it may be the same weights: name it instead" if twin.is_file() else ""
    try:
        with warnings.catch_warnings():  # torch's notes on legacy pickles: a refusal below says what matters, in one line
            warnings.simplefilter("ignore", UserWarning)
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except FileNotFoundError:
        raise UsageError(f"no such file: {path}") from None
    except Exception as e:  # an unsafe pickle, or not a torch file at all
        raise UsageError(
            f"{path} cannot be read as a plain dict of tensors ({type(e).__name__}); "
            "if it holds Python objects, load it once in a trusted session and save the state dict with safetensors" + hint
        ) from None


def read_state_dict(path: str | Path) -> dict:
    """A .safetensors, .pt, .pth or .bin file -> dict (tensors stay memory-mapped where possible). Exactly the
    file named is read (a refused pickle names a .safetensors twin beside it, if any, but never reads it)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except FileNotFoundError:
            raise UsageError(f"no such file: {path}") from None
        except Exception as e:
            raise UsageError(f"{path} is not a readable safetensors file ({e})") from None
    return read_pt(path)


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
    raise UsageError(f"unknown checkpoint format: top-level keys {sorted(map(str, checkpoint))[:8]}")


LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])(\.[^.]+)?\.weight$")


def merge_lora(state: dict, lora: dict, alpha: float | None = None) -> dict:
    """W + (alpha / rank) B A for every module the LoRA targets (peft names, any wrapper prefix).
    alpha None means alpha = rank (scale 1, LongLive's released setting). Both in original-Wan names."""
    if "generator_lora" in lora:
        lora = lora["generator_lora"]
    factors: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in strip_prefix(lora).items():
        match = LORA_KEY.match(key)
        if match is None:
            raise UsageError(f"LoRA tensor {key!r} is not named <module>.lora_A/lora_B.weight")
        factors.setdefault(match["module"], {})[match["which"]] = value
    out = dict(state)
    for module, ab in factors.items():
        name = f"{module}.weight"
        if set(ab) != {"A", "B"}:
            raise UsageError(f"LoRA for {module} lacks lora_{'B' if 'A' in ab else 'A'}")
        if name not in out:
            raise UsageError(f"LoRA targets {module}, which the checkpoint does not have")
        a, b, w = ab["A"].float(), ab["B"].float(), out[name]
        if (b.shape[0], a.shape[1]) != tuple(w.shape) or b.shape[1] != a.shape[0]:
            raise UsageError(f"LoRA for {module}: B {tuple(b.shape)} A {tuple(a.shape)} do not fit W {tuple(w.shape)}")
        scale = 1.0 if alpha is None else alpha / a.shape[0]
        out[name] = (w.float() + scale * (b @ a)).to(w.dtype)
    return out


def dit_to_diffusers(state_dict: dict) -> dict:
    """Original-Wan DiT names (any wrapper prefix) -> diffusers WanTransformer3DModel names."""
    return convert_wan_transformer_to_diffusers(strip_prefix(state_dict))


def vae_to_diffusers(state_dict: dict) -> dict:
    """Original `Wan2.1_VAE.pth` names -> diffusers AutoencoderKLWan names."""
    return convert_wan_vae_to_diffusers(dict(state_dict))


def vae_config_from_original(state: dict) -> dict:
    """AutoencoderKLWan config of an original VAE file (the Wan2.1 layout, any width)."""
    return dict(
        base_dim=state["encoder.conv1.weight"].shape[0],
        z_dim=state["conv2.weight"].shape[0],
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=2,
        temperal_downsample=[False, True, True],
    )


UMT5_RENAMES = (
    (r"^token_embedding\.weight$", "shared.weight"),
    (r"^norm\.weight$", "encoder.final_layer_norm.weight"),
    (r"^blocks\.(\d+)\.norm1\.weight$", r"encoder.block.\1.layer.0.layer_norm.weight"),
    (r"^blocks\.(\d+)\.attn\.([qkvo])\.weight$", r"encoder.block.\1.layer.0.SelfAttention.\2.weight"),
    (r"^blocks\.(\d+)\.pos_embedding\.embedding\.weight$", r"encoder.block.\1.layer.0.SelfAttention.relative_attention_bias.weight"),
    (r"^blocks\.(\d+)\.norm2\.weight$", r"encoder.block.\1.layer.1.layer_norm.weight"),
    (r"^blocks\.(\d+)\.ffn\.gate\.0\.weight$", r"encoder.block.\1.layer.1.DenseReluDense.wi_0.weight"),
    (r"^blocks\.(\d+)\.ffn\.fc1\.weight$", r"encoder.block.\1.layer.1.DenseReluDense.wi_1.weight"),
    (r"^blocks\.(\d+)\.ffn\.fc2\.weight$", r"encoder.block.\1.layer.1.DenseReluDense.wo.weight"),
)


def umt5_to_transformers(state: dict) -> dict:
    """Original Wan umT5 encoder names -> transformers UMT5EncoderModel names (embedding tied)."""
    out = {}
    for key, value in state.items():
        for pattern, target in UMT5_RENAMES:
            new, hits = re.subn(pattern, target, key)
            if hits:
                out[new] = value
                break
        else:
            raise UsageError(f"unexpected tensor {key!r} in the umT5 encoder file")
    if "shared.weight" in out:
        out["encoder.embed_tokens.weight"] = out["shared.weight"]
    return out


def umt5_config_from_original(state: dict):
    from transformers import UMT5Config

    vocab, d_model = state["token_embedding.weight"].shape
    buckets, heads = state["blocks.0.pos_embedding.embedding.weight"].shape
    layers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    return UMT5Config(
        vocab_size=vocab,
        d_model=d_model,
        d_kv=state["blocks.0.attn.q.weight"].shape[0] // heads,
        d_ff=state["blocks.0.ffn.fc1.weight"].shape[0],
        num_layers=layers,
        num_heads=heads,
        relative_attention_num_buckets=buckets,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        layer_norm_epsilon=1e-6,
        dropout_rate=0.0,
    )


def fit(module: torch.nn.Module, state: dict) -> tuple[list[str], list[str], list[str]]:
    """(missing names, unexpected names, 'name: file shape vs model shape') of a state dict against a module."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{name}: {tuple(state[name].shape)} vs {tuple(expected[name].shape)}"
        for name in sorted(set(state) & set(expected))
        if tuple(state[name].shape) != tuple(expected[name].shape)
    ]
    return missing, unexpected, wrong


def assign(module: torch.nn.Module, state: dict, dtype=None, keep_fp32=()) -> torch.nn.Module:
    """Fill every parameter of `module` (built on the meta device) with the given tensors, cast to dtype
    (names containing a `keep_fp32` part stay float32). Missing, unexpected or mis-shaped tensors are errors."""
    missing, unexpected, wrong = fit(module, state)
    if missing or unexpected:
        raise UsageError(
            f"{type(module).__name__}: {len(missing)} tensors missing {missing[:4]}, "
            f"{len(unexpected)} unexpected {unexpected[:4]}"
        )
    if wrong:
        raise UsageError(f"{type(module).__name__}: tensor {wrong[0].replace(' vs ', ' in the file, the model needs ')}")
    filled = {}
    for name, tensor in state.items():
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(torch.float32 if set(name.split(".")) & set(keep_fp32) else dtype)
        filled[name] = tensor
    module.load_state_dict(filled, strict=True, assign=True)
    return module
