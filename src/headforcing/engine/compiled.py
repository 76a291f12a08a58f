"""The DiT compiled whole for steady-state chunks (torch.compile, fullgraph=True).

Once a session's cache is full (`HeadwiseCache.steady`), every denoising forward of a chunk has the same
shapes and reads the cache only through preallocated buffers, and so does the commit pass: one graph for
each, compiled once and reused for every later chunk, prompt switches included (the text context is a graph
input; the prompt cache's memo is bypassed while tracing). Cache-filling chunks, prompt-switch re-encodings
and the episodic memory's bookkeeping run eagerly, outside the graphs. `reduce-overhead` captures the graphs
with CUDA graphs; the cache's buffers are then marked as static addresses so that their in-place updates
stay inside the capture.
"""

from __future__ import annotations

MODES = ("default", "reduce-overhead", "max-autotune")  # torch is imported when compiling: the CLI reads these
RECOMPILE_LIMIT = 64  # graphs per compiled function: a model serves many sessions, policies and sizes


def graphs_compiled() -> int:
    """Graphs torch.compile has made in this process so far (first compilations and recompilations)."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


class CompiledDiT:
    def __init__(self, transformer, mode: str = "default", backend: str = "inductor"):
        """backend: "inductor" (what users run); "eager" traces and guards exactly as inductor does, without
        generating code (tests that count recompiles use it)."""
        if mode not in MODES:
            raise ValueError(f"unknown compile mode {mode!r}; known: {', '.join(MODES)}")
        self.mode, self.backend = mode, backend
        import torch

        config = torch._dynamo.config
        config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
        options = dict(mode=mode) if backend == "inductor" and mode != "default" else {}
        self.module = torch.compile(transformer, fullgraph=True, dynamic=False, backend=backend, **options)

    @property
    def static_buffers(self) -> bool:
        """Whether the cache's buffers must keep their addresses (CUDA-graph capture)."""
        return self.mode == "reduce-overhead"
