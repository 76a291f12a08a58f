"""`headforcing bench --estimate`: the memory a run needs, computed from the model's spec.

Nothing is read or allocated: the DiT, the VAE and the text encoder are built on PyTorch's meta device and
their parameters counted; each preset's head-wise cache is allocated on the meta device at the video size and
its buffers summed (the same code a run allocates with). DiT activations are the largest tensors one block
holds at once while it runs a chunk in inference (no grad, SDPA/flash attention: no S x S matrix): the input and
output hidden states, q, k and v, and the feed-forward hidden layer, T x (5 dim + ffn) values.
"""

from __future__ import annotations

import torch

from ..cache.headwise import HeadwiseCache
from ..cache.policy import PRESETS, preset
from ..errors import UsageError
from ..models.specs import ModelSpec

GiB = 2**30
# umT5-XXL's encoder as Wan2.1 ships it (models_t5_umt5-xxl-enc-bf16.pth: 24 layers, 64 heads, dim 4096,
# ffn 10240, vocab 256384, 32 relative-position buckets in every layer)
UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", is_encoder_decoder=False)


def parameters(build) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build().parameters())


def dit_parameters(spec: ModelSpec) -> int:
    from diffusers import WanTransformer3DModel

    return parameters(lambda: WanTransformer3DModel(**spec.transformer))


def vae_parameters(spec: ModelSpec) -> int:
    from diffusers import AutoencoderKLWan

    return parameters(lambda: AutoencoderKLWan(**spec.vae)) if spec.vae else 0


def text_encoder_parameters() -> int:
    from transformers import UMT5Config, UMT5EncoderModel

    return parameters(lambda: UMT5EncoderModel(UMT5Config(**UMT5_XXL)))


def grid(spec: ModelSpec, size: tuple[int, int]) -> tuple[int, int]:
    """Tokens per latent frame as (rows, columns) at a video size (width, height)."""
    patch = spec.transformer["patch_size"]
    return size[1] // spec.vae_stride[1] // patch[1], size[0] // spec.vae_stride[2] // patch[2]


def cache_bytes(spec: ModelSpec, policy: str, size: tuple[int, int], dtype: torch.dtype) -> int | None:
    """The bytes of one session's head-wise cache for `policy` (its buffers, allocated on the meta device); None
    where the policy cannot run at this size."""
    pol = preset(policy, spec.chunk_frames, spec.trained_frames)
    headmap = pol.resolve_headmap(spec.num_layers, spec.num_heads)
    cache = HeadwiseCache(pol, headmap, spec.head_dim, spec.trained_frames, spec.chunk_frames)
    try:
        cache.allocate(1, grid(spec, size), dtype, torch.device("meta"))
    except UsageError:  # a policy that cannot run at this size (the coarse level needs an even token grid)
        return None
    return cache.nbytes()


def activation_bytes(spec: ModelSpec, size: tuple[int, int], dtype: torch.dtype) -> int:
    rows, cols = grid(spec, size)
    tokens = spec.chunk_frames * rows * cols
    dim = spec.transformer["num_attention_heads"] * spec.transformer["attention_head_dim"]
    return tokens * (5 * dim + spec.transformer["ffn_dim"]) * torch.finfo(dtype).bits // 8


def estimate(spec: ModelSpec, sizes: list[tuple[int, int]], dtype: torch.dtype = torch.bfloat16, policies=PRESETS) -> dict:
    width = torch.finfo(dtype).bits // 8
    out = dict(model=spec.name, dtype=str(dtype).replace("torch.", ""), dit_parameters=dit_parameters(spec),
               vae_parameters=vae_parameters(spec), sizes={})
    out["text_encoder_parameters"] = text_encoder_parameters() if spec.name.startswith("wan") else 0
    for size in sizes:
        bounded = [p for p in policies if preset(p, spec.chunk_frames, spec.trained_frames).bounded]
        out["sizes"][f"{size[0]}x{size[1]}"] = dict(
            activations=activation_bytes(spec, size, dtype), cache={p: cache_bytes(spec, p, size, dtype) for p in bounded},
            tokens_per_frame=grid(spec, size)[0] * grid(spec, size)[1])
    out["bytes"] = dict(dit=out["dit_parameters"] * width, vae=out["vae_parameters"] * 4,  # the VAE runs in float32
                        text_encoder=out["text_encoder_parameters"] * width)
    return out


def table(report: dict) -> str:
    b = report["bytes"]
    lines = [f"Model {report['model']}, {report['dtype']} (VAE in float32); parameters: DiT {report['dit_parameters']:,}, "
             f"VAE {report['vae_parameters']:,}, text encoder {report['text_encoder_parameters']:,}.", "",
             "| size | tokens / latent frame | DiT weights | text encoder on the GPU | VAE weights | DiT activations / chunk | "
             "cache: " + " / ".join(next(iter(report["sizes"].values()))["cache"]) + " | total (no text encoder) |",
             "|---|---|---|---|---|---|---|---|"]
    for size, row in report["sizes"].items():
        caches = row["cache"]
        largest = max(v for v in caches.values() if v is not None)
        total = b["dit"] + b["vae"] + row["activations"] + largest
        lines.append(f"| {size} | {row['tokens_per_frame']} | {b['dit'] / GiB:.2f} GiB | {b['text_encoder'] / GiB:.2f} GiB | "
                     f"{b['vae'] / GiB:.2f} GiB | {row['activations'] / GiB:.3f} GiB | "
                     + " / ".join("–" if v is None else f"{v / GiB:.3f}" for v in caches.values()) + f" GiB | {total / GiB:.2f} GiB + decode |")
    lines += ["", "Total: DiT + VAE weights + one chunk's activations + the largest cache; the text encoder runs once per "
              "prompt and is offloaded after (`--text-encoder-device cpu` keeps it off the GPU); the VAE's decode "
              "activations are not in the model: measure them with `bench --gpu-report`."]
    return "\n".join(lines) + "\n"


def weight_bytes(spec: ModelSpec, dtype: torch.dtype) -> int:
    """The DiT's weights in `dtype` and the VAE's in float32."""
    return dit_parameters(spec) * (torch.finfo(dtype).bits // 8) + vae_parameters(spec) * 4


def run_bytes(spec: ModelSpec, policy: str, size: tuple[int, int], dtype: torch.dtype, weights: int | None = None) -> int:
    """What one run holds at once, by this model (DiT and VAE weights, one chunk's activations, the cache); the
    text encoder is left out (it is moved off after encoding). `weights`: weight_bytes, when already known."""
    weights = weight_bytes(spec, dtype) if weights is None else weights
    return weights + activation_bytes(spec, size, dtype) + (cache_bytes(spec, policy, size, dtype) or 0)


def available_bytes(device: torch.device) -> int | None:
    """Memory a run can still take on `device`: the GPU's free memory, or the machine's MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def check_fits(spec: ModelSpec, policy: str, size: tuple[int, int], dtype: torch.dtype, device: torch.device) -> None:
    """Before anything is allocated: refuse a run that cannot fit, naming the largest size of its shape that would."""
    free = available_bytes(device)
    weights = weight_bytes(spec, dtype)  # the same at every size: counted once, not in the search below
    need = run_bytes(spec, policy, size, dtype, weights)
    if free is None or need <= free:
        return
    m = spec.size_multiple
    scale = (free / need) ** 0.5
    fit = (max(m, int(size[0] * scale) // m * m), max(m, int(size[1] * scale) // m * m))
    while (fit[0] > m or fit[1] > m) and run_bytes(spec, policy, fit, dtype, weights) > free:
        fit = (max(m, fit[0] - m), max(m, fit[1] - m))
    raise UsageError(f"size {size[0]}x{size[1]} needs about {need / GiB:.1f} GiB on {device.type} (weights, activations, "
                     f"cache) and {free / GiB:.1f} GiB are free; {fit[0]}x{fit[1]} would fit")
