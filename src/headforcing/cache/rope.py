"""Wan's 3-axis RoPE with an explicit temporal position per latent frame.

diffusers' `WanRotaryPosEmbed` numbers frames 0..F-1 of the tensor it is given and reads a 1024-entry
table. Here the temporal angle is computed from the position itself (float64, like original Wan), so a
cached key can be rotated to any position: a frame's keys are stored before RoPE and rotated once per
chunk to the position its role gives it. Rotations are real (cos, sin) pairs, not complex numbers, so that
torch.compile's code generators (which have no complex kernels) fuse them into the attention step.
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
        rows, cols = (torch.arange(n, dtype=torch.float64) for n in grid_hw)
        self.spatial = unit_rotations(spatial_angles(rows, cols, h_dim, w_dim, theta)).to(device)  # [T, (h_dim + w_dim)/2, 2]
        self.pooled = None  # a coarse slot: 4 frames pooled 2x2, each token at the centre of its block
        if grid_hw[0] % 2 == 0 and grid_hw[1] % 2 == 0:
            centres = (2 * torch.arange(n // 2, dtype=torch.float64) + 0.5 for n in grid_hw)
            self.pooled = unit_rotations(spatial_angles(*centres, h_dim, w_dim, theta)).repeat(4, 1, 1).to(device)  # [T, ., 2]
        self.inv_t_on_device = self.inv_t.to(device)

    def freqs(self, positions: list[int] | torch.Tensor, pooled: bool = False) -> torch.Tensor:
        """Rotations [F*T, head_dim/2, 2] (cos, sin; float32) for frames at the given temporal positions
        (pooled: for coarse slots, each four frames pooled 2x2 at one position). A tensor of positions on
        the device stays there (no host round-trip)."""
        if isinstance(positions, torch.Tensor):
            t_angles = torch.outer(positions.to(self.inv_t_on_device.device, torch.float64), self.inv_t_on_device)
        else:
            t_angles = torch.outer(torch.as_tensor(positions, dtype=torch.float64), self.inv_t)  # [F, t_dim/2]
        temporal = unit_rotations(t_angles).to(self.device)
        num_frames, tokens = t_angles.shape[0], self.tokens_per_frame
        out = torch.cat(
            [
                temporal[:, None].expand(-1, tokens, -1, -1),
                (self.pooled if pooled else self.spatial)[None].expand(num_frames, -1, -1, -1),
            ],
            dim=-2,
        )
        return out.reshape(num_frames * tokens, -1, 2)


def spatial_angles(rows: torch.Tensor, cols: torch.Tensor, h_dim: int, w_dim: int, theta: float) -> torch.Tensor:
    """float64 angles [rows * cols, (h_dim + w_dim)/2] of a row-major token grid at the given coordinates."""
    h_angles = torch.outer(rows, inverse_frequencies(h_dim, theta))
    w_angles = torch.outer(cols, inverse_frequencies(w_dim, theta))
    grid = torch.cat([h_angles[:, None, :].expand(-1, len(cols), -1), w_angles[None, :, :].expand(len(rows), -1, -1)], dim=-1)
    return grid.reshape(len(rows) * len(cols), -1)


def unit_rotations(angles: torch.Tensor) -> torch.Tensor:
    """float64 angles [..., n] -> [..., n, 2] (cos, sin) in float32."""
    return torch.stack([angles.cos(), angles.sin()], dim=-1).float()


def rotate(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate x [..., S, D] by freqs [S, D/2, 2] (channel pairs (2i, 2i+1), as in Wan); same dtype out."""
    pairs = x.float().unflatten(-1, (-1, 2))  # [..., S, D/2, 2]
    real, imag = pairs[..., 0], pairs[..., 1]
    cos, sin = freqs[..., 0], freqs[..., 1]
    return torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1).flatten(-2).to(x.dtype)
