"""Metrics with learned models (VBench's dimensions), from local weights laid out as VBench's cache.

An embedder maps frames uint8 [N, H, W, 3] -> features [N, D]; the formulas below only see embedders, so
they are tested with tiny random networks and run with the real ones when `--weights-dir` has them:
  dino_model/dino_vitbase16_pretrain.pth            subject consistency (DINO ViT-B/16, needs timm)
  clip_model/ViT-B-32.pt                            background consistency, CLIP score (TorchScript files
  clip_model/ViT-L-14.pt                            as OpenAI ships them; the text side needs open_clip's
  aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth   tokenizer) and the LAION aesthetic head
Long videos follow VBench-Long's slow-fast rule for consistency: the "in-clip" score averages VBench's formula
over consecutive `clip_seconds` clips (2 s, every frame; VBench-Long first cuts at scene changes, which a
single-shot generated video does not have), the "clip-to-clip" score applies it to the first frames of the
clips. VBench-Long fuses the two (0.7/0.3 for subjects, 0.8/0.2 for backgrounds) after mapping the
clip-to-clip score through a calibration table of its own, which is not reproduced here: both are reported.
Nothing is ever downloaded: what is missing is skipped with a note.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def consistency(features: torch.Tensor) -> float:
    """VBench's subject/background consistency of one clip: the mean over frames i >= 1 of
    (max(0, cos(f_i-1, f_i)) + max(0, cos(f_0, f_i))) / 2."""
    f = F.normalize(features.double(), dim=-1)
    if len(f) < 2:
        return float("nan")
    prev = (f[1:] * f[:-1]).sum(-1).clamp(min=0)
    first = (f[1:] * f[:1]).sum(-1).clamp(min=0)
    return float(((prev + first) / 2).mean())


def split_clips(num_frames: int, fps: float, clip_seconds: float) -> list[range]:
    """Consecutive clips of clip_seconds (the last one kept if at least half as long)."""
    n = max(2, round(clip_seconds * fps))
    clips = [range(s, min(s + n, num_frames)) for s in range(0, num_frames, n)]
    if len(clips) > 1 and len(clips[-1]) < n / 2:
        clips.pop()
    return clips


def preprocess(frames: np.ndarray, size: int, mean, std) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> [N, 3, size, size]: short side to `size` (bicubic), centre crop, normalise."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    h, w = x.shape[-2:]
    s = size / min(h, w)
    x = F.interpolate(x, size=(max(size, round(h * s)), max(size, round(w * s))), mode="bicubic", align_corners=False)
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    x = x[..., top : top + size, left : left + size].clamp(0, 1)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


class ClipImageEmbedder:
    """An OpenAI CLIP TorchScript file's image tower (any module with `encode_image`)."""

    def __init__(self, model, size: int):
        self.model, self.size = model, size

    @classmethod
    def load(cls, path: Path) -> "ClipImageEmbedder":
        model = torch.jit.load(str(path), map_location="cpu").eval().float()
        size = int(getattr(getattr(model, "visual", None), "input_resolution", 224))
        return cls(model, size)

    @torch.no_grad()
    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        return self.model.encode_image(preprocess(frames, self.size, CLIP_MEAN, CLIP_STD)).float()


class DinoEmbedder:
    """DINO ViT-B/16 (facebookresearch/dino weights) on timm's ViT: the [CLS] feature."""

    def __init__(self, model):
        self.model = model

    @classmethod
    def load(cls, path: Path) -> "DinoEmbedder":
        import timm  # optional: only for this metric

        model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, dynamic_img_size=True)
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=False)
        return cls(model.eval())

    @torch.no_grad()
    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        return self.model(preprocess(frames, 224, IMAGENET_MEAN, IMAGENET_STD)).float()


def load_aesthetic_head(path: Path) -> torch.nn.Linear:
    """The LAION aesthetic predictor: a linear layer 768 -> 1 on unit CLIP ViT-L/14 image features."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    head = torch.nn.Linear(state["weight"].shape[1], 1)
    head.load_state_dict(state)
    return head.eval()


@torch.no_grad()
def aesthetic(features: torch.Tensor, head: torch.nn.Linear) -> float:
    """VBench's aesthetic quality: the head's score of unit features / 10, averaged over frames."""
    return float((head(F.normalize(features.float(), dim=-1)) / 10).mean())


def clip_score(image_features: torch.Tensor, text_features: torch.Tensor) -> float:
    """Mean cosine between a segment's frames and its prompt."""
    return float((F.normalize(image_features.double(), dim=-1) @ F.normalize(text_features.double(), dim=-1).T).mean())


def learned_metrics(frames: np.ndarray, fps: float, embedders: dict, clip_seconds: float = 2.0,
                    segments: list[dict] | None = None, text_embed=None) -> dict:
    """frames [N, H, W, 3] (sampled at ~8 fps); embedders: any of "subject" (DINO), "background" (CLIP B/32),
    "aesthetic" ((CLIP L/14, head)). segments: [{"start_s", "end_s", "prompt"}] for CLIP scores."""
    out: dict = {"clip_rule": f"VBench-Long slow-fast: in-clip over consecutive {clip_seconds:g} s clips, "
                              "clip-to-clip over their first frames; reported separately, not fused"}
    clips = split_clips(len(frames), fps, clip_seconds)
    for name in ("subject", "background"):
        if name in embedders:
            features = embedders[name](frames)
            per_clip = [consistency(features[list(c)]) for c in clips]
            out[f"{name}_consistency"] = float(np.mean(per_clip))  # in-clip (the slow branch)
            out[f"{name}_consistency_per_clip"] = per_clip
            out[f"{name}_consistency_clip2clip"] = consistency(features[[c.start for c in clips]])
    if "aesthetic" in embedders:
        embed, head = embedders["aesthetic"]
        out["aesthetic_quality"] = aesthetic(embed(frames), head)
    if segments and text_embed is not None and "background" in embedders:
        scores = []
        for seg in segments:
            idx = [i for i in range(len(frames)) if seg["start_s"] <= i / fps < seg["end_s"]]
            pick = [idx[round(j)] for j in np.linspace(0, len(idx) - 1, min(8, len(idx)))] if idx else []
            score = clip_score(embedders["background"](frames[pick]), text_embed(seg["prompt"])) if pick else float("nan")
            scores.append(dict(prompt=seg["prompt"], start_s=seg["start_s"], clip_score=score))
        out["clip_score_per_segment"] = scores
    return out


def load_embedders(weights_dir: str | Path) -> tuple[dict, object, list[str]]:
    """(embedders, text embedder or None, notes on what was skipped and why)."""
    root, embedders, notes, text_embed = Path(weights_dir), {}, [], None
    dino = root / "dino_model" / "dino_vitbase16_pretrain.pth"
    b32, l14 = root / "clip_model" / "ViT-B-32.pt", root / "clip_model" / "ViT-L-14.pt"
    head = root / "aesthetic_model" / "emb_reader" / "sa_0_4_vit_l_14_linear.pth"
    if not dino.exists():
        notes.append(f"subject consistency skipped: {dino} not found")
    else:
        try:
            embedders["subject"] = DinoEmbedder.load(dino)
        except ImportError:
            notes.append("subject consistency skipped: DINO's ViT needs `pip install timm`")
    if b32.exists():
        embedders["background"] = ClipImageEmbedder.load(b32)
        text_embed, note = clip_text_embedder(embedders["background"].model)
        if note:
            notes.append(note)
    else:
        notes.append(f"background consistency and CLIP score skipped: {b32} not found")
    if l14.exists() and head.exists():
        embedders["aesthetic"] = (ClipImageEmbedder.load(l14), load_aesthetic_head(head))
    else:
        notes.append(f"aesthetic quality skipped: needs {l14} and {head}")
    return embedders, text_embed, notes


def clip_text_embedder(model):
    """CLIP's text side needs its BPE tokenizer, which ships with open_clip (optional)."""
    try:
        import open_clip
    except ImportError:
        return None, "CLIP score skipped: CLIP's tokenizer needs `pip install open_clip_torch`"
    tokenizer = open_clip.get_tokenizer("ViT-B-32")

    @torch.no_grad()
    def embed(prompt: str) -> torch.Tensor:
        return model.encode_text(tokenizer([prompt])).float()

    return embed, None
