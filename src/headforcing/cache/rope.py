"""Wan's 3-axis RoPE with an explicit temporal position per latent frame.

diffusers' `WanRotaryPosEmbed` numbers frames 0..F-1 of the tensor it is given and reads a 1024-entry
table. Here the temporal angle is computed from the position itself (float64, like original Wan), so a
cached key can be rotated to any position: a frame's keys are stored before RoPE and rotated once per
chunk to the position its role gives it.
"""

from __future__ import annotations

import torch


def axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Channels of (t, h, w) in one head: 44/42/42 for 128 dims, as in Wan."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def inverse_frequencies(dim: int, theta: float) -> torch.Tensor:
    """[dim/2] float64 angular frequencies of one axis."""
    return 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)


class Rope:
    """Rotations for a (frames, height, width) token grid of one chunk size."""

    def __init__(self, head_dim: int, grid_hw: tuple[int, int], theta: float = 10000.0, device=None):
        t_dim, h_dim, w_dim = axis_dims(head_dim)
        self.head_dim = head_dim
        self.tokens_per_frame = grid_hw[0] * grid_hw[1]
        self.device = device
        self.inv_t = inverse_frequencies(t_dim, theta)  # [t_dim/2]
        h_angles = torch.outer(torch.arange(grid_hw[0], dtype=torch.float64), inverse_frequencies(h_dim, theta))
        w_angles = torch.outer(torch.arange(grid_hw[1], dtype=torch.float64), inverse_frequencies(w_dim, theta))
        hw = torch.cat(
            [
                h_angles[:, None, :].expand(-1, grid_hw[1], -1),
                w_angles[None, :, :].expand(grid_hw[0], -1, -1),
            ],
            dim=-1,
        ).reshape(self.tokens_per_frame, -1)  # [T, (h_dim + w_dim)/2]
        self.spatial = torch.polar(torch.ones_like(hw), hw).to(torch.complex64).to(device)

    def freqs(self, positions: list[int] | torch.Tensor) -> torch.Tensor:
        """Unit complex rotations [F*T, head_dim/2] for frames at the given temporal positions."""
        pos = torch.as_tensor(positions, dtype=torch.float64)
        t_angles = torch.outer(pos, self.inv_t)  # [F, t_dim/2]
        temporal = torch.polar(torch.ones_like(t_angles), t_angles).to(torch.complex64).to(self.device)
        num_frames, tokens = len(pos), self.tokens_per_frame
        out = torch.cat(
            [
                temporal[:, None, :].expand(-1, tokens, -1),
                self.spatial[None].expand(num_frames, -1, -1),
            ],
            dim=-1,
        )
        return out.reshape(num_frames * tokens, -1)


def rotate(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate x [..., S, D] by freqs [S, D/2] (channel pairs (2i, 2i+1), as in Wan); same dtype out."""
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)).contiguous())  # [..., S, D/2]
    return torch.view_as_real(pairs * freqs).flatten(-2).to(x.dtype)
