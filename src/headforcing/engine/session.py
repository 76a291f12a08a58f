"""A session: one video in the making, with no fixed end.

It holds what belongs to this video only — the head-wise cache, the noise generator, the prompt and its
history, the clean latents kept for re-encoding at a prompt switch, the streaming decoder's causal state —
and borrows everything else from a loaded model (`pipeline.Pipeline`). `step()` makes the next chunk;
`set_prompt` takes effect from the next chunk; `start_from` commits a given clip as context first;
`save` writes it all to one safetensors file (`state.py`: the format) that `Pipeline.resume` continues exactly;
the session saves and restores its own fields, and each part (stores, decoder, profiler, noise) its own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from ..cache.episodic import ACTIONS, EpisodicConfig
from ..cache.headmap import HeadMap
from ..cache.headwise import HeadwiseCache
from ..cache.policy import DEFAULT_RULE, Policy, RolePolicy, Sink, preset
from ..cache.profiler import HeadProfiler, classify, parse_rule
from ..cache.store import part
from ..utils import threads
from ..errors import UsageError
from ..models.schedule import Schedule
from .decode import StreamingVaeDecoder
from .parallel import gather_profile
from .state import cpu, own_states, policy_json, prefixed, read_state, session_args, stamped, store_states, write_state
from .profiles import measured_headmap
from .sampler import ChunkSampler, SeededNoise

MAX_SEED = 2**63 - 1  # torch.Generator takes 64-bit seeds; beyond them seeds would silently alias


@dataclass(frozen=True)
class SessionOptions:
    """What a session was opened with (saved with it; a resumed session keeps them)."""

    policy: str | Policy = "headforcing"  # a preset's name; instruments may give a Policy (not saved with a state)
    heads: str | None = None  # None: the policy's default map; "auto": profile the first window; else a HeadMap JSON path
    rule: str = DEFAULT_RULE  # classification rule for heads="auto"
    seed: int = 0
    size: tuple[int, int] | None = None  # (width, height); the model's default if None
    solver: str | None = None  # "euler" or "renoise" instead of the model's own
    context_noise: int | None = None  # the commit pass's timestep instead of the model's own
    decode: bool = True  # make frames (False: latents only)
    blend_chunks: int = 0  # a prompt switch blends the text conditioning over this many chunks (0: a hard switch)


@dataclass
class Chunk:
    index: int  # chunks generated before this one
    first_frame: int  # latent frame index of its first frame
    latents: torch.Tensor  # [1, C, c, h, w] float32, clean
    frames: torch.Tensor | None  # [1, n, H, W, 3] uint8 on the CPU, None when not decoding


def schedule_for(schedule: Schedule, solver: str | None = None, context_noise: int | None = None) -> Schedule:
    """A model's schedule with a session's overrides (None keeps the model's own); UsageError on a commit
    timestep outside the table."""
    if solver is not None and solver not in ("euler", "renoise"):
        raise UsageError(f"unknown solver {solver!r}; known: euler, renoise")
    if context_noise is not None and not 0 <= context_noise < schedule.num_train_timesteps:
        raise UsageError(f"--context-noise must be a timestep in 0..{schedule.num_train_timesteps - 1}, got {context_noise}")
    overrides = dict(solver=solver, context_noise=context_noise)
    return replace(schedule, **{k: v for k, v in overrides.items() if v is not None})


def profiling_policy() -> Policy:
    """`full` with compact positions: the same computation inside the window, and raw keys kept, so the
    head-wise cache can take its frames over (`heads="auto"`)."""
    return Policy("full", {"all": RolePolicy((Sink(None),), "compact")})


def rule_for(policy: Policy, options: SessionOptions) -> str:
    """The rule `--heads auto` classifies with: the one given, else the policy's own."""
    return policy.rule if options.rule == DEFAULT_RULE else options.rule


def check_options(spec, options: SessionOptions, headmap: HeadMap | None = None) -> tuple[Policy, HeadMap | None]:
    """Everything about a session's options that can be checked before any work: (policy, the HeadMap it
    runs with, or None for heads="auto"). `headmap`, if given, is used instead of reading options.heads."""
    if not isinstance(options.seed, int) or not 0 <= options.seed <= MAX_SEED:
        raise UsageError(f"--seed must be an integer in 0..2**63-1, got {options.seed}")
    width, height = options.size or spec.size
    if width <= 0 or height <= 0 or width % spec.size_multiple or height % spec.size_multiple:
        raise UsageError(f"size {width}x{height}: width and height must be positive multiples of {spec.size_multiple}")
    if width * height > 4096 * 4096:
        raise UsageError(f"size {width}x{height} is larger than 4096x4096")
    schedule_for(spec.schedule, options.solver, options.context_noise)
    if not isinstance(options.blend_chunks, int) or not 0 <= options.blend_chunks <= 64:
        raise UsageError(f"--blend-chunks must be 0..64, got {options.blend_chunks}")
    policy = options.policy if isinstance(options.policy, Policy) else preset(options.policy, spec.chunk_frames, spec.trained_frames)
    if headmap is not None:
        return policy, policy.resolve_headmap(spec.num_layers, spec.num_heads, headmap)
    if options.heads == "auto":
        if len(policy.roles) == 1:
            raise UsageError(f"--heads auto needs a policy with several roles; {options.policy!r} has one")
        unknown = {step.role for step in parse_rule(rule_for(policy, options))} - set(policy.roles)
        if unknown:
            raise UsageError(f"rule names role(s) {sorted(unknown)} that policy {options.policy!r} does not have")
        return policy, None
    headmap = HeadMap.load(options.heads) if options.heads else None
    return policy, policy.resolve_headmap(spec.num_layers, spec.num_heads, headmap)


class Session:
    def __init__(self, pipe, prompt: str, *, episodic: EpisodicConfig | None = EpisodicConfig(),
                 headmap: HeadMap | None = None, **options):
        """Open a session on a loaded model. Options (`SessionOptions`): policy, heads, rule, seed, size,
        solver, context_noise, decode. `headmap` gives a HeadMap object directly (then heads=PATH is not read).
        episodic: the episodic memory's settings (None: memory heads keep no episodic frames)."""
        self.pipe, self.spec = pipe, pipe.spec
        if pipe.device.type == "cpu":
            threads.refit()  # the machine's load may have changed since the model loaded
        self.options = SessionOptions(**options)
        if not isinstance(prompt, str) or not prompt.strip():
            raise UsageError("the prompt is empty")
        self.policy, self.headmap = check_options(self.spec, self.options, headmap)
        self.heads_source = "given" if headmap is not None else (self.options.heads or ("uniform" if len(self.policy.roles) == 1 else "shares"))
        if headmap is None and self.options.heads is None and len(self.policy.roles) > 1:
            measured = measured_headmap(pipe.fingerprint(), rule_for(self.policy, self.options), self.spec.num_layers, self.spec.num_heads)
            if measured is not None:  # roles measured on these weights (engine/profiles.py), else the fixed shares
                self.headmap, self.heads_source = measured[0], f"profile {Path(measured[1]).name}"
                self.headmap.check(self.spec.num_layers, self.spec.num_heads, self.policy.roles)
        self.episodic = episodic
        self.schedule = schedule_for(self.spec.schedule, self.options.solver, self.options.context_noise)
        width, height = self.width, self.height = self.options.size or self.spec.size
        stride = self.spec.vae_stride
        self.latent_chw = (self.spec.latent_channels, height // stride[1], width // stride[2])
        self.follows = pipe.parallel is not None and not pipe.parallel.leads  # another rank decodes and writes
        if pipe.parallel is not None:
            patch = self.spec.transformer["patch_size"]
            pipe.parallel.check(self.spec.num_heads, (self.latent_chw[1] // patch[1]) * (self.latent_chw[2] // patch[2]))
        self.decoder = pipe.decoder(self.options.decode and not self.follows)
        self.sampler = ChunkSampler(pipe.transformer, None, self.schedule, self.spec.chunk_frames, pipe.compiled)
        self.profiling = self.headmap is None  # heads="auto": the first window runs in a full cache, profiled
        self.profiler = None
        if self.profiling:
            self.cache = self._new_cache(profiling_policy(), None)
            self.profiler = HeadProfiler(self.spec.num_layers, self.spec.num_heads, self.spec.chunk_frames, seed=self.options.seed)
            self.profiler.attach(self.cache)
        else:
            self.cache = self._new_cache(self.policy, self.headmap)
        self.sampler.start(1, self.latent_chw)
        self.noise = SeededNoise(self.options.seed)
        self.chunk = 0  # chunks generated so far (the noise's index)
        self.frame = 0  # latent frames committed so far (given or generated): the next chunk's first frame
        self.origin = 0  # chunks start at this frame (1 after an image, whose latent frame is committed alone)
        self.prompt, self.pending = prompt, None
        self.history = [dict(chunk=0, frame=0, prompt=prompt)]  # every prompt switch as applied
        self.recent = None  # clean latents [1, <=R, C, h, w] of the newest frames, for re-encoding at a switch
        self.blend: list | None = None  # [previous prompt, chunks since the switch] while a switch is blended
        self.timer = lambda phase, fn, *args: fn(*args)  # bench wraps "dit" and "vae" calls with its clock
        pipe.encode(prompt)

    # ---- building ------------------------------------------------------------------------------------
    def _new_cache(self, policy: Policy, headmap: HeadMap | None) -> HeadwiseCache:
        spec = self.spec
        headmap = headmap or policy.resolve_headmap(spec.num_layers, spec.num_heads)
        split = None
        if self.pipe.parallel is not None:  # role-balanced, except while roles are unknown (heads="auto")
            split = self.pipe.parallel.split(policy, headmap, spec.trained_frames, spec.chunk_frames, self.options.heads != "auto",
                                             self.pipe.device)
        cache = HeadwiseCache(policy, headmap, spec.head_dim, spec.trained_frames, spec.chunk_frames, self.episodic, split=split)
        self.sampler.cache = cache
        return cache

    def _switch_to_headwise(self) -> None:
        """End of online profiling: classify heads, move the full cache's frames into the head-wise one."""
        if self.cache.split is not None:
            gather_profile(self.profiler, self.cache.split)
        self.headmap = classify(self.profiler.stats(), rule_for(self.policy, self.options))
        self.headmap.check(self.spec.num_layers, self.spec.num_heads, self.policy.roles)
        full = self.cache
        self.cache = self._new_cache(self.policy, self.headmap)
        self.sampler.start(1, self.latent_chw)
        self.cache.adopt(full)
        self.profiling, self.profiler = False, None

    # ---- stepping ------------------------------------------------------------------------------------
    def set_prompt(self, prompt: str) -> None:
        """From the next chunk on, generate under `prompt` (roles re-encode or keep their recent frames as
        their policy says)."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise UsageError("the new prompt is empty")
        self.pipe.encode(prompt)
        self.pending = prompt

    def _before(self, frames: int) -> None:
        """Checks and hand-overs before `frames` more latent frames enter the cache."""
        window = self.spec.trained_frames
        if self.profiling and self.frame + frames > window:
            self._switch_to_headwise()
        if not self.policy.bounded and self.frame + frames > window:
            raise UsageError(
                f"policy {self.options.policy!r} keeps every frame and is valid only inside the trained window of "
                f"{window} latent frames; the next chunk would end at frame {self.frame + frames}"
            )
        if self.pending is not None:
            self._apply_switch()

    def _apply_switch(self) -> None:
        """The pending prompt from the next chunk on: re-encode the newest frames for `recache` roles."""
        if self.options.blend_chunks and self.frame:
            self.blend = [self.prompt, 0]
        self.prompt, self.pending = self.pending, None
        if self.history[-1]["frame"] == self.frame:
            self.history[-1] = dict(chunk=self.chunk, frame=self.frame, prompt=self.prompt)
        else:
            self.history.append(dict(chunk=self.chunk, frame=self.frame, prompt=self.prompt))
        frames = min(self.policy.recache_frames if not self.profiling else 0, self.frame)
        if frames and self.recent is not None:
            self.sampler.recache(self.recent[:, -frames:], self.frame - frames, self.pipe.encode(self.prompt), self.origin)

    def _committed(self, latents: torch.Tensor) -> None:
        keep = max(self.policy.recache_frames, 1)
        self.recent = latents if self.recent is None else torch.cat([self.recent, latents], dim=1)[:, -keep:]
        self.frame += latents.shape[1]

    @property
    def decisions(self) -> list[dict]:
        """The episodic memory's decisions of the newest commit (read from the device when asked)."""
        return self.cache.decisions()

    @property
    def episodic_counts(self) -> dict[str, int]:
        """Episodic decisions so far, by action (tallied on the device)."""
        return self.cache.decision_counts()

    def step(self, truth: torch.Tensor | None = None) -> Chunk:
        """Make the next chunk: its latents and, when decoding, its frames. `truth` [1, C, c, h, w]: the
        chunk is drawn as usual, but these clean latents are committed in its place (teacher forcing: what the
        model would draw here, from a context that is the world's own)."""
        C = self.spec.chunk_frames
        if truth is not None:
            self._check_given(truth, C)
        self._before(C)
        first, index = self.frame, self.chunk
        text = self._text()
        latents = self.timer("dit", self.sampler.chunk, index, text, self.noise, 1, self.latent_chw, first,
                             None if truth is None else truth.to(self.pipe.device, torch.float32))
        self._committed(latents if truth is None else truth)
        self.chunk += 1
        frames = self.timer("vae", self.decoder.decode, latents) if self.options.decode else None
        return Chunk(index, first, latents, frames)

    def _text(self):
        """This chunk's text context: the prompt's, or during a blended switch (Krea's and Scope's smooth
        prompt changes) the previous prompt's moved linearly towards it: weight k / (N + 1) at the k-th of N chunks."""
        text = self.pipe.encode(self.prompt)
        if self.blend is None:
            return text
        self.blend[1] += 1
        previous, k = self.blend
        if k > self.options.blend_chunks:
            self.blend = None
            return text
        weight = k / (self.options.blend_chunks + 1)
        return torch.lerp(self.pipe.encode(previous), text, weight)

    def _check_given(self, latents: torch.Tensor, frames: int | None = None) -> None:
        if latents.ndim != 5 or tuple(latents.shape[2:]) != self.latent_chw or latents.shape[0] != 1:
            raise UsageError(f"given latents have shape {tuple(latents.shape)}, the session makes [1, L, {', '.join(map(str, self.latent_chw))}]")
        if frames is not None and latents.shape[1] != frames:
            raise UsageError(f"given latents hold {latents.shape[1]} frames, a chunk is {frames}")

    def feed(self, latents: torch.Tensor) -> None:
        """Commit the next chunk's clean latents [1, C, c, h, w] as if the model had made them (one commit
        forward, no sampling): a session can follow a given video, and draw only where asked (`step(truth)`)."""
        C = self.spec.chunk_frames
        self._check_given(latents, C)
        self._before(C)
        text = self._text()
        self.sampler.commit(latents.to(self.pipe.device, torch.float32), text, first_frame=self.frame)
        self._committed(latents)

    def start_from(self, latents: torch.Tensor) -> torch.Tensor | None:
        """Continue given clean latents [1, L, C, h, w] (`Pipeline.encode_frames` of a clip or an image): they
        are committed as context chunk by chunk, as Self Forcing's pipeline commits its `initial_latent`
        (L a multiple of the chunk; or 1 + a multiple, the first frame then committed alone, as for an image).
        Returns their decoded frames [1, n, H, W, 3] (which also primes the streaming decoder), or None."""
        C = self.spec.chunk_frames
        if self.frame:
            raise UsageError("a session can start from given frames only before its first chunk")
        self._check_given(latents)
        L = latents.shape[1]
        if L % C not in (0, 1) or L == 0:
            raise UsageError(f"{L} latent frames cannot be committed in chunks of {C} (give a multiple of {C}, or 1 + one)")
        pieces = ([1] if L % C else []) + [C] * (L // C)
        self.origin = pieces[0] % C
        outs = []
        for n in pieces:
            part = latents[:, self.frame : self.frame + n].to(self.pipe.device, torch.float32)  # where its chunks will be
            self._before(n)
            self.sampler.commit(part, self.pipe.encode(self.prompt), first_frame=self.frame)
            self._committed(part)
            if self.options.decode:
                outs.append(self.decoder.decode(part))
        return torch.cat(outs, dim=1) if outs else None

    # ---- reporting, saving ---------------------------------------------------------------------------
    def video_frames(self) -> int:
        """Video frames made so far (given ones included)."""
        return self.spec.video_frames(self.frame)

    def stats(self) -> dict:
        return dict(
            chunks=self.chunk, latent_frames=self.frame, video_frames=self.video_frames(),
            seconds=self.video_frames() / self.spec.fps, cache_bytes=self.cache.nbytes(), prompt=self.prompt,
            prompt_switches=len(self.history) - 1, profiling=self.profiling, episodic=dict(self.episodic_counts),
            policy=self.policy.name, heads=self.heads_source,
            parallel=None if self.cache.split is None else dict(ranks=self.pipe.parallel.size, imbalance=round(self.cache.split.imbalance, 4)),
            compile=dict(mode=self.sampler.compiled.mode, **self.sampler.compile_stats) if self.sampler.compiled else None,
        )

    def timeline(self) -> list[dict]:
        """Which prompt drove which part of the video, as applied (the history of switches): per prompt its first
        chunk, its first video frame and that frame's time (a continued clip's frames counted in)."""
        fps, frames = self.spec.fps, self.spec.video_frames
        return [dict(prompt=h["prompt"], chunk=h["chunk"], start_frame=frames(h["frame"]), start_seconds=frames(h["frame"]) / fps)
                for h in self.history]

    def recording(self, path: str, crf: int = 18):
        """An H.264 mp4 writer at this session's size and frame rate; the file appears whole when the block ends
        (`with s.recording("a.mp4") as mp4: mp4.write(s.step().frames)`)."""
        from ..utils.video import Mp4Writer

        if not 0 <= crf <= 51:
            raise UsageError(f"crf must be 0..51, got {crf}")
        return Mp4Writer(path, self.width, self.height, self.spec.fps, crf)

    def save(self, path: str, run: dict | None = None) -> None:
        """Write this session's whole state to one safetensors file (tensors + JSON metadata, no pickle);
        engine/state.py has the format. `run`: JSON-able facts of the run driving it (what `generate --resume`
        needs), kept with the state."""
        meta, tensors = self.state(run)  # (under head parallelism every rank gives its heads)
        if not self.follows:
            write_state(path, stamped(self.pipe, meta, tensors), tensors)

    @classmethod
    def load(cls, pipe, path: str) -> "Session":
        """The session saved at `path`, continuing exactly where it stopped (checked whole first)."""
        meta, tensors = read_state(path)
        try:
            prompt, options, headmap, episodic = session_args(pipe, meta, path)
            session = cls(pipe, prompt, episodic=episodic, headmap=headmap, **options)
            session.load_state(meta, tensors, path)
        except UsageError:
            raise
        except (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError) as e:  # edited metadata
            raise UsageError(f"{path} is inconsistent: its metadata does not describe a session ({type(e).__name__}: {e})") from None
        return session

    def state(self, run: dict | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
        """(metadata, tensors): this session's position, prompts, noise and kept latents, and each part's own
        state (stores, decoder, profiler) as that part gives it."""
        tensors = prefixed("noise", self.noise.state())
        if self.recent is not None:
            tensors["recent"] = cpu(self.recent)
        stores = []
        for i, (meta, parts) in enumerate(store_states(self.cache)):
            stores.append(meta)
            tensors |= prefixed(f"store.{i}", parts)
        decoder = profiler = None
        if isinstance(self.decoder, StreamingVaeDecoder):
            decoder, parts = self.decoder.state()
            tensors |= prefixed("decoder", parts)
        if self.profiler is not None:
            if self.cache.split is not None:
                gather_profile(self.profiler, self.cache.split)
            profiler, parts = self.profiler.state()
            tensors |= prefixed("profiler", parts)
        meta = dict(
            options=asdict(self.options), episodic=asdict(self.episodic) if self.episodic else None,
            policy=policy_json(self.policy), headmap=self.headmap.to_json() if self.headmap is not None else None,
            chunk=self.chunk, frame=self.frame, origin=self.origin,
            prompt=self.prompt, pending=self.pending, history=self.history, blend=self.blend,
            episodic_counts=self.episodic_counts, stores=stores, decoder=decoder, profiler=profiler, run=run,
        )
        return meta, tensors

    def load_state(self, meta: dict, tensors: dict[str, torch.Tensor], path: str) -> None:
        """Check every saved part against this freshly opened session, then copy each in (each part its own)."""
        if policy_json(self.policy) != meta["policy"]:
            raise UsageError(f"{path} was saved with another definition of policy {meta['options']['policy']!r}")
        if (self.headmap is None) != (meta["headmap"] is None):
            raise UsageError(f"{path} is inconsistent: profiling state and HeadMap disagree")
        stores = self.cache.stores()
        saved = own_states(self.cache, meta["stores"], tensors, path)
        for i, (store, (store_meta, parts)) in enumerate(zip(stores, saved)):
            wrong = store.check_state(store_meta, parts)
            if wrong:
                raise UsageError(f"{path} is inconsistent: store {i}: {wrong}")
        decodes = meta["decoder"] is not None and not self.follows  # (a rank that follows another decodes nothing)
        if decodes:
            if not (isinstance(self.decoder, StreamingVaeDecoder) and self.decoder.decodes_like(meta["decoder"])):
                raise UsageError(f"{path} holds a VAE decoder state this session does not decode with (decode option changed?)")
            wrong = self.decoder.check_state(meta["decoder"], part("decoder", tensors))
            if wrong:
                raise UsageError(f"{path} is inconsistent: {wrong}")
        # everything checked: copy in
        for store, (store_meta, parts) in zip(stores, saved):
            store.load_state(store_meta, parts)
        if decodes:
            self.decoder.load_state(meta["decoder"], part("decoder", tensors))
        if self.profiler is not None:
            self.profiler.load_state(meta["profiler"], part("profiler", tensors))
        self.noise.load_state(part("noise", tensors))
        self.recent = tensors["recent"].to(self.pipe.device) if "recent" in tensors else None
        self.chunk, self.frame, self.origin = meta["chunk"], meta["frame"], meta["origin"]
        self.prompt, self.pending, self.history = meta["prompt"], meta["pending"], meta["history"]
        self.cache.tally.copy_(torch.tensor([meta["episodic_counts"][a] for a in ACTIONS]))
        self.blend = list(meta["blend"]) if meta.get("blend") is not None else None
        for prompt in {self.prompt, self.pending, (self.blend or [None])[0]} - {None}:
            self.pipe.encode(prompt)
