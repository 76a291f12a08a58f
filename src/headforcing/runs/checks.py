"""Every check of a run's input, in one place (diffusers' `check_inputs`): a `generate` request checked against
its model's spec before any weight is read (`plan`), and what a live page may send the server. A check raises
UsageError with one line naming the problem; the command turns it into exit code 2."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from ..cache.policy import PRESETS, preset
from ..engine.pipeline import model_spec, pick_device, pick_dtype
from ..engine.session import SessionOptions, check_options
from ..engine.timeline import Cue, check_timeline, latent_frames_for, schedule
from ..errors import UsageError
from ..tools.estimate import check_fits
from ..utils.files import check_output
from ..utils.video import check_writable, read_clip, read_image

MAX_PROMPT = 500  # characters of a live page's prompt
MAX_MESSAGE = 16 * 1024  # characters of one socket message: more is refused before it is parsed


@dataclass
class Plan:
    """A request checked against its model's spec, before any weights are loaded."""

    spec: object
    options: SessionOptions
    latent_frames: int  # to generate
    timeline: list[dict]  # cues as applied to the generated chunks
    init: np.ndarray | None  # the frames to continue [N, H, W, 3] uint8 (the usable tail of a clip, or an image)


def plan(request) -> Plan:
    """A `runs.generate.Request` checked whole: quality, model, the clip or image to continue, session options,
    length and timeline, outputs, and whether it fits in memory."""
    check_crf(request.crf)
    spec, _, _ = model_spec(request.model, request.wan_dir, request.checkpoint)
    init = read_init(request, spec)
    options = request.session_options(size=(init.shape[2], init.shape[1]) if init is not None else None)
    policy, _ = check_options(spec, options)
    C = spec.chunk_frames
    latent_frames = request.latent_frames or latent_frames_for(request.seconds, spec.fps, C, spec.vae_stride[0])
    cues = [Cue(0.0, request.prompt)] if isinstance(request.prompt, str) else list(request.prompt)
    check_timeline(cues, spec.video_frames(latent_frames) / spec.fps)
    given = 0 if init is None else (1 if request.init_image else (len(init) + spec.vae_stride[0] - 1) // spec.vae_stride[0])
    if not policy.bounded and given + latent_frames > spec.trained_frames:
        raise UsageError(
            f"policy {request.policy!r} keeps every frame and is valid only inside the trained window of "
            f"{spec.trained_frames} latent frames; this run needs {given + latent_frames}"
        )
    if request.out is not None:
        check_writable(request.out)
    if request.trace is not None:
        check_output(request.trace, "--trace")
    device = pick_device(request.device)
    check_fits(spec, policy.name, options.size or spec.size, pick_dtype(request.dtype, device), device)
    return Plan(spec, options, latent_frames, schedule(cues, latent_frames // C, C, spec.fps, spec.vae_stride[0]), init)


def check_crf(crf) -> None:
    if not 0 <= crf <= 51:
        raise UsageError(f"--crf must be 0..51, got {crf}")


def read_init(request, spec) -> np.ndarray | None:
    """The frames a request continues: the usable tail of --init-video, or --init-image; None for neither."""
    if request.init_video and request.init_image:
        raise UsageError("give --init-video or --init-image, not both")
    if request.init_video:
        frames, fps = read_clip(request.init_video)
        return fit_clip(frames, fps, spec, request.size, request.init_video)
    if request.init_image:
        frames = read_image(request.init_image)
        height, width = frames.shape[1:3]
        if request.size is not None and tuple(request.size) != (width, height):
            raise UsageError(f"image {request.init_image} is {width}x{height}; --size asks for {request.size[0]}x{request.size[1]}")
        return frames
    return None


def fit_clip(frames: np.ndarray, fps: float, spec, size, path: str) -> np.ndarray:
    """The tail of a clip that encodes to whole chunks of latent frames (Wan: 4L-3 frames, L a multiple of the
    chunk; pixels: L frames), after checking its frame rate and size; UsageError when it does not fit."""
    if abs(fps - spec.fps) > 0.01:
        raise UsageError(f"clip {path} is {fps:g} fps; the model makes {spec.fps} fps video (resample it first)")
    height, width = frames.shape[1:3]
    if size is not None and tuple(size) != (width, height):
        raise UsageError(f"clip {path} is {width}x{height}; --size asks for {size[0]}x{size[1]}")
    C, stride = spec.chunk_frames, spec.vae_stride[0]
    latents = C * (((len(frames) + stride - 1) // stride) // C)  # the most whole chunks it can fill
    if latents == 0:
        raise UsageError(f"clip {path} has {len(frames)} frames; at least {spec.video_frames(C)} are needed (one chunk)")
    return frames[len(frames) - spec.video_frames(latents) :]


def check_message(text: str | None) -> dict:
    """One socket message: JSON text of a bounded size, an object. UsageError names what is wrong."""
    if text is None:
        raise UsageError("binary messages are not accepted: send JSON text")
    if len(text) > MAX_MESSAGE:
        raise UsageError(f"a message is at most {MAX_MESSAGE} characters")
    try:
        message = json.loads(text)
    except RecursionError:
        raise UsageError("a message nests too deeply") from None
    if not isinstance(message, dict):
        raise UsageError("a message is a JSON object with a \"type\"")
    return message


def check_prompt(prompt) -> str:
    """A live page's prompt: text of 1..MAX_PROMPT characters."""
    if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > MAX_PROMPT:
        raise UsageError(f"a prompt is text of 1..{MAX_PROMPT} characters")
    return prompt


def check_live(spec, policy, seed) -> None:
    """What a live page may start: a preset that runs unbounded, an integer seed."""
    if policy not in PRESETS or not isinstance(seed, int) or isinstance(seed, bool):
        raise UsageError(f"policy must be one of {', '.join(PRESETS)} and seed an integer")
    if not preset(policy, spec.chunk_frames, spec.trained_frames).bounded:
        raise UsageError(f"policy {policy!r} keeps every frame and cannot run live (its video must end "
                         f"inside {spec.trained_frames} latent frames); pick a bounded one")
