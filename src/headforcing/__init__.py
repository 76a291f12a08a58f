"""headforcing: long autoregressive video generation with a head-wise KV cache.

    import headforcing
    pipe = headforcing.load("toy")                      # once: spec, DiT, text encoder, decoder
    session = pipe.session("a red circle bounces on a green background", policy="headforcing", seed=0)
    chunk = session.step()                              # latents [1, 3, c, h, w], frames [1, n, H, W, 3]
    session.set_prompt("...")                           # from the next chunk on
    session.save("run.state.safetensors"); session = pipe.resume("run.state.safetensors")

Names are imported on first use, so that `headforcing --help` does not wait for torch.
"""

from importlib import import_module

__version__ = "0.2.0"

_EXPORTS = {
    "load": "engine.pipeline", "Pipeline": "engine.pipeline",
    "Session": "engine.session", "SessionOptions": "engine.session", "Chunk": "engine.session",
    "HeadMap": "cache.headmap", "HeadwiseCache": "cache.headwise", "EpisodicConfig": "cache.episodic",
    "Policy": "cache.policy", "RolePolicy": "cache.policy", "Sink": "cache.policy", "Episodic": "cache.policy", "Coarse": "cache.policy",
    "Recent": "cache.policy", "preset": "cache.policy", "window_policy": "cache.policy", "PRESETS": "cache.policy",
    "UsageError": "errors",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'headforcing' has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
