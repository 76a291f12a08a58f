"""headforcing: long autoregressive video generation with a head-wise KV cache."""

from .cache.headmap import HeadMap
from .cache.headwise import HeadwiseCache
from .cache.policy import Episodic, Policy, RolePolicy, Recent, Sink, preset, window_policy
from .errors import UsageError

__all__ = ["HeadMap", "HeadwiseCache", "Policy", "RolePolicy", "Sink", "Episodic", "Recent", "preset", "window_policy", "UsageError"]
__version__ = "0.1.0"
