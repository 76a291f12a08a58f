"""Streaming decode: each chunk of latents becomes video frames as soon as it is sampled.

diffusers' AutoencoderKLWan decodes causally, one latent frame at a time, with a feature cache of its
causal convolutions. Keeping that cache across chunks makes chunk-by-chunk decoding identical to a full
decode: N latent frames give 4N-3 video frames. `grouped` decodes all of a chunk's frames in one decoder
call (after the very first frame, which the decoder treats specially): the same causal computation in
fewer, larger calls (equal to the frame-by-frame decode within float rounding, 1e-5 in fp32).
"""

from __future__ import annotations

import torch


class StreamingVaeDecoder:
    writes_video = True

    def __init__(self, vae, grouped: bool = True):
        self.vae, self.grouped = vae, grouped
        param = next(vae.parameters())
        self.device, self.dtype = param.device, param.dtype
        cfg = vae.config
        self.mean = torch.tensor(cfg.latents_mean, device=self.device).view(1, -1, 1, 1, 1)
        self.std = torch.tensor(cfg.latents_std, device=self.device).view(1, -1, 1, 1, 1)
        self.reset()

    def reset(self) -> None:
        self.feat_cache = [None] * sum(type(m).__name__ == "WanCausalConv3d" for m in self.vae.decoder.modules())
        self.first = True

    def state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """(JSON-able fields, tensors): the causal convolutions' feature cache (a tensor, None or diffusers'
        "Rep" marker per entry) and whether the next latent frame is the first."""
        kinds, tensors = [], {}
        for j, entry in enumerate(self.feat_cache):
            if isinstance(entry, torch.Tensor):
                tensors[f"feat.{j}"] = entry
                kinds.append("tensor")
            else:
                kinds.append(entry)
        return dict(first=self.first, feat=kinds), tensors

    def decodes_like(self, meta: dict) -> bool:
        """A saved state is of a decoder with these causal convolutions."""
        return len(meta["feat"]) == len(self.feat_cache)

    def check_state(self, meta: dict, tensors: dict[str, torch.Tensor]) -> str | None:
        """What is missing from a saved state of a decoder like this one (None: nothing)."""
        missing = [j for j, kind in enumerate(meta["feat"]) if kind == "tensor" and f"feat.{j}" not in tensors]
        return f"decoder.feat.{missing[0]} is missing" if missing else None

    def load_state(self, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
        self.feat_cache = [tensors[f"feat.{j}"].to(self.device) if kind == "tensor" else kind for j, kind in enumerate(meta["feat"])]
        self.first = meta["first"]

    @torch.no_grad()
    def decode_float(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [B, F, C, h, w] (normalised, as the DiT makes them) -> video [B, 3, F', H, W] in [-1, 1]."""
        z = latents.to(self.device, torch.float32).permute(0, 2, 1, 3, 4)  # [B, C, F, h, w]
        z = (z * self.std + self.mean).to(self.dtype)
        x = self.vae.post_quant_conv(z)  # kernel 1 in time: per frame
        outs, start = [], 0
        while start < x.shape[2]:
            stop = start + 1 if self.first or not self.grouped else x.shape[2]
            call = x[:, :, start:stop]
            outs.append(self.vae.decoder(call, feat_cache=self.feat_cache, feat_idx=[0], first_chunk=self.first))
            self.first, start = False, stop
        return torch.cat(outs, dim=2).clamp(-1, 1)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [B, F, C, h, w] -> frames [B, F', H, W, 3] uint8 on the CPU."""
        video = self.decode_float(latents)
        return ((video.float() + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).cpu()


class IdentityDecoder:
    """Latent-only runs: the chunk's latents pass through untouched (nothing is written)."""

    writes_video = False

    def reset(self) -> None:
        pass

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents


class PixelDecoder:
    """A pixel-space model's "latents" are frames in [-1, 1]: [B, F, 3, H, W] -> [B, F, H, W, 3] uint8."""

    writes_video = True

    def reset(self) -> None:
        pass

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return ((latents.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 1, 3, 4, 2).cpu()
