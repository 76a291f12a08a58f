"""Streaming VAE decode == full decode; the mp4 holds 4N-3 frames and reads back."""

import numpy as np
import torch

from headforcing.engine.decode import StreamingVaeDecoder
from headforcing.models.specs import TINY, build_vae
from headforcing.utils.video import Mp4Writer, count_frames


def test_streaming_decode_equals_full_decode():
    vae = build_vae(TINY, seed=5)
    latents = torch.randn(1, 9, 16, 4, 6, generator=torch.Generator().manual_seed(0))  # [B, F, C, h, w]
    decoder = StreamingVaeDecoder(vae, grouped=False)
    streamed = torch.cat([decoder.decode_float(latents[:, i : i + 3]) for i in range(0, 9, 3)], dim=2)
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        full = vae.decode(latents.permute(0, 2, 1, 3, 4) * std + mean).sample
    assert streamed.shape == full.shape == (1, 3, 4 * 9 - 3, 32, 48)
    assert torch.equal(streamed, full)  # frame by frame: bit-identical
    grouped = StreamingVaeDecoder(vae)  # a chunk per decoder call
    streamed = torch.cat([grouped.decode_float(latents[:, i : i + 3]) for i in range(0, 9, 3)], dim=2)
    assert (streamed - full).abs().max().item() < 1e-5
    # a decoder that forgot its feature cache between chunks would differ
    decoder.reset()
    restarted = torch.cat([decoder.decode_float(latents[:, :3])] + [(decoder.reset(), decoder.decode_float(latents[:, 3:6]))[1]], 2)
    assert not torch.allclose(restarted, full[:, :, : restarted.shape[2]])


def test_mp4_has_every_frame_and_reads_back(tmp_path):
    import av

    t = np.arange(33)[:, None, None, None]
    y, x = np.mgrid[0:48, 0:64]
    frames = ((np.sin(x / 9 + t / 5) + np.cos(y / 7)) * 60 + 128).astype(np.uint8)  # [N, 1, H, W]
    frames = np.broadcast_to(frames[:, 0, :, :, None], (33, 48, 64, 3)).copy()  # [N, H, W, 3], smooth so H.264 keeps it
    path = tmp_path / "v.mp4"
    with Mp4Writer(path, 64, 48, fps=16) as writer:
        writer.write(frames[:9])
        writer.write(frames[9:])
    assert count_frames(path) == 33
    with av.open(str(path)) as container:
        back = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert np.abs(back.astype(int) - frames).mean() < 3


def test_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / "v.mp4"
    try:
        with Mp4Writer(path, 64, 48) as writer:
            writer.write(np.zeros((3, 48, 64, 3), np.uint8))
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert list(tmp_path.iterdir()) == []
