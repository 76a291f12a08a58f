"""The toy-world model's word encoder and its shipped weights (the DiT's shape is models.TOY).

Pixels, not a learned autoencoder: a 32x32 frame in 4x4 patches is 64 tokens, as cheap as any latent
would make it, and there is no decoder to train or to blame. A "latent frame" is then a video frame
(temporal stride 1); 4 frames a second make the 21-frame window 5.25 s, as Wan's 21 latent frames are.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from ..errors import UsageError
from .specs import TOY, ModelSpec, build_transformer

# The toy world's grammar (toyworld/world.py draws it; the word encoder reads it): colours as RGB, shapes.
PALETTE = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (50, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (150, 60, 190),
    "orange": (240, 140, 30),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
SHAPES = ("circle", "square", "triangle")
WORDS = ["a", "and", ",", "bounce", "bounces", "on", "background", *PALETTE, *SHAPES]
ALIASES = {"an": "a"}  # read as the grammar's word ("an orange circle")
VOCAB = ["<pad>", "<unk>", *WORDS]

# The prompts `profile` runs on the toy model: the captions of toyworld's scenes 0-7 (a test checks they still
# are), written out so that profiling needs no toy world.
PROFILE_PROMPTS = (
    "a green triangle and a yellow circle bounce on a white background",
    "a black circle and a orange triangle bounce on a yellow background",
    "a red circle bounces on a white background",
    "a green circle bounces on a white background",
    "a purple triangle, a yellow circle and a black square bounce on a orange background",
    "a red square, a yellow triangle and a purple circle bounce on a orange background",
    "a purple square and a blue circle bounce on a yellow background",
    "a purple triangle and a white square bounce on a black background",
)

WEIGHTS = "toy.safetensors"  # in headforcing/weights/, with toy.json (how it was trained)
PACKAGED = {"memory": "toy-memory.safetensors"}  # --toy-weights memory: the fine-tune that copies unsaid colours


def tokenize(prompt: str, text_len: int) -> tuple[list[int], list[str]]:
    """Word ids (unknown words -> <unk>), truncated to text_len; and the unknown words."""
    words = [ALIASES.get(w, w) for w in prompt.lower().replace(",", " , ").split()[:text_len]]
    index = {w: i for i, w in enumerate(VOCAB)}
    return [index.get(w, 1) for w in words], [w for w in words if w not in index]


class WordEncoder(nn.Module):
    """Word embeddings + positions + one transformer layer: "a red circle and a blue square" is not the
    same as "a blue circle and a red square" (a bag of words would be). Output [B, text_len, dim], zero past
    the prompt's length, like Wan's umT5 context."""

    def __init__(self, dim: int = 64, text_len: int = 24):
        super().__init__()
        self.text_len = text_len
        self.embed = nn.Embedding(len(VOCAB), dim)
        self.position = nn.Parameter(torch.randn(text_len, dim) * 0.02)
        self.layer = nn.TransformerEncoderLayer(dim, 4, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # ids [B, text_len] (0-padded), lengths [B]
        pad = torch.arange(self.text_len, device=ids.device)[None] >= lengths[:, None]  # [B, L]
        x = self.embed(ids) + self.position
        x = self.norm(self.layer(x, src_key_padding_mask=pad))
        return x.masked_fill(pad[..., None], 0.0)  # [B, L, dim]

    def batch(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.zeros(len(prompts), self.text_len, dtype=torch.long)
        lengths = torch.zeros(len(prompts), dtype=torch.long)
        for i, prompt in enumerate(prompts):
            words, _ = tokenize(prompt, self.text_len)
            ids[i, : len(words)] = torch.tensor(words, dtype=torch.long)
            lengths[i] = len(words)
        return ids, lengths


class ToyTextEncoder:
    """prompt -> [1, text_len, text_dim] context from the shipped word encoder."""

    def __init__(self, words: WordEncoder):
        self.words = words.eval()

    @torch.no_grad()
    def __call__(self, prompt: str) -> torch.Tensor:
        ids, unknown = tokenize(prompt, self.words.text_len)
        if all(i == 1 for i in ids):  # nothing it can read: its video would be noise
            raise UsageError(f"the toy model knows none of the words of {prompt[:60]!r}; it reads only: {' '.join(WORDS)}")
        for note in ignored(unknown):
            print(f"note: {note}")
        return self.words(*self.words.batch([prompt]))

    vocabulary = tuple(WORDS)  # what the live page shows as the words to use

    def notes(self, prompt: str) -> list[str]:
        """What the encoder will not read in `prompt`, said as the console says it (for the live page)."""
        return ignored(tokenize(prompt, self.words.text_len)[1])


def ignored(unknown: list[str]) -> list[str]:
    return [f"the toy model knows only its grammar's words; ignoring {', '.join(sorted(set(unknown)))}"] if unknown else []


def build_word_encoder(spec: ModelSpec = TOY) -> WordEncoder:
    return WordEncoder(spec.transformer["text_dim"], spec.text_len)


def save_toy(path: str, transformer, words: WordEncoder, info: dict) -> None:
    """One safetensors file (DiT under `transformer.`, word encoder under `words.`) and a JSON beside it."""
    from safetensors.torch import save_file

    state = {f"transformer.{k}": v.detach().float().cpu().contiguous() for k, v in transformer.state_dict().items()}
    state |= {f"words.{k}": v.detach().float().cpu().contiguous() for k, v in words.state_dict().items()}
    save_file(state, path)
    with open(info_path(path), "w") as f:
        json.dump(info, f, indent=1)


def info_path(path) -> str:
    """The JSON beside a checkpoint: how it was trained."""
    return str(path).removesuffix(".safetensors") + ".json"


def weights_path(path: str | None) -> str:
    """A checkpoint's file: the shipped weights (None), a packaged one by name ("memory"), or `path`."""
    if path is not None and path not in PACKAGED:
        return path
    name = WEIGHTS if path is None else PACKAGED[path]
    ref = resources.files("headforcing") / "weights" / name
    if not ref.is_file():
        raise UsageError(f"the toy model's weights are missing from the package ({name}); reinstall headforcing")
    return str(ref)


def checkpoint_info(path: str) -> dict:
    """How a `toyworld train` checkpoint was trained (steps, minutes, ...); UsageError if it is not one."""
    path = weights_path(path)
    info = info_path(path)
    if not path.endswith(".safetensors") or not Path(path).is_file() or not Path(info).is_file():
        raise UsageError(f"--resume needs a checkpoint of `toyworld train` (stepN.safetensors with its .json), got {path!r}")
    return json.loads(Path(info).read_text())


def load_toy(path: str | None = None):
    """(DiT, WordEncoder) with the shipped weights, a packaged checkpoint by name ("memory"), or those at `path`."""
    from safetensors.torch import load_file

    path = weights_path(path)
    transformer, words = build_transformer(TOY), build_word_encoder()
    try:
        state = load_file(path)
        transformer.load_state_dict({k[12:]: v for k, v in state.items() if k.startswith("transformer.")})
        words.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("words.")})
    except FileNotFoundError:
        raise UsageError(f"toy-world weights {path} do not exist") from None
    except Exception as e:  # not safetensors, or not this model's tensors (names or shapes)
        raise UsageError(f"{path} is not a toy-world checkpoint ({type(e).__name__}); `toyworld train` writes them") from None
    return transformer.eval(), words.eval()
