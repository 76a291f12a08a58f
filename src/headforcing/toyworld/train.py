"""Train the toy-world model: teacher forcing with diffusion-forcing noise, chunk-wise causal, 21 frames.

One clip = 7 chunks of 3 frames. A random first noisy chunk k: chunks before it are clean at t = 0 (at
sampling the engine's commit pass gives the model's clean output as context, at t = 50, the toy schedule's
context_noise, which keeps the model from copying its own faults forward), chunks from k on each get their
own noise level; a block-causal mask lets a chunk see itself and the chunks before it; the flow-matching
loss is on the noisy chunks. Half of
the clips have k = 0 (no clean context), so the caption, not the past, must carry the scene. A fifth of the
clips change one object's colour at a chunk boundary; chunks from there on attend to the new caption only.

Noise levels are drawn with shift 8 (plus 30% uniform): in pixel space the scene's colours are decided at
sigma > 0.9, which the usual logit-normal almost never samples. Seeded and deterministic on one machine;
constant learning rate after warm-up, so the checkpoint at step k is the run with --steps k.
"""

from __future__ import annotations

import copy
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..utils import threads
from ..models.specs import build_transformer
from ..models.toy import TOY, build_word_encoder, checkpoint_info, load_toy, save_toy
from .memory import training_clip
from .world import generate

CHUNKS = TOY.trained_frames // TOY.chunk_frames  # 7


class MaskedAttn:
    """Training processor: attn1 with RoPE, block-causal (one SDPA per chunk of queries over the keys up
    to its end: no mask, 43% less work than masking); attn2 with the per-token caption mask in `holder`."""

    def __init__(self, holder: dict, chunk_tokens: int | None = None):
        self.holder, self.chunk_tokens = holder, chunk_tokens

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        q, k = attn.norm_q(q), attn.norm_k(k)
        q, k, v = (t.unflatten(2, (attn.heads, -1)) for t in (q, k, v))  # [B, S, H, D]
        if rotary_emb is not None:
            q, k = rope(q, *rotary_emb), rope(k, *rotary_emb)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, S, D]
        if self.chunk_tokens is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.holder["cross"])
        else:
            n = self.chunk_tokens
            out = torch.cat([F.scaled_dot_product_attention(q[:, :, a : a + n], k[:, :, : a + n], v[:, :, : a + n])
                             for a in range(0, q.shape[2], n)], dim=2)
        return attn.to_out[0](out.transpose(1, 2).flatten(2))


class UniqueTimesteps(torch.nn.Module):
    """Wraps Wan's condition embedder: per-token timesteps take few values (one per chunk), so embed each
    value once and index (the time MLP on every token cost a third of the step)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, timestep, encoder_hidden_states, image=None, timestep_seq_len=None):
        values, index = torch.unique(timestep, return_inverse=True)  # timestep [B*S] -> values [U]
        temb, proj, context, _ = self.inner(values, encoder_hidden_states, image)
        return temb[index].unflatten(0, (-1, timestep_seq_len)), proj[index].unflatten(0, (-1, timestep_seq_len)), context, None


def rope(x, cos, sin):
    """diffusers' interleaved rotation (cos/sin [1, S, 1, D])."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    return torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1).flatten(-2)


def for_training(model, chunk_tokens: int) -> dict:
    """Swap in the training processors and the timestep embedder; returns the dict that holds the caption
    mask ("cross": [B, 1, S, L'] bool) for each forward."""
    holder = {}
    for block in model.blocks:
        block.attn1.set_processor(MaskedAttn(holder, chunk_tokens))
        block.attn2.set_processor(MaskedAttn(holder))
    model.condition_embedder = UniqueTimesteps(model.condition_embedder)
    return holder


def sample_sigmas(rng: np.random.Generator, n: int, shift: float = 8.0) -> np.ndarray:
    u = rng.uniform(0.02, 1.0, n)
    shifted = shift * u / (1 + (shift - 1) * u)
    return np.where(rng.uniform(size=n) < 0.3, u, shifted)


CAPTIONS = 3  # caption slots per clip: a clip's caption may change at up to two chunk starts


def make_batch(step: int, batch: int, seed: int, words, size: int, device: str = "cpu", memory_share: float = 0.0,
               return_share: float = 0.5):
    """Clips [B, 21, 3, H, W] in [-1, 1], per-chunk sigma [B, 7] (0 = clean), the caption words (ids
    [3B, L], lengths [3B]: each clip's captions, the last repeated) and the per-token caption mask
    [B, 1, S, 3 L], on `device`. A `memory_share` of the clips are memory cases (memory.training_clip), `return_share` of those an object that leaves and returns."""
    rng = np.random.default_rng([seed, step])
    frames, sigmas, captions, caption_of_chunk = [], [], [], []
    C = TOY.chunk_frames
    for i in range(batch):
        focus = None
        if memory_share and rng.uniform() < memory_share:
            clip, cues, focus = training_clip(rng, TOY.trained_frames, size, return_share)
        else:
            change_chunk = int(rng.integers(1, CHUNKS)) if rng.uniform() < 0.2 else CHUNKS
            clip, _, cues = generate(int(rng.integers(2**31)), TOY.trained_frames, size,
                                     change_at=change_chunk * C if change_chunk < CHUNKS else None)
        frames.append(clip)
        texts = [text for _, text in cues] + [cues[-1][1]] * (CAPTIONS - len(cues))
        captions.append(texts)
        caption_of_chunk.append([max(j for j, (f, _) in enumerate(cues) if f <= c * C) for c in range(CHUNKS)])
        first_noisy = 0 if rng.uniform() < 0.5 else int(rng.integers(0, CHUNKS))
        if focus is not None and rng.uniform() < 0.5:
            first_noisy = focus  # the context holds what must be copied, the chunk after it is noisy
        s = sample_sigmas(rng, CHUNKS)
        s[:first_noisy] = 0.0
        sigmas.append(s)
    x = torch.from_numpy(np.stack(frames)).permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0
    ids, lengths = words.batch([texts[k] for k in range(CAPTIONS) for texts in captions])  # slot-major
    tokens = (size // 4) ** 2
    L = words.text_len
    slot_of_token = torch.tensor(caption_of_chunk).repeat_interleave(C * tokens, dim=1)  # [B, S]
    slot = torch.arange(CAPTIONS * L)[None, None, :] // L  # [1, 1, 3L]
    text_mask = (slot == slot_of_token[..., None])[:, None]  # [B, 1, S, 3L]
    sigma = torch.from_numpy(np.stack(sigmas)).float()
    return x.to(device), sigma.to(device), (ids.to(device), lengths.to(device)), text_mask.to(device)


def noised(x0, eps, sigma, jitter, context_timestep: float):
    """The model's input for clips x0 [B, 21, 3, H, W] with noise eps and per-chunk sigma [B, 7] (0 = clean
    context): the noisy clips, the timestep each chunk is told [B, 7] and the loss's mask [B, 21, 1, 1, 1]
    (the noisy chunks). Context chunks get noise of level `jitter` ([B, 1] or 0) and are told
    `context_timestep`; noisy chunks get their sigma and are told sigma * 1000."""
    clean = sigma == 0  # [B, 7]
    per_frame = lambda t: t.repeat_interleave(TOY.chunk_frames, dim=1)[:, :, None, None, None]  # noqa: E731
    s = per_frame(torch.where(clean, jitter, sigma))  # [B, 21, 1, 1, 1]
    told = torch.where(clean, torch.full_like(sigma, context_timestep), sigma * 1000)
    return (1 - s) * x0 + s * eps, told, per_frame(~clean).float()


@torch.no_grad()
def own_drawing(model, x0, sigma, context, gen: torch.Generator, share: float, tokens: int):
    """Clips x0 [B, 21, 3, H, W] whose clean context chunks (sigma 0) are, for a `share` of the clips, the
    model's own one-step drawing of them from noise of a level drawn in 0.3..0.7 (block-causal, so each chunk
    is drawn from the noised chunks up to it): the colours stay the world's, the shapes and edges become the
    model's. Self Forcing's lesson (condition on what the model makes) at one extra forward without grad."""
    B = x0.shape[0]
    pick = (torch.rand(B, generator=gen) < share).to(x0.device)  # [B]
    if not pick.any():
        return x0
    level = (0.3 + 0.4 * torch.rand(B, generator=gen)).to(x0.device)[:, None, None, None, None]  # [B, 1, 1, 1, 1]
    eps = torch.randn(x0.shape, generator=gen).to(x0.device)
    xs = (1 - level) * x0 + level * eps
    timestep = (level.flatten() * 1000)[:, None].expand(B, x0.shape[1] * tokens)  # [B, S]
    v = model(hidden_states=xs.permute(0, 2, 1, 3, 4), timestep=timestep, encoder_hidden_states=context,
              return_dict=False)[0].permute(0, 2, 1, 3, 4)
    drawn = (xs - level * v).clamp(-1, 1)  # [B, 21, 3, H, W]
    use = pick[:, None] & (sigma == 0)  # [B, 7]: the context chunks of the picked clips
    use = use.repeat_interleave(TOY.chunk_frames, dim=1)[:, :, None, None, None]
    return torch.where(use, drawn, x0)


def learning_rate(step: int, first: int, last: int, lr: float, warmup: int, cooldown: int) -> float:
    """Linear warm-up over `warmup` steps from `first`, constant, then a linear fall to 0 over the last
    `cooldown` steps before `last` (none when 0)."""
    return lr * min(1.0, (step - first + 1) / warmup, (last - step + 1) / max(cooldown, 1))


def train(out: str, steps: int, batch: int = 8, seed: int = 0, lr: float = 1e-3, warmup: int = 200,
          ema_decay: float = 0.999, save_every: int = 500, log=print, device: str = "cpu",
          resume: str | None = None, cooldown: int = 0, memory_share: float = 0.0, trainable: str = "all",
          context_timestep: float = 0.0, context_jitter: float = 0.0, own_context: float = 0.0,
          return_share: float = 0.5) -> Path:
    """Train to step `steps`. `resume`: a checkpoint of this function; its EMA weights start both the model and
    the average, the steps go on from its step with the same data, the optimiser's moments start afresh (so
    warm-up is run again). `cooldown`: the learning rate falls linearly to 0 over the last `cooldown` steps.
    `memory_share`: the share of clips that are memory cases (unsaid colours, leave and return in the window).
    `trainable`: "all", or "text": only what reads the caption (the word encoder, the text projection, every
    block's cross-attention); the rest stays as it is. `context_timestep`: the timestep the clean context
    chunks are given (0; the toy schedule's commit pass tells the model 50); `context_jitter`: the context's
    pixels get noise of a level drawn per clip from 0..context_jitter, so that copying from a context that is
    not exact (the model's own frames, when it samples) is learned. `return_share`: of the memory clips, the share where an object leaves and returns. `own_context`: the share of clips whose
    context is the model's own drawing of it (`own_drawing`), so that copying from what it draws is learned."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    if torch.device(device).type == "cpu":
        threads.pin(TOY.name)  # seeded: the same numbers whatever the machine's load
    model, words, first, before = starting_weights(seed, resume)
    model = model.train().requires_grad_(True).to(device)
    words = words.train().requires_grad_(True).to(device)
    tokens = (TOY.size[0] // 4) ** 2
    holder = for_training(model, TOY.chunk_frames * tokens)
    params = list(model.parameters()) + list(words.parameters())
    if trainable == "text":
        for name, p in model.named_parameters():
            p.requires_grad_(".attn2." in name or name.startswith("condition_embedder.text_embedder."))
    opt = torch.optim.AdamW([p for p in params if p.requires_grad], lr=lr, betas=(0.9, 0.99), weight_decay=0.01)
    ema = [p.detach().clone() for p in params]
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    start, losses = time.perf_counter(), []
    data = dict(batch=batch, seed=seed, memory_share=memory_share, return_share=return_share, context_jitter=context_jitter,
                context_timestep=context_timestep, own_context=own_context, device=device)
    for step in range(first, steps + 1):
        loss = flow_loss(model, words, holder, step, **data)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, first, steps, lr, warmup, cooldown)
        opt.step()
        with torch.no_grad():
            decay = min(ema_decay, (1 + step) / (10 + step))  # (a resumed run is past the ramp)
            for e, p in zip(ema, params):
                e.lerp_(p.detach(), 1 - decay)
        losses.append(loss.item())
        if step % 50 == 0:
            elapsed = time.perf_counter() - start
            log(f"step {step} loss {np.mean(losses[-50:]):.4f} {len(losses) / elapsed:.2f} steps/s {elapsed / 60:.1f} min")
        if step % save_every == 0 or step == steps:
            save_checkpoint(out_dir / f"step{step:06d}.safetensors", model, words, params, ema, dict(
                steps=step, batch=batch, seed=seed, lr=lr, warmup=warmup, ema_decay=ema_decay,
                minutes=round(before.get("minutes", 0) + (time.perf_counter() - start) / 60, 1),
                loss=float(np.mean(losses[-50:])), cooldown=cooldown, memory_share=memory_share, trainable=trainable,
                context_timestep=context_timestep, context_jitter=context_jitter, own_context=own_context, return_share=return_share, resumed_at=before.get("resumed_at", []) + ([first] if resume else []),
                machine=f"{platform.machine()} {torch.get_num_threads()} threads, {platform.processor() or 'cpu'}, device {device}",
                torch=torch.__version__, config=TOY.transformer, text_len=TOY.text_len))
    return out_dir / f"step{steps:06d}.safetensors"


def starting_weights(seed: int, resume: str | None):
    """(model, word encoder, first step, the resumed checkpoint's info): fresh from `seed`, or a checkpoint's."""
    if resume is None:
        return build_transformer(TOY, seed), build_word_encoder(), 1, {}
    model, words = load_toy(resume)
    before = checkpoint_info(resume)
    return model, words, before["steps"] + 1, before


def flow_loss(model, words, holder, step: int, batch: int, seed: int, memory_share: float, return_share: float,
              context_jitter: float, context_timestep: float, own_context: float, device: str) -> torch.Tensor:
    """The flow-matching loss of step `step`'s batch (its clips, noise and context all drawn from seed and step)."""
    tokens = (TOY.size[0] // 4) ** 2
    x0, sigma, (ids, lengths), text_mask = make_batch(step, batch, seed, words, TOY.size[0], device, memory_share, return_share)
    holder["cross"] = text_mask
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    context = words(ids, lengths)  # [3B, L, D], slot-major
    context = torch.cat(context.split(batch), dim=1)  # [B, 3L, D]
    if own_context:  # the clean context of a share of the clips becomes the model's own drawing of it
        x0 = own_drawing(model, x0, sigma, context.detach(), gen, own_context, tokens)
    eps = torch.randn(x0.shape, generator=gen).to(device)  # drawn on the CPU: the same noise on any device
    jitter = (torch.rand(batch, 1, generator=gen) * context_jitter).to(device) if context_jitter else 0.0
    xt, told, noisy = noised(x0, eps, sigma, jitter, context_timestep)
    timestep = told.repeat_interleave(TOY.chunk_frames * tokens, dim=1)  # [B, 7] -> [B, S]
    v = model(hidden_states=xt.permute(0, 2, 1, 3, 4), timestep=timestep, encoder_hidden_states=context,
              return_dict=False)[0].permute(0, 2, 1, 3, 4)
    return (((v - (eps - x0)) ** 2) * noisy).sum() / (noisy.sum() * x0[0, 0].numel())


def save_checkpoint(path: Path, model, words, params, ema, info: dict) -> None:
    """The EMA weights, with the default attention processors (as the engine expects them)."""
    ema_model, ema_words = copy.deepcopy(model), copy.deepcopy(words)
    ema_model.condition_embedder = ema_model.condition_embedder.inner
    shadow = list(ema_model.parameters()) + list(ema_words.parameters())
    with torch.no_grad():
        for dst, src in zip(shadow, ema):
            dst.copy_(src)
    save_toy(str(path), ema_model, ema_words, info)

