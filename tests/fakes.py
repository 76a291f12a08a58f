"""Fake Wan2.1 files with the real key names (from ../shared/reference manifests) and tiny shapes."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from conftest import shared_dir
from safetensors.torch import save_file

from headforcing.models.specs import TINY, build_transformer, build_vae
from headforcing.models.checkpoint import dit_to_diffusers, umt5_to_transformers, vae_to_diffusers

WORDS = "a red blue green ball cube bounces on the grass sky cat jumps over".split()


def manifest(name: str) -> dict[str, list[int]]:
    path = shared_dir() / "reference" / name
    if not path.exists():
        import pytest

        pytest.skip(f"reference manifest {path} is absent (set HEADFORCING_SHARED)")
    return json.loads(path.read_text())["tensors"]


def renamed_from(originals: list[str], to_target) -> dict[str, str]:
    """original name -> target name, read off the converter itself (it only renames keys)."""
    return {target: orig for target, orig in to_target({k: k for k in originals}).items()}


def original_state(module, manifest_names: list[str], to_target, prefix: str = "") -> dict:
    """The module's tensors under the original file's names."""
    target_of = {orig: target for target, orig in renamed_from(manifest_names, to_target).items()}
    state = module.state_dict()
    return {prefix + orig: state[target].clone() for orig, target in target_of.items() if target in state}


def tiny_umt5():
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(7)
    config = UMT5Config(
        vocab_size=64, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2, feed_forward_proj="gated-gelu",
        relative_attention_num_buckets=32, tie_word_embeddings=False, dropout_rate=0.0,
    )
    return UMT5EncoderModel(config).eval()


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def tiny_parts():
    """(DiT, VAE, umT5, tokenizer) with random weights; the DiT reads 32-dim text like the tiny umT5."""
    return build_transformer(TINY, seed=11), build_vae(TINY, seed=12), tiny_umt5(), tiny_tokenizer()


def dit_checkpoint(dit, path: Path, key: str = "generator_ema", prefix: str = "model.") -> dict:
    """A Self-Forcing-format checkpoint of the tiny DiT; returns its original-name state dict."""
    names = [k.removeprefix("model.") for k in manifest("self_forcing_generator_1.3b.json")]
    names = [k for k in names if not k.startswith("blocks.") or int(k.split(".")[1]) < TINY.num_layers]
    state = original_state(dit, names, dit_to_diffusers)
    torch.save({key: {prefix + k: v for k, v in state.items()}}, path)
    return state


def original_folder(root: Path, dit, vae, umt5, tokenizer) -> Path:
    """The original Wan2.1-T2V-1.3B layout, tiny."""
    root.mkdir(parents=True)
    cfg = dict(dim=96, num_heads=4, num_layers=3, ffn_dim=128, text_dim=32, freq_dim=32, in_dim=16, out_dim=16, text_len=16)
    (root / "config.json").write_text(json.dumps({"_class_name": "WanModel", "model_type": "t2v", **cfg}))
    names = [k for k in manifest("self_forcing_generator_1.3b.json")]
    names = [k.removeprefix("model.") for k in names]
    names = [k for k in names if not k.startswith("blocks.") or int(k.split(".")[1]) < 3]
    save_file(original_state(dit, names, dit_to_diffusers), str(root / "diffusion_pytorch_model.safetensors"))
    torch.save(original_state(vae, list(manifest("wan21_vae_original.json")), vae_to_diffusers), root / "Wan2.1_VAE.pth")
    t5_names = [k for k in manifest("wan21_umt5_xxl_encoder_original.json") if not k.startswith("blocks.") or int(k.split(".")[1]) < 2]
    t5 = {k: v.to(torch.bfloat16) for k, v in original_state(umt5, t5_names, umt5_to_transformers).items()}
    torch.save(t5, root / "models_t5_umt5-xxl-enc-bf16.pth")
    tokenizer.save_pretrained(root / "google" / "umt5-xxl")
    return root


def diffusers_folder(root: Path, dit, vae, umt5, tokenizer) -> Path:
    """The Wan2.1-T2V-1.3B-Diffusers layout, tiny."""
    dit.save_pretrained(root / "transformer")
    vae.save_pretrained(root / "vae")
    umt5.save_pretrained(root / "text_encoder")
    tokenizer.save_pretrained(root / "tokenizer")
    return root
