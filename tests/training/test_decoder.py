"""training.decoder: a local decoder for the frozen encoder, learned from the latent cache."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from magicfuse_core.models.autoencoder import LocalDecoder
from training import decoder
from training.builders import build_autoencoder
from training.checkpoints import load_trained_module
from training.config import load_config

from test_training import state_of, write_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(workdir, run: str, **changes):
    return write_config(workdir, workdir / run, **{"data.latent_cache": str(workdir / "latents.pt"), **changes})


def test_decoder_learns_for_the_frozen_encoder_and_keeps_it(workdir):
    path = _config(workdir, "dec")
    cfg = load_config(path)
    cfg["decoder"] = {"latent_crop": 4, "batch_size": 4, "channels": 16, "blocks": 1, "max_steps": 30,
                      "log_every": 10, "ckpt_every": 30, "time_budget_min": 0, "lr": 3e-3}
    path.write_text(__import__("yaml").safe_dump({k: v for k, v in cfg.items() if not k.startswith("_")}))
    summary = decoder.main(["--config", str(path), "--no-progress"])
    assert summary["step"] == 30 and np.isfinite(summary["final_loss"])
    losses = [float(line.split("loss ")[1].split()[0]) for line in
              (workdir / "dec/decoder/train.log").read_text().splitlines() if " step " in line and " lr " in line]
    assert losses[-1] < losses[0], losses

    ae = load_trained_module(workdir / "dec/decoder/last.pt")  # the whole autoencoder, as configs name it
    assert isinstance(ae.decoder, LocalDecoder) and ae.config.decoder == "local"
    released = build_autoencoder(cfg["autoencoder"])
    for k, v in released.encoder.state_dict().items():
        assert torch.equal(ae.encoder.state_dict()[k], v), f"encoder weight {k} changed"
    assert state_of(workdir / "dec/decoder/last.pt")["extra"]["component"] == "decoder"


class _Cache:
    """What make_batch reads of a LatentCache: diffusion-space clean / infrared latents and a length."""

    def __init__(self, clean, ir):
        self.clean, self.ir = clean, ir

    def __len__(self):
        return len(self.clean)


def test_mixed_latent_batches_target_the_frames_mixed_the_same_way():
    """The locality samples: a latent mixed with mask m must decode to the frames mixed with m upsampled."""
    cache = _Cache(torch.full((1, 8, 6, 6), -1.0), torch.full((1, 8, 6, 6), 1.0))  # latents 0 and 1 in [0, 1]
    clean = torch.zeros(1, 3, 24, 24, dtype=torch.uint8)
    ir = torch.full((1, 1, 24, 24), 255, dtype=torch.uint8)
    p = {"batch_size": 16, "latent_crop": 6, "mix_prob": 1.0}
    latents, frame_latents, target = decoder.make_batch(cache, clean, ir, p, torch.Generator().manual_seed(0))
    torch.testing.assert_close(frame_latents, latents)  # the crop is the whole 6x6 frame here
    m = 1 - latents[:, :1]  # latent = m * 0 + (1 - m) * 1: m keeps the visible stream
    expected = 1 - torch.nn.functional.interpolate(m, scale_factor=4, mode="bilinear", align_corners=False)
    torch.testing.assert_close(target, expected.expand(-1, 3, -1, -1))
    assert 0.05 < float(m.mean()) < 0.95 and float(m.std()) > 0.05  # real mixes, not whole frames


def test_the_tone_comes_from_the_whole_frame_the_crop_is_cut_from():
    """Crops decode with the whole frame's latent as `style_latent`, mixed the same way inside the crop."""
    g = torch.Generator().manual_seed(1)
    cache = _Cache(torch.rand(2, 8, 12, 16, generator=g) * 2 - 1, torch.rand(2, 8, 12, 16, generator=g) * 2 - 1)
    clean = torch.randint(0, 255, (2, 3, 48, 64), dtype=torch.uint8, generator=g)
    ir = torch.randint(0, 255, (2, 1, 48, 64), dtype=torch.uint8, generator=g)
    latents, frame_latents, target = decoder.make_batch(cache, clean, ir, {"batch_size": 6, "latent_crop": 4,
                                                                           "mix_prob": 0.5}, g)
    assert latents.shape == (6, 8, 4, 4) and frame_latents.shape == (6, 8, 12, 16) and target.shape == (6, 3, 16, 16)
    found = 0
    for crop, frame in zip(latents, frame_latents):  # each crop is a window of its own frame latent
        windows = frame.unfold(1, 4, 1).unfold(2, 4, 1).permute(1, 2, 0, 3, 4)
        found += int(((windows - crop).abs().flatten(2).amax(-1) < 1e-6).any())
    assert found == 6


def test_decoder_without_a_latent_cache_says_what_to_set(workdir):
    with pytest.raises(SystemExit, match="set data.latent_cache"):
        decoder.main(["--config", str(write_config(workdir, workdir / "nocache")), "--no-progress"])
