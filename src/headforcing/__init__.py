"""headforcing: long autoregressive video generation with a head-wise KV cache.

    import headforcing
    pipe = headforcing.load("toy")                      # once: spec, DiT, text encoder, decoder
    session = pipe.session("a red circle bounces on a green background", policy="headforcing", seed=0)
    chunk = session.step()                              # latents [1, 3, c, h, w], frames [1, n, H, W, 3]
    session.set_prompt("...")                           # from the next chunk on
    session.save("run.state.safetensors"); session = pipe.resume("run.state.safetensors")
"""

from .cache.episodic import EpisodicConfig
from .cache.headmap import HeadMap
from .cache.headwise import HeadwiseCache
from .cache.policy import PRESETS, Episodic, Policy, Recent, RolePolicy, Sink, preset, window_policy
from .engine.pipeline import Pipeline, load
from .engine.session import Chunk, Session, SessionOptions
from .errors import UsageError

__all__ = [
    "load", "Pipeline", "Session", "SessionOptions", "Chunk",
    "HeadMap", "HeadwiseCache", "Policy", "RolePolicy", "Sink", "Episodic", "Recent", "EpisodicConfig",
    "preset", "window_policy", "PRESETS", "UsageError",
]
__version__ = "0.2.0"
