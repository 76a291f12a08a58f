"""Real-weight loading, tested with the real names/shapes (manifests, meta device) and tiny fakes on disk."""

import pytest
import torch
from conftest import golden
from fakes import dit_checkpoint, diffusers_folder, manifest, original_folder, tiny_parts

from headforcing.cli import main
from headforcing.tools.conformance import load_recording
from headforcing.errors import UsageError
from headforcing.models.loading import (
    dit_from_original,
    find_wan_folder,
    read_causal_checkpoint,
    umt5_from_original,
    vae_from_original,
)
from headforcing.models.specs import WAN_1_3B
from headforcing.models.text import WanTextEncoder
from headforcing.utils.video import count_frames
from headforcing.models.checkpoint import merge_lora, strip_prefix


def meta_state(name: str) -> dict:
    return {k: torch.empty(shape, device="meta") for k, shape in manifest(name).items()}


def test_self_forcing_manifest_fills_the_real_dit():
    state = meta_state("self_forcing_generator_1.3b.json")
    assert len(state) == 825
    model = dit_from_original(strip_prefix(state), WAN_1_3B.transformer, torch.bfloat16)
    params = dict(model.named_parameters())
    assert sum(p.numel() for p in params.values()) == 1_418_996_800
    assert all(p.device.type == "meta" for p in params.values())  # all came from the manifest's tensors
    assert params["blocks.0.attn1.to_q.weight"].dtype == torch.bfloat16
    assert params["blocks.0.scale_shift_table"].dtype == torch.float32  # kept in fp32, as diffusers does
    assert model.config.num_layers == 30 and model.config.num_attention_heads == 12


def test_vae_manifest_fills_the_real_vae():
    state = meta_state("wan21_vae_original.json")
    vae = vae_from_original(state)
    assert len(state) == 194 and len(vae.state_dict()) == 194
    assert all(p.device.type == "meta" for p in vae.parameters())
    assert vae.config.base_dim == 96 and vae.config.z_dim == 16


def test_umt5_manifest_fills_the_real_encoder():
    state = meta_state("wan21_umt5_xxl_encoder_original.json")
    encoder = umt5_from_original(state, torch.bfloat16)
    c = encoder.config
    assert (c.num_layers, c.num_heads, c.d_model, c.d_ff, c.vocab_size) == (24, 64, 4096, 10240, 256384)
    assert all(p.device.type == "meta" for p in encoder.parameters())
    assert encoder.encoder.embed_tokens.weight.shape == (256384, 4096)


def test_a_tensor_of_the_wrong_shape_is_named():
    state = strip_prefix(meta_state("self_forcing_generator_1.3b.json"))
    state["blocks.3.ffn.0.weight"] = torch.empty(100, 1536, device="meta")
    with pytest.raises(UsageError, match=r"blocks.3.ffn.net.0.proj.weight: \(100, 1536\) in the file, the model needs \(8960, 1536\)"):
        dit_from_original(state, WAN_1_3B.transformer)


def test_golden_checkpoint_through_the_public_loader(tmp_path):
    """A Self-Forcing checkpoint file on disk -> read_causal_checkpoint -> the golden latents."""
    from headforcing.tools.conformance import replay

    rec = load_recording(golden("sink3_window9_f15.pt"))
    path = tmp_path / "self_forcing_dmd.pt"
    torch.save(rec["checkpoint"], path)
    state = read_causal_checkpoint(path)
    rec["checkpoint"] = {"generator_ema": state}
    assert (replay(rec) - rec["latents"]).abs().max().item() < 1e-4


def test_lora_merge_is_w_plus_scaled_ba():
    gen = torch.Generator().manual_seed(0)
    base = {"blocks.0.self_attn.q.weight": torch.randn(8, 6, generator=gen), "blocks.0.ffn.0.weight": torch.randn(5, 6, generator=gen)}
    a, b = torch.randn(2, 6, generator=gen), torch.randn(8, 2, generator=gen)
    lora = {"generator_lora": {"base_model.model.blocks.0.self_attn.q.lora_A.weight": a, "base_model.model.blocks.0.self_attn.q.lora_B.weight": b}}
    merged = merge_lora(base, lora, alpha=4.0)  # scale = alpha / rank = 2
    assert torch.allclose(merged["blocks.0.self_attn.q.weight"], base["blocks.0.self_attn.q.weight"] + 2.0 * b @ a)
    assert torch.equal(merged["blocks.0.ffn.0.weight"], base["blocks.0.ffn.0.weight"])
    assert torch.allclose(merge_lora(base, lora)["blocks.0.self_attn.q.weight"], base["blocks.0.self_attn.q.weight"] + b @ a)
    with pytest.raises(UsageError, match="does not have"):
        merge_lora(base, {"blocks.9.x.lora_A.weight": a, "blocks.9.x.lora_B.weight": b})


def test_checkpoint_and_lora_files(tmp_path):
    dit, *_ = tiny_parts()
    state = dit_checkpoint(dit, tmp_path / "base.pt", key="generator", prefix="model._fsdp_wrapped_module.")
    a, b = torch.randn(4, 96), torch.randn(96, 4)
    torch.save({"generator_lora": {"base_model.model.blocks.1.cross_attn.k.lora_A.weight": a,
                                   "base_model.model.blocks.1.cross_attn.k.lora_B.weight": b}}, tmp_path / "lora.pt")
    merged = read_causal_checkpoint(tmp_path / "base.pt", tmp_path / "lora.pt")
    assert torch.allclose(merged["blocks.1.cross_attn.k.weight"], state["blocks.1.cross_attn.k.weight"] + b @ a)
    assert torch.equal(merged["blocks.2.self_attn.q.weight"], state["blocks.2.self_attn.q.weight"])


@pytest.mark.parametrize("layout", ["original", "diffusers"])
def test_fake_folder_loads_and_generates(layout, tmp_path):
    dit, vae, umt5, tokenizer = tiny_parts()
    make = original_folder if layout == "original" else diffusers_folder
    root = make(tmp_path / "Wan2.1-T2V-1.3B", dit, vae, umt5, tokenizer)
    folder = find_wan_folder(root)
    assert folder.layout == layout
    # components equal the weights that were written
    loaded_vae = folder.load_vae()
    assert all(torch.equal(loaded_vae.state_dict()[k], v) for k, v in vae.state_dict().items())
    tok, encoder = folder.load_text_encoder()
    text_len = folder.text_len()
    context = WanTextEncoder(tok, encoder, text_len)("a  red ball &amp; the sky")
    ids = tokenizer(["a red ball & the sky"], return_tensors="pt")
    expect_encoder = umt5 if layout == "diffusers" else umt5.to(torch.bfloat16).float()
    with torch.no_grad():
        expect = expect_encoder(input_ids=ids.input_ids).last_hidden_state
    n = ids.input_ids.shape[1]
    assert context.shape == (1, text_len, 32) and torch.allclose(context[:, :n], expect, atol=1e-5)
    assert context[:, n:].abs().max() == 0
    # end to end from the command line
    dit_checkpoint(dit, tmp_path / "self_forcing_dmd.pt")
    out = tmp_path / "v.mp4"
    code = main(["generate", "--wan-dir", str(root), "--checkpoint", str(tmp_path / "self_forcing_dmd.pt"),
                 "--prompt", "a red ball", "--seconds", "1", "--size", "64x64", "--out", str(out), "--quiet"])
    assert code == 0 and count_frames(out) == 4 * 6 - 3
    code = main(["generate", "--wan-dir", str(root), "--checkpoint", str(tmp_path / "self_forcing_dmd.pt"), "--dtype", "bfloat16",
                 "--prompt", "a red ball", "--seconds", "1", "--size", "64x64", "--out", str(out), "--quiet"])
    assert code == 0 and count_frames(out) == 4 * 6 - 3  # bfloat16 on a CPU: the real-weights path too


def test_missing_pieces_are_listed(tmp_path, capsys):
    root = tmp_path / "wan"
    root.mkdir()
    (root / "config.json").write_text("{}")
    (root / "Wan2.1_VAE.pth").write_bytes(b"")
    with pytest.raises(UsageError, match=r"lacks \['models_t5_umt5-xxl-enc-bf16.pth', 'google/umt5-xxl'\]; found"):
        find_wan_folder(root)
    with pytest.raises(UsageError, match="looks like a hub id: only local files"):
        find_wan_folder("Wan-AI/Wan2.1-T2V-1.3B")
    assert main(["generate", "--prompt", "x", "--wan-dir", str(root), "--out", str(tmp_path / "v.mp4")]) == 2
    assert "need both --wan-dir and --checkpoint" in capsys.readouterr().err


def test_unknown_checkpoint_format_names_its_keys(tmp_path):
    torch.save({"optimizer": {"lr": torch.tensor(1.0)}, "step": torch.tensor(3)}, tmp_path / "x.pt")
    with pytest.raises(UsageError, match=r"top-level keys \['optimizer', 'step'\]"):
        read_causal_checkpoint(tmp_path / "x.pt")


def test_a_pickle_of_objects_is_refused(tmp_path):
    import argparse

    torch.save({"generator": {"a": torch.zeros(1)}, "args": argparse.Namespace(lr=1)}, tmp_path / "x.pt")
    with pytest.raises(UsageError, match="safetensors"):
        read_causal_checkpoint(tmp_path / "x.pt")


def test_inspect(tmp_path, capsys):
    dit, vae, umt5, tokenizer = tiny_parts()
    root = original_folder(tmp_path / "wan", dit, vae, umt5, tokenizer)
    assert main(["inspect", str(root)]) == 0
    out = capsys.readouterr().out
    assert "original layout" in out and "Wan VAE, original names" in out and "umT5 encoder" in out and "loadable: yes" in out
    dit_checkpoint(dit, tmp_path / "ck.pt")
    state = torch.load(tmp_path / "ck.pt")
    del state["generator_ema"]["model.blocks.0.self_attn.q.weight"]
    torch.save(state, tmp_path / "broken.pt")
    assert main(["inspect", str(tmp_path / "broken.pt")]) == 1
    out = capsys.readouterr().out
    assert "missing: 1" in out and "blocks.0.attn1.to_q.weight" in out and "loadable: no" in out


def test_exactly_the_named_file_is_read(tmp_path, capsys):
    """A .pt beside a .safetensors twin: the named one is read; a garbage .pt is refused (naming the twin),
    never silently replaced by the twin; a valid .pt beside a bad twin loads."""
    from safetensors.torch import save_file

    from headforcing.models.checkpoint import read_state_dict

    torch.save({"w": torch.zeros(2)}, tmp_path / "model.pt")
    save_file({"w": torch.ones(2)}, str(tmp_path / "model.safetensors"))
    assert torch.equal(read_state_dict(tmp_path / "model.pt")["w"], torch.zeros(2))
    assert torch.equal(read_state_dict(tmp_path / "model.safetensors")["w"], torch.ones(2))
    (tmp_path / "model.pt").write_bytes(b"garbage")
    with pytest.raises(UsageError, match="model.safetensors beside it"):
        read_state_dict(tmp_path / "model.pt")
    assert main(["inspect", str(tmp_path / "model.pt")]) == 1
    assert "loadable: no" in capsys.readouterr().out
    torch.save({"w": torch.zeros(2)}, tmp_path / "good.pt")
    (tmp_path / "good.safetensors").write_bytes(b"bad twin")
    assert torch.equal(read_state_dict(tmp_path / "good.pt")["w"], torch.zeros(2))
