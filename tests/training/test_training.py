"""Training phases on tiny synthetic data (CPU, seconds): losses, checkpoints, exact resume,
phase-2 gradient locality, a 2-process gloo run under torchrun, and the model export."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from magicfuse_core.checkpoint import load_model
from magicfuse_core.denoiser import EpsilonDenoiser
from magicfuse_core.models.autoencoder import Autoencoder, AutoencoderConfig
from magicfuse_core.schedule import DDIMSchedule
from training import export_model, phase1, phase2
from training.builders import build_autoencoder, build_fusion, build_unet, export_schedule, sampling_schedule
from training.checkpoints import load_trained_module
from training.config import load_config
from training.distributed import setup_distributed
from training.latent_cache import LatentCache, get_latent_cache

from training_data import make_dataset

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny convs run fastest on one thread


def write_config(tmp_path: Path, run_dir: Path, **changes) -> Path:
    """The tiny CPU config; `changes` set dotted keys ("phase1.max_steps": 2; top-level keys as they are)."""
    cfg = {
        "seed": 0, "run_dir": str(run_dir), "device": "cpu", "tensorboard": False, "threads": 1,
        "data": {"root": str(tmp_path / "data"), "split": "train", "det_subdir": "infrared", "degradation": "random",
                 "crop": [32, 32], "scale": None, "latent_cache": None, "cache_variants": 2, "num_workers": 0},
        "autoencoder": {"config": {"channels": 8, "num_res_blocks": 1}, "seed": 0},
        "ikr": {"unet": {"profile": "tiny", "config": {"model_channels": 16, "groups": 8}}},
        "ckg": {"unet": {"profile": "tiny", "config": {"model_channels": 16, "groups": 8}}},
        "fusion": {"net": {"profile": "tiny", "config": {"channels": 16, "num_blocks": 1}}},
        "phase1": {"batch_size": 2, "lr": 1e-3, "warmup_steps": 1, "grad_clip": 1.0, "ema_decay": 0.9,
                   "max_steps": 4, "time_budget_min": None, "log_every": 2, "ckpt_every": 2, "sample_every": 0},
        "phase2": {"ikr_checkpoint": None, "ckg_checkpoint": None, "batch_size": 2, "lr": 1e-3, "momentum": 0.9,
                   "weight_decay": 1e-4, "lr_step": 2, "lr_gamma": 0.5, "grad_clip": 1.0, "ema_decay": 0.0,
                   "seg_weight": 1.0, "sampling_steps": 5, "max_steps": 4, "time_budget_min": None,
                   "log_every": 2, "ckpt_every": 2, "sample_every": 0, "latent_crop": None},
        "export": {"inference_size": [32, 32], "dtype": "float32"},
    }
    for key, value in changes.items():
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    path = tmp_path / f"config_{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def state_of(checkpoint: Path) -> dict:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


# ---------------------------------------------------------------------------- phase 1

@pytest.mark.parametrize("component, prediction", [("ikr", "epsilon"), ("ikr", "sample"), ("autoencoder", None)])
def test_phase1_loss_is_finite_and_decreases(workdir, component, prediction):
    # One frame without degradation or crop randomness: the run overfits it.
    cfg = write_config(workdir, workdir / "run", **{"phase1.max_steps": 16, "phase1.lr": 3e-3,
                                                    "data.degradation": "none", "data.crop": [48, 48],
                                                    "ikr.unet.config.prediction": prediction or "epsilon"})
    losses = phase1.main(["--config", str(cfg), "--component", component, "--no-progress"])["losses"]
    assert len(losses) == 16 and np.isfinite(losses).all()
    assert np.mean(losses[-4:]) < np.mean(losses[:4])


def test_phase1_rollout_state_is_the_samplers_state_at_that_step():
    """rollout_prob trains on the states the few-step sampler visits: x_t is ddim_sample's own trajectory."""
    torch.manual_seed(0)
    net = build_unet({"profile": "tiny", "config": {"model_channels": 16, "groups": 8, "prediction": "sample"}}).eval()
    schedule = DDIMSchedule(num_inference_steps=5)
    cond, z_T = torch.rand(2, 8, 8, 8) * 2 - 1, torch.randn(2, 8, 8, 8)
    states = {}
    for seed in range(12):  # the step is drawn from g: collect several
        x_t, t = phase1.rollout_state(net, cond, z_T, schedule, torch.Generator().manual_seed(seed))
        states[int(t[0])] = x_t
    assert set(states) <= set(schedule.timesteps) and len(states) >= 3
    denoiser = EpsilonDenoiser(net, "sample", schedule.alphas_cumprod)
    x = z_T
    for i, t in enumerate(schedule.timesteps):
        if t in states:
            torch.testing.assert_close(states[t], x)
        with torch.no_grad():
            x, _ = schedule.step(x, denoiser(torch.cat([cond, x], dim=1), torch.full((2,), float(t))).float(), i)
    torch.testing.assert_close(states[schedule.timesteps[0]], z_T)


def test_phase1_fine_tunes_from_an_exported_denoiser_with_rollouts(workdir, tmp_path):
    from magicfuse_core.checkpoint import save_component
    start = build_unet({"profile": "tiny", "config": {"model_channels": 16, "groups": 8}})
    save_component(start, tmp_path / "model", "ckg", dtype=torch.float32)
    cfg = write_config(workdir, workdir / "run", **{"phase1.max_steps": 2, "phase1.lr": 0.0, "phase1.rollout_prob": 1.0,
                                                    "phase1.init": str(tmp_path / "model/ckg.safetensors")})
    summary = phase1.main(["--config", str(cfg), "--component", "ckg", "--no-progress"])
    assert np.isfinite(summary["losses"]).all()
    trained = load_trained_module(workdir / "run/ckg/last.pt")
    for k, v in start.state_dict().items():  # lr 0: exactly the weights it started from
        torch.testing.assert_close(trained.state_dict()[k], v)
    bad = write_config(workdir, workdir / "bad", **{"phase1.rollout_prob": 2.0})
    with pytest.raises(ValueError, match="rollout_prob"):
        phase1.main(["--config", str(bad), "--component", "ckg", "--no-progress"])


def test_phase1_resume_continues_exactly(workdir):
    straight = write_config(workdir, workdir / "straight")
    phase1.main(["--config", str(straight), "--component", "ckg", "--no-progress"])
    halves = write_config(workdir, workdir / "halves", **{"phase1.max_steps": 2})
    phase1.main(["--config", str(halves), "--component", "ckg", "--no-progress"])
    assert state_of(workdir / "halves/ckg/last.pt")["step"] == 2
    halves = write_config(workdir, workdir / "halves", **{"phase1.max_steps": 4})
    summary = phase1.main(["--config", str(halves), "--component", "ckg", "--no-progress"])
    assert len(summary["losses"]) == 2  # only the remaining steps ran
    a, b = state_of(workdir / "straight/ckg/last.pt"), state_of(workdir / "halves/ckg/last.pt")
    assert a["step"] == b["step"] == 4
    assert_same_weights(a["model"], b["model"])
    assert_same_weights(a["ema"]["shadow"], b["ema"]["shadow"])
    assert a["optimizer"]["state"][0]["step"] == b["optimizer"]["state"][0]["step"]


def test_phase1_resumes_exactly_from_a_checkpoint_of_the_older_format(workdir):
    # Runs started before the RNG states were kept per rank: one state (a dict) and the class name.
    straight = write_config(workdir, workdir / "straight")
    phase1.main(["--config", str(straight), "--component", "ckg", "--no-progress"])
    old = write_config(workdir, workdir / "old", **{"phase1.max_steps": 2})
    phase1.main(["--config", str(old), "--component", "ckg", "--no-progress"])
    state = state_of(workdir / "old/ckg/last.pt")
    state["rng"] = {**state["rng"][0], "cuda": None}
    state["model_kind"] = "ConditionalUNet"
    del state["kind"], state["world_size"]
    torch.save(state, workdir / "old/ckg/last.pt")
    phase1.main(["--config", str(write_config(workdir, workdir / "old")), "--component", "ckg", "--no-progress"])
    a, b = state_of(workdir / "straight/ckg/last.pt"), state_of(workdir / "old/ckg/last.pt")
    assert_same_weights(a["model"], b["model"])
    assert_same_weights(a["ema"]["shadow"], b["ema"]["shadow"])


def test_resuming_on_another_process_count_reseeds_the_rngs_and_says_so(workdir):
    cfg = write_config(workdir, workdir / "run", **{"phase1.max_steps": 2})
    phase1.main(["--config", str(cfg), "--component", "ikr", "--no-progress"])
    state = state_of(workdir / "run/ikr/last.pt")
    assert state["world_size"] == 1 and len(state["rng"]) == 1  # one state per rank
    state["rng"], state["world_size"] = state["rng"] * 2, 2     # as a 2-process run writes it
    torch.save(state, workdir / "run/ikr/last.pt")
    cfg = write_config(workdir, workdir / "run", **{"phase1.max_steps": 3})
    summary = phase1.main(["--config", str(cfg), "--component", "ikr", "--no-progress"])
    assert len(summary["losses"]) == 1
    log = (workdir / "run/ikr/train.log").read_text()
    assert "RNG states of 2 process(es), this run has 1" in log


@pytest.mark.parametrize("phase", [phase1, phase2])
def test_phases_give_the_process_group_the_configured_timeout(workdir, monkeypatch, phase):
    from datetime import timedelta

    from training import distributed

    class Joined(Exception):
        pass

    def init_process_group(backend, timeout):
        raise Joined(timeout)

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", init_process_group)
    cfg = write_config(workdir, workdir / "run", ddp_timeout_min=240)
    args = ["--config", str(cfg), "--no-progress"] + (["--component", "ikr"] if phase is phase1 else [])
    with pytest.raises(Joined) as joined:
        phase.main(args)
    assert joined.value.args[0] == timedelta(hours=4)


def test_object_crop_prob_reaches_the_latent_cache_batches(workdir):
    # Per-component option (phase1.ckg.object_crop_prob): Φ sees people far more often than uniform crops show them.
    cache = {"data.latent_cache": str(workdir / "latents.pt"), "data.latent_crop": [4, 4]}
    focused = write_config(workdir, workdir / "focused", **cache, **{"phase1.ckg": {"object_crop_prob": 1.0}})
    losses = phase1.main(["--config", str(focused), "--component", "ckg", "--no-progress"])["losses"]
    assert len(losses) == 4 and np.isfinite(losses).all()
    uniform = write_config(workdir, workdir / "uniform", **cache)
    phase1.main(["--config", str(uniform), "--component", "ckg", "--no-progress"])
    a, b = state_of(workdir / "focused/ckg/last.pt"), state_of(workdir / "uniform/ckg/last.pt")
    assert any(not torch.equal(a["model"][k], b["model"][k]) for k in a["model"])  # other crops, other weights
    bad = write_config(workdir, workdir / "bad", **cache, **{"phase1.ckg": {"object_crop_prob": 1.5}})
    with pytest.raises(ValueError, match="object crop probability"):
        phase1.main(["--config", str(bad), "--component", "ckg", "--no-progress"])
    uncached = write_config(workdir, workdir / "uncached", **{"phase1.ckg": {"object_crop_prob": 0.5}})
    with pytest.raises(ValueError, match="latent cache"):  # no silent no-op without a cache
        phase1.main(["--config", str(uncached), "--component", "ckg", "--no-progress"])
    uncached = write_config(workdir, workdir / "uncached2", **{"phase2.object_crop_prob": 0.5})
    with pytest.raises(ValueError, match="latent cache"):
        phase2.main(["--config", str(uncached), "--no-progress"])


def test_checkpoint_round_trip_gives_the_trained_network(workdir):
    cfg = write_config(workdir, workdir / "run", **{"phase1.max_steps": 2, "phase1.ema_decay": 0.0})
    phase1.main(["--config", str(cfg), "--component", "ikr", "--no-progress"])
    state = state_of(workdir / "run/ikr/last.pt")
    net = load_trained_module(workdir / "run/ikr/last.pt")  # EMA with decay 0 = the last weights
    assert_same_weights(net.state_dict(), state["model"])
    x, t = torch.randn(1, 16, 8, 8), torch.tensor([500.0])
    rebuilt = build_unet({"profile": "tiny", "config": {"model_channels": 16, "groups": 8}})
    rebuilt.load_state_dict(state["model"])
    assert torch.equal(net(x, t), rebuilt.eval()(x, t))


def test_min_snr_weights_only_the_low_noise_steps_down():
    schedule = DDIMSchedule()
    eps, noise = torch.ones(2, 8, 4, 4), torch.zeros(2, 8, 4, 4)
    noisy, clean = torch.tensor([960, 960]), torch.tensor([0, 0])
    assert phase1.weighted_eps_mse(eps, noise, noisy, schedule, gamma=5.0).item() == pytest.approx(1.0)
    a0 = schedule.alpha_bar(0)
    expected = 5 * (1 - a0) / a0
    assert phase1.weighted_eps_mse(eps, noise, clean, schedule, gamma=5.0).item() == pytest.approx(expected, rel=1e-4)


# ---------------------------------------------------------------------------- phase 2

def tiny_frozen_nets():
    torch.manual_seed(0)
    ae = Autoencoder(AutoencoderConfig(channels=8, num_res_blocks=1)).eval().requires_grad_(False)
    ikr = build_unet({"profile": "tiny", "config": {"model_channels": 16, "groups": 8}}).eval().requires_grad_(False)
    ckg = build_unet({"profile": "tiny", "config": {"model_channels": 16, "groups": 8}}).eval().requires_grad_(False)
    fusion = build_fusion({"profile": "tiny", "config": {"channels": 16, "num_blocks": 1}}).train()
    return ae, ikr, ckg, fusion


def test_phase2_gradients_reach_only_fusion_and_only_at_the_stop_step():
    ae, ikr, ckg, fusion = tiny_frozen_nets()
    for p in (*ikr.parameters(), *ckg.parameters()):
        p.requires_grad_(True)  # even denoisers left trainable receive nothing: they run without a graph
    grad_modes = []
    fusion.register_forward_hook(lambda *_: grad_modes.append(torch.is_grad_enabled()))
    cond = torch.rand(2, 8, 8, 8) * 2 - 1
    mask = torch.zeros(2, 32, 32, dtype=torch.long)
    mask[:, 8:24, 8:16] = 2
    loss, details = phase2.algorithm1_loss(fusion, ikr, ckg, ae, cond, mask, DDIMSchedule(num_inference_steps=5),
                                           stop_index=3, g=torch.Generator().manual_seed(0))
    loss.backward()
    assert grad_modes == [False, False, False, True]  # F ran at steps 0..2 without a graph, with one at 3
    for name in ("x_fused", "x_ikr", "x_ckg"):
        assert details[name].grad_fn is None and not details[name].requires_grad
    assert all(p.grad is None for m in (ae, ikr, ckg) for p in m.parameters())
    grads = {n: p.grad for n, p in fusion.named_parameters()}
    assert all(g is not None for g in grads.values())
    assert any(g.abs().sum() > 0 for n, g in grads.items() if n.startswith("segproj"))  # S
    assert grads["estimate.1.weight"].abs().sum() > 0                                      # the weight head of F


def test_phase2_decodes_the_fused_image_in_the_ikr_tone_when_asked():
    """magimg_tone: ikr trains F with the decoding inference then uses; the weight head still learns."""
    ae, ikr, ckg, fusion = tiny_frozen_nets()
    cond = torch.rand(2, 8, 8, 8) * 2 - 1
    mask = torch.zeros(2, 32, 32, dtype=torch.long)
    losses = {}
    for tone in ("own", "ikr"):
        fusion.zero_grad(set_to_none=True)
        loss, details = phase2.algorithm1_loss(fusion, ikr, ckg, ae, cond, mask, DDIMSchedule(num_inference_steps=5),
                                               stop_index=4, g=torch.Generator().manual_seed(0), magimg_tone=tone)
        loss.backward()
        assert fusion.estimate[1].weight.grad.abs().sum() > 0
        losses[tone] = float(details["visual"])
    assert losses["own"] != losses["ikr"]


@pytest.mark.parametrize("stop_index", [0, 2, 4])
def test_phase2_rolls_out_the_trajectory_inference_samples(stop_index):
    """Training's rollout down to the stop step is fused_sample's trajectory, step for step."""
    from magicfuse_core.sampler import fused_sample

    ae, ikr, ckg, fusion = tiny_frozen_nets()
    fusion.eval()
    schedule = DDIMSchedule(num_inference_steps=5)
    cond = torch.rand(2, 8, 8, 8) * 2 - 1
    mask = torch.zeros(2, 32, 32, dtype=torch.long)
    _, details = phase2.algorithm1_loss(fusion, ikr, ckg, ae, cond, mask, schedule, stop_index=stop_index,
                                        g=torch.Generator().manual_seed(7), tau=0.3)
    g = torch.Generator().manual_seed(7)  # the same draws, in the same order, as algorithm1_loss
    z_T = torch.randn(cond.shape, generator=g)
    seg_T = torch.randn((2, fusion.config.num_classes, 8, 8), generator=g)
    states = [(z_T, z_T, z_T)]  # (x_ikr, x_ckg, x_fused) entering each step
    with torch.no_grad():
        sampled = fused_sample(ikr, ckg, fusion, cond, z_T, seg_T, schedule, tau=0.3, return_weights=True,
                               callback=lambda i, step: states.append((step.next.x_ikr, step.next.x_ckg,
                                                                       step.next.x_fused)))
    x_ikr, x_ckg, x_fused = states[stop_index]
    torch.testing.assert_close(details["x_ikr"], x_ikr, rtol=0, atol=0)
    torch.testing.assert_close(details["x_ckg"], x_ckg, rtol=0, atol=0)
    torch.testing.assert_close(details["x_fused"], x_fused, rtol=0, atol=0)
    torch.testing.assert_close(details["w_r"], sampled.corrected_weights[stop_index], rtol=1e-6, atol=1e-6)


def test_phase2_overfits_one_batch():
    ae, ikr, ckg, fusion = tiny_frozen_nets()
    cond = torch.rand(2, 8, 8, 8) * 2 - 1
    mask = torch.zeros(2, 32, 32, dtype=torch.long)
    mask[:, 8:24, 8:16] = 2
    optimizer = torch.optim.SGD(fusion.parameters(), lr=1e-3, momentum=0.9)  # the paper's phase-2 optimiser
    losses = []
    for _ in range(12):
        loss, _ = phase2.algorithm1_loss(fusion, ikr, ckg, ae, cond, mask, DDIMSchedule(num_inference_steps=5),
                                         stop_index=2, g=torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < np.mean(losses[:3])


def test_phase2_init_weight_starts_the_fused_stream_from_ikr(workdir):
    cfg = write_config(workdir, workdir / "run", **{"phase2.max_steps": 1, "phase2.lr": 0.0,
                                                    "phase2.init_weight": 1.0})
    phase2.main(["--config", str(cfg), "--no-progress"])
    fusion = load_trained_module(workdir / "run/fusion/last.pt")
    x24, eps_ikr, eps_ckg = torch.randn(1, 24, 8, 8), torch.randn(1, 8, 8, 8), torch.randn(1, 8, 8, 8)
    w, _ = fusion(x24, eps_ikr, eps_ckg, torch.tensor([500.0]), torch.randn(1, 9, 8, 8))
    assert (w - 1).abs().mean() < 0.2


def test_phase2_seg_lr_scale_gives_the_segmentation_head_its_own_rate(workdir):
    cfg = write_config(workdir, workdir / "run", **{"phase2.max_steps": 1, "phase2.lr": 1e-3,
                                                    "phase2.seg_lr_scale": 10.0})
    phase2.main(["--config", str(cfg), "--no-progress"])
    weight_head, trunk, seg = state_of(workdir / "run/fusion/last.pt")["optimizer"]["param_groups"]
    assert weight_head["lr"] == trunk["lr"] and seg["lr"] == pytest.approx(10 * trunk["lr"])
    fusion = load_trained_module(workdir / "run/fusion/last.pt")
    assert len(seg["params"]) == len(list(fusion.segproj.parameters()))
    assert len(weight_head["params"]) == len(list(fusion.estimate.parameters()))
    assert len(weight_head["params"]) + len(trunk["params"]) + len(seg["params"]) == len(list(fusion.parameters()))
    bad = write_config(workdir, workdir / "bad", **{"phase2.max_steps": 1, "phase2.seg_lr_scale": 0.0})
    with pytest.raises(ValueError, match="seg_lr_scale"):
        phase2.main(["--config", str(bad), "--no-progress"])


def test_phase2_fine_tunes_from_an_exported_fusion_component(workdir, tmp_path):
    from magicfuse_core.checkpoint import save_component
    start = build_fusion({"profile": "tiny", "config": {"channels": 16, "num_blocks": 1}})
    save_component(start, tmp_path / "model", "fusion", dtype=torch.float16)
    cfg = write_config(workdir, workdir / "run", **{"phase2.max_steps": 1, "phase2.lr": 0.0,
                                                    "phase2.init_fusion": str(tmp_path / "model/fusion.safetensors")})
    phase2.main(["--config", str(cfg), "--no-progress"])
    trained = load_trained_module(workdir / "run/fusion/last.pt")
    for k, v in start.state_dict().items():  # lr 0: the fp16 weights it started from, nothing else
        torch.testing.assert_close(trained.state_dict()[k], v.half().float())
    other = write_config(workdir, workdir / "other", **{"phase2.init_fusion": str(tmp_path / "model/none.pt")})
    with pytest.raises(FileNotFoundError, match="none.pt"):
        phase2.main(["--config", str(other), "--no-progress"])


def test_latent_cache_remakes_its_masks_when_the_mask_options_change(tmp_path):
    root = make_dataset(tmp_path / "loose")
    for det in (root / "det/infrared").glob("*.txt"):  # boxes twice as wide as the warm blobs
        cls, cx, cy, w, h = det.read_text().split()
        det.write_text(f"{cls} {cx} {cy} {2 * float(w):.4f} {h}\n")
    cfg = load_config(write_config(tmp_path, tmp_path / "run", **{"data.latent_cache": str(tmp_path / "latents.pt"),
                                                                  "data.root": str(root)}))
    ae = build_autoencoder(cfg["autoencoder"])
    ctx = setup_distributed("cpu")
    boxes = get_latent_cache(cfg, ae, ctx, log=lambda *_: None)
    person = 2
    assert (boxes.masks == person).any() and not (boxes.masks == 255).any()
    cfg["data"]["silhouette_classes"] = ["person"]
    cut = get_latent_cache(cfg, ae, ctx, log=lambda *_: None)
    torch.testing.assert_close(cut.degraded, boxes.degraded)  # the latents are kept
    assert (cut.masks == 255).any()                              # the cold part of each box is ignored now
    assert ((cut.masks == person) <= (boxes.masks == person)).all()
    assert LatentCache.load(tmp_path / "latents.pt").meta["mask_options"]["silhouette_classes"] == [person]


def test_latent_cache_is_the_same_built_by_worker_processes(workdir):
    data = yaml.safe_load(write_config(workdir, workdir / "run").read_text())["data"]
    ae = build_autoencoder({"config": {"channels": 8, "num_res_blocks": 1}, "seed": 0})
    alone = LatentCache.build(data, ae, seed=0, log=lambda *_: None)
    shared = LatentCache.build({**data, "num_workers": 2}, ae, seed=0, log=lambda *_: None)
    for name in ("clean", "ir", "degraded", "masks"):
        assert torch.equal(getattr(alone, name), getattr(shared, name)), name
    assert alone.degraded.shape[1] == 2 and not torch.equal(alone.degraded[:, 0], alone.degraded[:, 1])


def test_phase2_optimizer_is_sgd_by_default_and_adamw_on_request(workdir):
    runs = {}
    for kind in ("sgd", "adamw"):
        cfg = write_config(workdir, workdir / kind, **{"phase2.max_steps": 1, "phase2.optimizer": kind})
        phase2.main(["--config", str(cfg), "--no-progress"])
        runs[kind] = state_of(workdir / kind / "fusion/last.pt")["optimizer"]
    assert all("momentum_buffer" in st for st in runs["sgd"]["state"].values())
    assert all("exp_avg_sq" in st for st in runs["adamw"]["state"].values())
    bad = write_config(workdir, workdir / "bad", **{"phase2.max_steps": 1, "phase2.optimizer": "adam"})
    with pytest.raises(ValueError, match="optimizer"):
        phase2.main(["--config", str(bad), "--no-progress"])


def test_phase2_segmentation_class_weights_are_the_references_or_uniform(workdir):
    ae, ikr, ckg, fusion = tiny_frozen_nets()
    cond = torch.rand(1, 8, 8, 8) * 2 - 1
    mask = torch.zeros(1, 32, 32, dtype=torch.long)
    mask[:, 8:24, 8:16] = 2
    seg = {}
    for name, weights in (("mfnet", phase2.MFNET_CLASS_WEIGHTS), ("uniform", (1.0,) * 9)):
        _, details = phase2.algorithm1_loss(fusion, ikr, ckg, ae, cond, mask, DDIMSchedule(num_inference_steps=2),
                                            stop_index=1, g=torch.Generator().manual_seed(0), seg_class_weights=weights)
        seg[name] = float(details["seg"])
    assert seg["mfnet"] != seg["uniform"]
    bad = write_config(workdir, workdir / "badw", **{"phase2.max_steps": 1, "phase2.seg_class_weights": "balanced"})
    with pytest.raises(ValueError, match="seg_class_weights must be mfnet, uniform or 9 positive numbers"):
        phase2.main(["--config", str(bad), "--no-progress"])
    assert phase2.seg_class_weights([1, 1, 2, 1, 1, 1, 1, 1, 1])[2] == 2.0


def test_phase2_without_visual_loss_decodes_nothing_and_the_anchor_keeps_fs_weight():
    """visual_weight 0 retrains S alone: no decoder pass at all, and the anchor holds w (hence MagImg)
    where it was while the segmentation loss moves F's trunk."""
    import copy

    ae, ikr, ckg, fusion = tiny_frozen_nets()
    decodes = []
    ae.decoder.register_forward_hook(lambda *_: decodes.append(1))
    anchor = copy.deepcopy(fusion).eval().requires_grad_(False)
    cond = torch.rand(2, 8, 8, 8) * 2 - 1
    mask = torch.zeros(2, 32, 32, dtype=torch.long)
    mask[:, 8:24, 8:16] = 2
    drift, seg = {}, {}
    for anchor_weight in (0.0, 100.0):
        net = copy.deepcopy(fusion)  # the weight head frozen (weight_lr_scale 0), as the S-only run trains it
        head = {id(q) for q in net.estimate.parameters()}
        optimizer = torch.optim.AdamW([q for q in net.parameters() if id(q) not in head], lr=3e-3)
        for step in range(15):
            loss, details = phase2.algorithm1_loss(net, ikr, ckg, ae, cond, mask, DDIMSchedule(num_inference_steps=5),
                                                   stop_index=step % 5, g=torch.Generator().manual_seed(0),
                                                   visual_weight=0.0, anchor=anchor, anchor_weight=anchor_weight)
            seg.setdefault(anchor_weight, []).append(float(details["seg"]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        assert details["images"] is None and "visual" not in details
        drift[anchor_weight] = sum(  # MSE of w against the anchor's on the inputs of every step
            float(phase2.algorithm1_loss(net, ikr, ckg, ae, cond, mask, DDIMSchedule(num_inference_steps=5),
                                         stop_index=i, g=torch.Generator().manual_seed(0), visual_weight=0.0,
                                         anchor=anchor, anchor_weight=1.0)[1]["anchor"]) for i in range(5))
    assert decodes == []
    assert drift[100.0] < 0.5 * drift[0.0]
    assert np.mean(seg[100.0][-3:]) < np.mean(seg[100.0][:3])  # S still learns under the anchor


def test_phase2_anchor_needs_the_fusion_net_it_anchors_to(workdir):
    bad = write_config(workdir, workdir / "bad", **{"phase2.max_steps": 1, "phase2.anchor_weight": 1.0})
    with pytest.raises(ValueError, match="set anchor_fusion or init_fusion"):
        phase2.main(["--config", str(bad), "--no-progress"])


def test_phase2_segmentation_gradients_do_not_shrink_the_weight_heads_update(workdir):
    # Clipping is per path: however large the segmentation loss, F's weight head moves the same.
    heads = []
    for name, seg_weight in (("light", 1.0), ("heavy", 1000.0)):
        cfg = write_config(workdir, workdir / name, **{"phase2.max_steps": 1, "phase2.seg_weight": seg_weight})
        phase2.main(["--config", str(cfg), "--no-progress"])
        heads.append(load_trained_module(workdir / name / "fusion/last.pt").estimate.state_dict())
    assert_same_weights(*heads)
    torch.manual_seed(0)  # the config's seed: phase 2's initial F
    start = build_fusion({"profile": "tiny", "config": {"channels": 16, "num_blocks": 1}}).estimate.state_dict()
    assert any(not torch.equal(heads[0][k], start[k]) for k in start), "the weight head was trained"


def test_phase2_weight_lr_scale_zero_trains_only_the_segmentation_path(workdir):
    cfg = write_config(workdir, workdir / "run", **{"phase2.max_steps": 2, "phase2.optimizer": "adamw",
                                                    "phase2.weight_lr_scale": 0.0})
    phase2.main(["--config", str(cfg), "--no-progress"])
    trained = load_trained_module(workdir / "run/fusion/last.pt")
    torch.manual_seed(0)  # the config's seed: phase 2's initial F
    start = build_fusion({"profile": "tiny", "config": {"channels": 16, "num_blocks": 1}})
    assert_same_weights(trained.estimate.state_dict(), start.estimate.state_dict())
    assert not torch.equal(next(trained.segproj.parameters()), next(start.segproj.parameters()))
    bad = write_config(workdir, workdir / "bad", **{"phase2.max_steps": 1, "phase2.weight_lr_scale": -1.0})
    with pytest.raises(ValueError, match="weight_lr_scale"):
        phase2.main(["--config", str(bad), "--no-progress"])


def test_phase2_with_latent_cache_resumes_exactly(workdir):
    cache = {"data.latent_cache": str(workdir / "latents.pt")}
    straight = write_config(workdir, workdir / "straight", **cache)
    summary = phase2.main(["--config", str(straight), "--no-progress"])
    assert (workdir / "latents.pt").is_file() and np.isfinite(summary["losses"]).all()
    phase2.main(["--config", str(write_config(workdir, workdir / "halves", **cache, **{"phase2.max_steps": 2})),
                 "--no-progress"])
    phase2.main(["--config", str(write_config(workdir, workdir / "halves", **cache)), "--no-progress"])
    a, b = state_of(workdir / "straight/fusion/last.pt"), state_of(workdir / "halves/fusion/last.pt")
    assert a["step"] == b["step"] == 4
    assert_same_weights(a["model"], b["model"])
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 4


# ---------------------------------------------------------------------------- scale-out and export

def test_two_process_gloo_run_under_torchrun(workdir):
    cfg = write_config(workdir, workdir / "ddp", **{"phase1.max_steps": 2, "phase1.batch_size": 1, "tensorboard": True})
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "training.phase1", "--config", str(cfg), "--component", "ikr", "--no-progress"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "world size 2" in (workdir / "ddp/ikr/train.log").read_text()
    state = state_of(workdir / "ddp/ikr/last.pt")
    assert state["step"] == 2
    assert state["world_size"] == 2 and len(state["rng"]) == 2  # every rank's RNG state, indexed by rank
    assert list((workdir / "ddp/ikr/tb").glob("events.out.tfevents.*")), "rank 0 writes TensorBoard scalars"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_phases_resume_on_cuda(workdir):
    # The checkpoint is read onto the CPU; the EMA averages and RNG states must land on the GPU again.
    for phase, args, sub in ((phase1, ["--component", "ikr"], "ikr"), (phase2, [], "fusion")):
        for max_steps in (2, 4):
            cfg = write_config(workdir, workdir / "cuda", **{"device": "cuda", "phase1.max_steps": max_steps,
                                                             "phase2.max_steps": max_steps})
            summary = phase.main(["--config", str(cfg), "--no-progress", *args])
        assert len(summary["losses"]) == 2 and np.isfinite(summary["losses"]).all()
        assert state_of(workdir / "cuda" / sub / "last.pt")["step"] == 4


def test_export_bundles_a_loadable_trained_model(workdir):
    cfg = write_config(workdir, workdir / "run", **{"phase1.max_steps": 1, "phase2.max_steps": 1})
    for component in ("ikr", "ckg"):
        phase1.main(["--config", str(cfg), "--component", component, "--no-progress"])
    cfg = write_config(workdir, workdir / "run", **{"phase1.max_steps": 1, "phase2.max_steps": 1,
                                                    "phase2.ikr_checkpoint": str(workdir / "run/ikr/last.pt"),
                                                    "phase2.ckg_checkpoint": str(workdir / "run/ckg/last.pt")})
    phase2.main(["--config", str(cfg), "--no-progress"])
    out = export_model.main(["--config", str(cfg), "--out", str(workdir / "model")])
    model = load_model(out)
    assert model.trained and model.info["inference_size"] == [32, 32]
    assert model.info["steps"] == {"ikr": 1, "ckg": 1, "fusion": 1}
    assert_same_weights(model.ikr.state_dict(), load_trained_module(workdir / "run/ikr/last.pt").state_dict())

    # Fine-tune F/S on top of the exported model: Ψ/Φ come from its folder, F/S's steps add up.
    shipped = {"phase2.ikr_checkpoint": str(out / "ikr.safetensors"), "phase2.ckg_checkpoint": str(out / "ckg.safetensors"),
               "phase2.init_fusion": str(out / "fusion.safetensors"), "phase2.max_steps": 1,
               "phase2.sampling_steps": 4, "data.silhouette_classes": ["person"]}
    tuned_cfg = write_config(workdir, workdir / "tuned", **shipped)
    phase2.main(["--config", str(tuned_cfg), "--no-progress"])
    tuned = load_model(export_model.main(["--config", str(tuned_cfg), "--out", str(workdir / "tuned_model")]))
    assert tuned.info["steps"] == {"ikr": 1, "ckg": 1, "fusion": 2}
    assert model.schedule.num_inference_steps == 5  # the test config's phase2.sampling_steps
    assert tuned.schedule.num_inference_steps == 4  # F/S trained on 4 steps: the model samples with 4
    assert "person boxes cut to their IR-warm pixels" in tuned.info["data"]["weak_masks"]
    assert_same_weights(tuned.ckg.state_dict(), model.ckg.state_dict())

    # Fewer steps than F/S trained on, at timesteps they trained on: export.timesteps, kept by model.json.
    few = load_model(export_model.main(["--config", str(tuned_cfg), "--out", str(workdir / "few_model"),
                                        "--set", "export.timesteps=[750, 250]", "export.radiation_shift=1.5"]))
    assert few.schedule.timesteps == (750, 250) and few.schedule.num_inference_steps == 2
    assert few.radiation_shift == 1.5 and tuned.radiation_shift == 0.0
    with pytest.raises(ValueError, match=r"trained on the rollout timesteps \[750, 500, 250, 0\] only, not on \[800\]"):
        export_model.main(["--config", str(tuned_cfg), "--out", str(workdir / "unseen"), "--set", "export.timesteps=[800, 250]"])
    with pytest.raises(ValueError, match="export: radiation_shift must be a finite number, got 'wide'"):
        export_model.main(["--config", str(tuned_cfg), "--out", str(workdir / "wide"), "--set", "export.radiation_shift=wide"])


def test_phase2_schedule_settings():
    assert sampling_schedule({"sampling_steps": 5}).timesteps == (800, 600, 400, 200, 0)
    assert sampling_schedule({"sampling_steps": None, "sampling_timesteps": [800, 400]}).timesteps == (800, 400)
    assert sampling_schedule({"sampling_steps": 2, "sampling_timesteps": [800, 400]}).num_inference_steps == 2
    with pytest.raises(ValueError, match="disagrees"):
        sampling_schedule({"sampling_steps": 5, "sampling_timesteps": [800, 400]})
    with pytest.raises(ValueError, match="phase2.sampling_timesteps"):
        sampling_schedule({"sampling_timesteps": [400, 800]})
    assert export_schedule({"sampling_steps": 5}, None).timesteps == (800, 600, 400, 200, 0)
    assert export_schedule({"sampling_steps": 5}, [800, 400]).timesteps == (800, 400)


@pytest.mark.parametrize("config", sorted((Path(__file__).resolve().parents[2] / "training/configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_config_builds_its_networks(config):
    # A typo in a profile or a network option must fail here, not 20 minutes into a GPU run.
    cfg = load_config(str(config), [])
    with torch.device("meta"):
        for component in ("ikr", "ckg"):
            assert build_unet(cfg[component]["unet"]).config.out_channels == 8
        assert build_fusion(cfg["fusion"]["net"]).config.num_classes == 9
    if "recipe" in cfg:  # the one-command run: its stages and shares are valid, its frame head fits its data
        from training.recipe import RECIPE_DEFAULTS, check_recipe
        stages = check_recipe({**RECIPE_DEFAULTS, **cfg["recipe"]})
        if "frame_seg" in stages:
            assert cfg["data"].get("scale") in (None, 1, 1.0) and not cfg["export"].get("inference_size")


def test_object_centred_crops_show_the_thermal_target():
    n, h, w = 3, 40, 40
    masks = torch.zeros(n, 4 * h, 4 * w, dtype=torch.uint8)
    masks[:, 140:148, 20:28] = 2  # one small person near the bottom-left corner of every frame
    cache = LatentCache({"clean": torch.zeros(n, 8, h, w), "ir": torch.zeros(n, 8, h, w),
                         "degraded": torch.zeros(n, 1, 8, h, w), "masks": masks}, {})
    g = torch.Generator().manual_seed(0)
    focused = cache.batch(64, (8, 8), g, focus=1.0)["mask"]
    assert bool(((focused == 2).flatten(1).any(1)).all())  # every crop holds part of the person
    uniform = cache.batch(64, (8, 8), g, focus=0.0)["mask"]
    assert float((uniform == 2).flatten(1).any(1).float().mean()) < 0.2
    with pytest.raises(ValueError, match="object crop probability"):
        cache.batch(2, (8, 8), g, focus=1.5)


def test_ckg_tone_picks_the_training_frame_whose_tone_renders_the_real_infrared(workdir, tmp_path):
    from magicfuse_core.checkpoint import load_model, random_model, save_model
    from training import ckg_tone

    torch.manual_seed(0)
    ae = Autoencoder(AutoencoderConfig(channels=8, num_res_blocks=1)).eval()
    latents, candidates = torch.rand(3, 8, 6, 6), torch.rand(3, 8, 6, 6)
    with torch.no_grad():  # "real" frames rendered exactly in candidate 1's tone
        real = ckg_tone.grey_u8(ae.decoder(latents, style_latent=candidates[1:2].expand(3, -1, -1, -1)))
    scores = ckg_tone.score_tones(ae, candidates, latents, real, progress=False)
    assert int(np.argmax(scores)) == 1 and scores[1] > scores[0] and scores[1] > scores[2]

    model_dir = save_model(random_model("tiny", seed=0), tmp_path / "model")
    cfg = write_config(workdir, workdir / "run", **{"data.root": str(make_dataset(tmp_path / "five", n=5))})
    picked = ckg_tone.main(["--config", str(cfg), "--model", str(model_dir), "--candidates", "2", "--score-frames", "2"])
    assert picked["frame"] in picked["candidates"] and len(picked["scores"]) == 2
    assert picked["scores"][picked["candidates"].index(picked["frame"])] == max(picked["scores"])
    model = load_model(model_dir)
    assert model.ckg_tone == "reference" and model.ckg_tone_latent.shape[:2] == (1, 8)
    assert model.info["ckg_tone"]["frame"].startswith(picked["frame"])


# ---------------------------------------------------------------------------- the stream segmentation head

def test_seg_head_trains_on_the_exact_rollouts_and_states_inference_samples():
    # The stored estimates are the fused sampler's z0_ikr / z0_ckg at every step for the same start, and S
    # unrolled over them ends in the state the sampler carries: S trains on what it will see.
    from magicfuse_core.sampler import fused_sample
    from training.seg_head import RolloutCache, unroll

    _, ikr, ckg, _ = tiny_frozen_nets()
    schedule = DDIMSchedule(num_inference_steps=4)
    torch.manual_seed(1)
    net = build_fusion({"config": {"channels": 16, "num_blocks": 1, "groups": 8, "seg_head": "streams",
                                   "seg_channels": 16}}).eval()
    degraded = torch.randn(2, 2, 8, 6, 7)  # 2 frames x 2 cached degradations
    cache = LatentCache({"clean": degraded[:, 0], "ir": degraded[:, 0], "degraded": degraded,
                         "masks": torch.zeros(2, 24, 28, dtype=torch.uint8)}, {"names": ["a", "b"]})
    rollouts = RolloutCache.build(cache, ikr, ckg, schedule, seeds=1, log=lambda *_: None)
    assert rollouts.z0.shape == (4, 4, 16, 6, 7) and rollouts.frame.tolist() == [0, 0, 1, 1]
    z_T = torch.randn((2, 8, 6, 7), generator=torch.Generator().manual_seed(1))  # frame 1's start noise
    seen = []
    seg_T = torch.randn((2, 9, 6, 7), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = fused_sample(ikr, ckg, net, degraded[1], z_T, seg_T, schedule,
                           callback=lambda i, step: seen.append(torch.cat([step.z0_ikr, step.z0_ckg], dim=1)))
        states = unroll(net, rollouts.z0[2:4].float(), schedule, torch.Generator().manual_seed(5))
    torch.testing.assert_close(rollouts.z0[2:4].float(), torch.stack(seen, dim=1).half().float())
    torch.testing.assert_close(states[-1], out.seg_state, rtol=2e-3, atol=2e-3)  # fp16 storage of the estimates


def test_seg_head_scores_held_out_frames_as_the_model_card_does():
    from magicfuse_core.data import Box, boxes_to_mask
    from magicfuse_core.evaluation.targets import segmentation_counts
    from magicfuse_core.palette import IGNORE_INDEX
    from training.seg_head import mask_counts

    rng = np.random.default_rng(0)
    ir = rng.integers(0, 60, (64, 80), dtype=np.uint8)
    ir[10:40, 20:30] = 220  # a warm person inside its box
    # YOLO person (centre 25, 23; 20 x 34 px) and car boxes, normalised centre and size
    boxes = [Box(0, 25 / 80, 23 / 64, 20 / 80, 34 / 64), Box(2, 57 / 80, 42 / 64, 26 / 80, 24 / 64)]
    weak = boxes_to_mask(boxes, 64, 80, outside_box_label=0, ir=ir, silhouette_classes=(2,))  # the cache's masks
    assert {0, 1, 2, IGNORE_INDEX} <= set(np.unique(weak).tolist())
    seg = rng.integers(0, 9, (64, 80))
    assert mask_counts(torch.from_numpy(seg), torch.from_numpy(weak.astype(np.int64))) == segmentation_counts(seg, boxes, ir)


def seg_head_config(workdir, model_dir, run, **changes):
    return write_config(workdir, workdir / run, **{
        "data.latent_cache": str(workdir / "latents.pt"), "data.silhouette_classes": ["person"],
        "seg_head": {"init_fusion": str(model_dir / "fusion.safetensors"), "seg_channels": 16, "holdout": 1,
                     "batch_size": 2, "latent_crop": [8, 8], "max_steps": 6, "eval_every": 3, "log_every": 3,
                     "max_outside": 1.0}, **changes})


def test_seg_head_keeps_fs_weight_and_exports_a_model_that_samples(tmp_path):
    from magicfuse_core.checkpoint import save_component
    from magicfuse_core.pipeline import MagicFusePipeline
    from training import seg_head

    workdir = tmp_path
    (workdir / "data").symlink_to(make_dataset(tmp_path / "three", n=3))
    start = build_fusion({"profile": "tiny", "config": {"channels": 16, "num_blocks": 1}})
    save_component(start, tmp_path / "model", "fusion", dtype=torch.float32)
    shipped = {}  # Ψ/Φ from a model folder, as the bundled model's S was trained
    for name in ("ikr", "ckg"):
        save_component(build_unet({"profile": "tiny", "config": {"model_channels": 16, "groups": 8}}), tmp_path / "model", name)
        shipped[f"phase2.{name}_checkpoint"] = str(tmp_path / "model" / f"{name}.safetensors")
    cfg = seg_head_config(workdir, tmp_path / "model", "run", **shipped)
    summary = seg_head.main(["--config", str(cfg), "--no-progress"])
    assert [h["step"] for h in summary["history"]] == [3, 6] and summary["step"] == 6
    # the calibration picked (within 0.02 of) the best held-out person IoU among the score shifts (max_outside 1)
    assert summary["holdout"]["person_IoU"] >= max(r["person_IoU"] for r in summary["calibration"]) - 0.02
    trained = load_trained_module(workdir / "run/fusion/last.pt")
    assert trained.config.seg_head == "streams" and trained.config.seg_channels == 16
    for k, v in start.state_dict().items():  # F's trunk and weight head: exactly the ones it started from
        if not k.startswith("segproj."):
            assert torch.equal(trained.state_dict()[k], v), k

    # a second run reuses the rollouts; export and sample with the new S
    rollouts = workdir / "latents.rollouts.pt"
    built = rollouts.stat().st_mtime_ns
    seg_head.main(["--config", str(seg_head_config(workdir, tmp_path / "model", "again", **shipped)), "--no-progress"])
    assert rollouts.stat().st_mtime_ns == built
    out = export_model.main(["--config", str(cfg), "--out", str(workdir / "exported")])
    model = load_model(out)
    assert model.fusion.config.seg_head == "streams" and model.info["steps"]["fusion"] == 6
    frame = np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    result = MagicFusePipeline(model)([frame], outputs=("magimg", "seg"))
    assert result.seg_labels[0].shape == (48, 48)


def test_seg_head_calibration_keeps_the_outside_box_share_and_bakes_the_shift_in(tmp_path):
    from magicfuse_core.checkpoint import save_component
    from training import seg_head

    (tmp_path / "data").symlink_to(make_dataset(tmp_path / "three", n=3))
    save_component(build_fusion({"profile": "tiny", "config": {"channels": 16, "num_blocks": 1}}), tmp_path / "m", "fusion")
    cfg = seg_head_config(tmp_path, tmp_path / "m", "run", **{})
    raw = yaml.safe_load(Path(cfg).read_text())
    raw["seg_head"].update({"max_outside": 0.0, "max_steps": 3, "holdout_spacing": "spread"})
    Path(cfg).write_text(yaml.safe_dump(raw))
    summary = seg_head.main(["--config", str(cfg), "--no-progress"])
    least = min(r["outside_object_fraction"] for r in summary["calibration"])
    assert summary["holdout"]["outside_object_fraction"] == least  # 0 % asked: the fewest outside-box objects
    # the shift is in the saved head: unshifted, the recalibration scores the picked figures again
    again = seg_head.main(["--config", str(cfg), "--no-progress", "--calibrate-only"])
    (unshifted,) = [r for r in again["calibration"] if r["person_shift"] == r["vehicle_shift"] == 0.0]
    picked = {k: v for k, v in summary["holdout"].items() if not k.endswith("_shift")}
    assert again["step"] == 3
    np.testing.assert_equal({k: unshifted[k] for k in picked}, picked)  # NaN (no car anywhere) equals NaN


def test_seg_head_needs_the_fusion_net_it_goes_with_and_a_holdout(workdir, tmp_path):
    from training import seg_head

    cfg = write_config(workdir, workdir / "run", **{"seg_head": {"holdout": 1}})
    with pytest.raises(ValueError, match="init_fusion"):
        seg_head.main(["--config", str(cfg), "--no-progress"])
    from magicfuse_core.checkpoint import save_component
    save_component(build_fusion({"profile": "tiny", "config": {"channels": 16, "num_blocks": 1}}), tmp_path / "m", "fusion")
    cfg = seg_head_config(workdir, tmp_path / "m", "run", **{})
    raw = yaml.safe_load(Path(cfg).read_text())
    with pytest.raises(FileNotFoundError, match="calibrate-only needs a trained head"):
        seg_head.main(["--config", str(cfg), "--no-progress", "--calibrate-only"])
    raw["seg_head"]["holdout"] = 2  # the test data has 2 frames: nothing left to train on
    Path(cfg).write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="holdout"):
        seg_head.main(["--config", str(cfg), "--no-progress"])
    (workdir / "latents.rollouts.pt").write_bytes(b"not a cache")  # a truncated file gets a clear error
    with pytest.raises(ValueError, match="delete it to rebuild"):
        seg_head.RolloutCache.load(workdir / "latents.rollouts.pt")


# ---------------------------------------------------------------------------- the frame segmentation head

def frame_seg_config(workdir, model_dir, run, **changes):
    return write_config(workdir, workdir / run, **{
        "data.silhouette_classes": ["person"],
        "frame_seg": {"init_fusion": str(model_dir / "fusion.safetensors"), "seg_channels": 8, "variants": 2,
                      "holdout": 1, "batch_size": 2, "crop": [16, 16], "max_steps": 4, "eval_every": 2,
                      "log_every": 2, "max_outside": 1.0}, **changes})


def test_frame_seg_trains_resumes_calibrates_once_and_exports_a_model_that_samples(tmp_path):
    from magicfuse_core.checkpoint import save_component
    from magicfuse_core.pipeline import MagicFusePipeline
    from training import frame_seg

    (tmp_path / "data").symlink_to(make_dataset(tmp_path / "three", n=3))
    start = build_fusion({"profile": "tiny", "config": {"channels": 16, "num_blocks": 1}})
    save_component(start, tmp_path / "model", "fusion", dtype=torch.float32)
    shipped = {}
    for name in ("ikr", "ckg"):
        save_component(build_unet({"profile": "tiny", "config": {"model_channels": 16, "groups": 8}}), tmp_path / "model", name)
        shipped[f"phase2.{name}_checkpoint"] = str(tmp_path / "model" / f"{name}.safetensors")
    cfg = frame_seg_config(tmp_path, tmp_path / "model", "run", **shipped)
    summary = frame_seg.main(["--config", str(cfg), "--no-progress"])
    assert [h["step"] for h in summary["history"]] == [2, 4] and summary["step"] == 4
    assert summary["holdout"]["person_IoU"] >= max(r["person_IoU"] for r in summary["calibration"]) - 0.02
    cache = frame_seg.FrameCache.load(tmp_path / "run" / "frames.pt")
    assert cache.frames.shape == (3, 2, 3, 24, 24) and cache.frames.dtype == torch.uint8  # half resolution
    assert not torch.equal(cache.frames[:, 0], cache.frames[:, 1])  # two different degradations per frame
    trained = load_trained_module(tmp_path / "run/fusion/last.pt")
    assert trained.config.seg_head == "frame"
    for k, v in start.state_dict().items():  # F's trunk and weight head: exactly the ones it started from
        if not k.startswith("segproj."):
            assert torch.equal(trained.state_dict()[k], v), k
    calibrated = trained.frame_seg.out.bias.clone()

    # started again unchanged: nothing trains and the shift is not applied twice
    again = frame_seg.main(["--config", str(cfg), "--no-progress"])
    assert again["step"] == 4 and "calibration" not in again
    assert torch.equal(load_trained_module(tmp_path / "run/fusion/last.pt").frame_seg.out.bias, calibrated)

    # a finished run is not trained on by a longer max_steps: its schedule ended and its scores are shifted
    raw = yaml.safe_load(Path(cfg).read_text())
    raw["frame_seg"]["max_steps"] = 6
    Path(cfg).write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="finished, calibrated run of 4 steps"):
        frame_seg.main(["--config", str(cfg), "--no-progress"])
    raw["frame_seg"]["max_steps"] = 4
    Path(cfg).write_text(yaml.safe_dump(raw))

    # interrupted after the step-2 checkpoint and started again: the same weights as the run that went through
    # (every step's batch is seeded by its step, the optimizer and schedule are restored)
    longer = frame_seg_config(tmp_path, tmp_path / "model", "cut", **shipped)
    raw = yaml.safe_load(Path(longer).read_text())
    raw["frame_seg"]["frame_cache"] = str(tmp_path / "run" / "frames.pt")
    Path(longer).write_text(yaml.safe_dump(raw))
    real_save = frame_seg.save_checkpoint

    def save_then_stop(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(frame_seg, "save_checkpoint", save_then_stop)
        with pytest.raises(KeyboardInterrupt):
            frame_seg.main(["--config", str(longer), "--no-progress"])
    resumed = frame_seg.main(["--config", str(longer), "--no-progress"])
    assert resumed["step"] == 4 and [h["step"] for h in resumed["history"]] == [2, 4]
    cut = load_trained_module(tmp_path / "cut/fusion/last.pt").state_dict()
    for k, v in load_trained_module(tmp_path / "run/fusion/last.pt").state_dict().items():
        torch.testing.assert_close(cut[k], v, msg=k)

    out = export_model.main(["--config", str(cfg), "--out", str(tmp_path / "exported")])
    model = load_model(out)
    assert model.fusion.config.seg_head == "frame"
    frame = np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    result = MagicFusePipeline(model)([frame], outputs=("magimg", "seg"))
    assert result.seg_labels[0].shape == (48, 48)


def test_frame_seg_zoomed_crops_keep_the_mask_on_the_frame():
    from magicfuse_core.evaluation.targets import PERSON_ID
    from training import frame_seg

    frames = torch.zeros(1, 1, 3, 48, 64, dtype=torch.uint8)
    frames[..., 12:36, 20:40] = 255  # a bright person at half resolution
    masks = torch.zeros(1, 96, 128, dtype=torch.uint8)
    masks[:, 24:72, 40:80] = PERSON_ID  # the same person on the full-resolution mask
    cache = frame_seg.FrameCache(frames, masks, {})
    g = torch.Generator().manual_seed(0)
    sizes = set()
    for _ in range(20):
        x, target = frame_seg.crop_batch(cache, [0], 4, (32, 32), (1.0, 1.0), 0.5, g, zoom=(0.6, 1.8))
        assert x.shape == (4, 3, 32, 32) and target.shape == (4, 32, 32)
        bright = x[:, 0] > 0.5
        person = target == PERSON_ID
        assert (bright == person).float().mean() > 0.95  # label edges may move by a pixel, nothing more
        sizes.add(int(person.sum()))
    assert len(sizes) > 10  # the person is seen at many sizes


def test_frame_seg_paste_person_brings_another_frames_person_pixels_with_their_label():
    from magicfuse_core.evaluation.targets import PERSON_ID
    from training import frame_seg

    frames = torch.zeros(2, 1, 3, 48, 64, dtype=torch.uint8)
    frames[1, ..., 12:36, 20:30] = 200  # frame 1: a person, frame 0: none
    frames[1, ..., 0:5, 0:5] = 90       # bright, but not a person: never pasted
    masks = torch.zeros(2, 96, 128, dtype=torch.uint8)
    masks[1, 24:72, 40:60] = PERSON_ID
    cache = frame_seg.FrameCache(frames, masks, {})
    g = torch.Generator().manual_seed(0)
    crop, target = torch.full((3, 32, 32), 0.1), torch.zeros(32, 32, dtype=torch.long)
    pasted, labels = frame_seg.paste_person(cache, [1], crop, target, g, window=(20, 16))
    person = labels == PERSON_ID
    assert person.any() and torch.equal(person, pasted[0] > 0.5)  # the label goes exactly with the pixels
    assert torch.all(pasted[:, ~person] == 0.1) and torch.all(crop == 0.1)  # the rest kept, the input untouched
    same, same_labels = frame_seg.paste_person(cache, [0], crop, target, g)
    assert torch.equal(same, crop) and torch.equal(same_labels, target)  # nobody to paste


def test_frame_seg_refuses_a_missing_fusion_net_a_holdout_without_training_frames_and_a_bad_cache(tmp_path):
    from magicfuse_core.checkpoint import save_component
    from training import frame_seg

    (tmp_path / "data").symlink_to(make_dataset(tmp_path / "two", n=2))
    with pytest.raises(ValueError, match="init_fusion"):
        frame_seg.main(["--config", str(write_config(tmp_path, tmp_path / "run")), "--no-progress"])
    save_component(build_fusion({"profile": "tiny", "config": {"channels": 16, "num_blocks": 1}}), tmp_path / "m", "fusion")
    cfg = frame_seg_config(tmp_path, tmp_path / "m", "run")
    raw = yaml.safe_load(Path(cfg).read_text())
    raw["frame_seg"]["holdout"] = 2  # the test data has 2 frames: nothing left to train on
    Path(cfg).write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="holdout"):
        frame_seg.main(["--config", str(cfg), "--no-progress"])
    with pytest.raises(ValueError, match="frame_seg.zoom"):
        frame_seg.main(["--config", str(cfg), "--no-progress", "--set", "frame_seg.holdout=1", "frame_seg.zoom=[2, 1]"])
    with pytest.raises(ValueError, match="frame_seg.paste_prob"):
        frame_seg.main(["--config", str(cfg), "--no-progress", "--set", "frame_seg.holdout=1", "frame_seg.paste_prob=1.5"])
    assert not (tmp_path / "run" / "frames.pt").exists()  # refused before the cache was built
    (tmp_path / "bad.pt").write_bytes(b"not a cache")
    with pytest.raises(ValueError, match="delete it to rebuild"):
        frame_seg.FrameCache.load(tmp_path / "bad.pt")


def test_frame_cache_is_the_same_built_by_worker_processes(tmp_path):
    from training import frame_seg
    from training.data import make_dataset as dataset_of

    (tmp_path / "data").symlink_to(make_dataset(tmp_path / "three", n=3))
    data = yaml.safe_load(write_config(tmp_path, tmp_path / "run").read_text())["data"]
    alone = frame_seg.FrameCache.build(dataset_of(data, 0, augment=False), 2, log=lambda _: None, progress=False)
    shared = frame_seg.FrameCache.build(dataset_of(data, 0, augment=False), 2, log=lambda _: None, progress=False,
                                        workers=2)
    assert alone.meta == shared.meta
    for a, b in ((alone.frames, shared.frames), (alone.masks, shared.masks), (alone.ir, shared.ir)):
        assert torch.equal(a, b)
    assert not torch.equal(alone.frames[:, 0], alone.frames[:, 1])  # two degradations, not one twice


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_frame_seg_trains_calibrates_and_resumes_on_cuda(tmp_path):
    # the head, its crops and the held-out scoring run on the GPU; the checkpoint is read back on the CPU
    from training import frame_seg

    cfg = three_frame_seg_run(tmp_path)
    summary = frame_seg.main(["--config", str(cfg), "--no-progress", "--set", "device=cuda"])
    assert summary["step"] == 4 and 0.0 <= summary["holdout"]["person_IoU"] <= 1.0
    assert load_trained_module(tmp_path / "run/fusion/last.pt").config.seg_head == "frame"
    again = frame_seg.main(["--config", str(cfg), "--no-progress", "--set", "device=cuda"])
    assert again["step"] == 4 and "calibration" not in again


def test_frame_seg_refuses_scaled_training_frames(tmp_path):
    from training import frame_seg

    cfg = three_frame_seg_run(tmp_path)
    with pytest.raises(ValueError, match="data.scale"):  # the head would meet people at another size
        frame_seg.main(["--config", str(cfg), "--no-progress", "--set", "data.scale=0.5"])
    assert not (tmp_path / "run" / "frames.pt").exists()


def test_frame_seg_keep_head_fine_tunes_the_frame_head_it_starts_from_and_refuses_another_head(tmp_path):
    from magicfuse_core.checkpoint import save_component
    from training import frame_seg

    (tmp_path / "data").symlink_to(make_dataset(tmp_path / "three", n=3))
    torch.manual_seed(3)
    start = build_fusion({"profile": "tiny", "config": {"channels": 16, "num_blocks": 1, "seg_head": "frame",
                                                        "seg_channels": 8}})
    save_component(start, tmp_path / "model", "fusion", dtype=torch.float32)
    cfg = frame_seg_config(tmp_path, tmp_path / "model", "run")
    raw = yaml.safe_load(Path(cfg).read_text())
    raw["frame_seg"].update(keep_head=True, lr=0.0, weight_decay=0.0)  # nothing moves: the start is visible
    Path(cfg).write_text(yaml.safe_dump(raw))
    frame_seg.main(["--config", str(cfg), "--no-progress"])
    tuned = dict(load_trained_module(tmp_path / "run/fusion/last.pt").frame_seg.named_parameters())
    for k, v in start.frame_seg.named_parameters():
        if k != "out.bias":  # calibration may shift the object scores
            assert torch.equal(tuned[k], v), k
    # a fresh head (keep_head false) starts from other weights
    raw["frame_seg"]["keep_head"] = False
    Path(cfg).write_text(yaml.safe_dump(raw))
    frame_seg.main(["--config", str(cfg), "--no-progress", "--fresh"])
    fresh = dict(load_trained_module(tmp_path / "run/fusion/last.pt").frame_seg.named_parameters())
    assert not torch.equal(fresh["enc1.0.0.weight"], start.frame_seg.enc1[0][0].weight)

    raw["frame_seg"].update(keep_head=True, seg_channels=16)  # another width than the head it would start from
    Path(cfg).write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="keep_head.*width 8"):
        frame_seg.main(["--config", str(cfg), "--no-progress", "--fresh"])
    save_component(build_fusion({"profile": "tiny", "config": {"channels": 16, "num_blocks": 1}}), tmp_path / "fold", "fusion")
    raw["frame_seg"].update(init_fusion=str(tmp_path / "fold" / "fusion.safetensors"), seg_channels=8)
    Path(cfg).write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="keep_head.*not a frame head"):
        frame_seg.main(["--config", str(cfg), "--no-progress", "--fresh"])


def test_frame_seg_crops_carry_the_infrared_with_the_frame_and_leave_its_gain_alone():
    from magicfuse_core.evaluation.targets import PERSON_ID
    from training import frame_seg

    frames = torch.zeros(2, 1, 3, 48, 64, dtype=torch.uint8)
    frames[..., 12:36, 20:30] = 100     # a person, grey in the visible frame
    ir = torch.zeros(2, 1, 48, 64, dtype=torch.uint8)
    ir[..., 12:36, 20:30] = 250         # and warm in the infrared
    masks = torch.zeros(2, 96, 128, dtype=torch.uint8)
    masks[:, 24:72, 40:60] = PERSON_ID
    cache = frame_seg.FrameCache(frames, masks, {}, ir)
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        x, target = frame_seg.crop_batch(cache, [0, 1], 4, (32, 32), (0.5, 0.6), 0.5, g, zoom=(0.6, 1.8),
                                         paste_prob=0.5)
        assert x.shape == (4, 4, 32, 32)
        warm, person = x[:, 3] > 0.5, target == PERSON_ID
        assert (warm == person).float().mean() > 0.95  # crops, zooms, pastes and flips move both alike
        assert x[:, 3].max() > 0.9 and x[:, :3].max() < 0.25  # the camera's gain (0.5-0.6): the frame's, not the IR's
    plain, _ = frame_seg.crop_batch(frame_seg.FrameCache(frames, masks, {}), [0], 2, (32, 32), (1, 1), 0.5, g)
    assert plain.shape == (2, 3, 32, 32)  # a cache without infrared gives the frame alone


def test_infrared_readout_loss_scores_relative_warmth():
    from training.frame_seg import infrared_readout_loss

    ir = torch.rand(2, 1, 16, 16)
    pooled = torch.nn.functional.avg_pool2d(ir, 2)
    assert float(infrared_readout_loss(pooled + 0.3, ir)) < 1e-6  # an offset is not an error
    assert float(infrared_readout_loss(1 - pooled, ir)) > 0.1     # inverted warmth is


def three_frame_seg_run(tmp_path) -> Path:
    """Three training frames, a tiny F to start from and a frame_seg config for RUN_DIR tmp_path/run."""
    from magicfuse_core.checkpoint import save_component

    (tmp_path / "data").symlink_to(make_dataset(tmp_path / "three", n=3))
    save_component(build_fusion({"profile": "tiny", "config": {"channels": 16, "num_blocks": 1}}), tmp_path / "m",
                   "fusion", dtype=torch.float32)
    return frame_seg_config(tmp_path, tmp_path / "m", "run")


def test_frame_seg_ir_readout_trains_resumes_and_is_not_exported(tmp_path):
    from training import frame_seg

    cfg = three_frame_seg_run(tmp_path)
    with pytest.raises(ValueError, match="frame_seg.ir_readout"):
        frame_seg.main(["--config", str(cfg), "--no-progress", "--set", "frame_seg.ir_readout=-1"])
    args = ["--config", str(cfg), "--no-progress", "--set", "frame_seg.ir_readout=2.0"]
    real_save = frame_seg.save_checkpoint

    def save_then_stop(*a, **kw):
        real_save(*a, **kw)
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(frame_seg, "save_checkpoint", save_then_stop)
        with pytest.raises(KeyboardInterrupt):
            frame_seg.main(args)
    cache = frame_seg.FrameCache.load(tmp_path / "run" / "frames.pt")
    assert cache.ir.shape == (3, 1, 24, 24) and cache.meta["ir"]
    with pytest.raises(ValueError, match="ir_readout"):  # resuming without it would drop what it learned
        frame_seg.main(["--config", str(cfg), "--no-progress"])
    resumed = frame_seg.main(args)
    straight = frame_seg.main([*args[:-1], "frame_seg.ir_readout=2.0", "run_dir=" + str(tmp_path / "straight"),
                               "frame_seg.frame_cache=" + str(tmp_path / "run" / "frames.pt")])
    assert resumed["step"] == straight["step"] == 4
    a = torch.load(tmp_path / "run/fusion/last.pt", weights_only=False)
    b = torch.load(tmp_path / "straight/fusion/last.pt", weights_only=False)
    for k, v in b["extra"]["ir_readout"].items():  # the readout resumed exactly, so did the head
        torch.testing.assert_close(a["extra"]["ir_readout"][k], v, msg=k)
    for k, v in b["model"].items():
        torch.testing.assert_close(a["model"][k], v, msg=k)
    trained = load_trained_module(tmp_path / "run/fusion/last.pt")
    assert not any("readout" in k for k in trained.state_dict())  # the exported S is the plain frame head


def test_frame_seg_holdout_scores_every_degradation_and_its_cached_scores_follow_the_bias():
    from magicfuse_core.evaluation.targets import PERSON_ID
    from magicfuse_core.evaluation.targets import segmentation_scores
    from magicfuse_core.models.fusion import class_labels, upsample_logits
    from training import frame_seg
    from training.seg_head import mask_counts

    torch.manual_seed(0)
    net = build_fusion({"profile": "tiny", "config": {"channels": 16, "num_blocks": 1, "seg_head": "frame",
                                                      "seg_channels": 8}}).eval()
    frames = torch.randint(0, 255, (2, 3, 3, 32, 32), dtype=torch.uint8)
    masks = torch.zeros(2, 64, 64, dtype=torch.uint8)
    masks[:, 10:40, 20:30] = PERSON_ID
    cache = frame_seg.FrameCache(frames, masks, {})
    by_hand: dict = {}
    for i in range(2):
        for v in range(3):  # each degradation scored on its own and summed
            labels = class_labels(upsample_logits(frame_seg.half_res_logits(net, frames[i, v][None])))[0]
            for k, c in mask_counts(labels, masks[i].long()).items():
                by_hand[k] = by_hand.get(k, 0) + c
    assert frame_seg.holdout_scores(net, cache, [0, 1]) == segmentation_scores(by_hand)
    unbiased = frame_seg.holdout_logits(net, cache, [0, 1])
    with torch.no_grad():
        net.frame_seg.out.bias[PERSON_ID] += 2.0  # what calibration does
    assert frame_seg.holdout_scores(net, cache, [0, 1], unbiased) == frame_seg.holdout_scores(net, cache, [0, 1])


def test_frame_seg_ema_keeps_the_average_of_the_heads_weights_calibrated(tmp_path):
    from magicfuse_core.data import holdout_frames
    from training import frame_seg

    cfg = three_frame_seg_run(tmp_path)
    with pytest.raises(ValueError, match="frame_seg.ema"):
        frame_seg.main(["--config", str(cfg), "--no-progress", "--set", "frame_seg.ema=1.0"])
    summary = frame_seg.main(["--config", str(cfg), "--no-progress", "--set", "frame_seg.ema=0.5",
                              "frame_seg.max_outside=0.0"])
    state = torch.load(tmp_path / "run/fusion/last.pt", weights_only=False)
    shadow = state["ema"]["shadow"]
    assert state["ema"]["updates"] == 4 and shadow
    for k, v in shadow.items():  # the kept head is the average (its output bias then calibrated)
        torch.testing.assert_close(state["model"][k].float(), v, msg=k)
    exported = load_trained_module(tmp_path / "run/fusion/last.pt")  # what export reads
    for k, v in state["model"].items():
        torch.testing.assert_close(exported.state_dict()[k], v, msg=k)
    picked = summary["holdout"]
    assert (picked["person_shift"], picked["vehicle_shift"]) != (0, 0)  # max_outside 0: the shift is not zero
    scores = frame_seg.holdout_scores(exported.eval(), frame_seg.FrameCache.load(tmp_path / "run" / "frames.pt"),
                                      holdout_frames(3, 1))
    for k in ("person_IoU", "outside_object_fraction"):  # the exported head scores what calibration picked
        assert scores[k] == pytest.approx(picked[k], nan_ok=True)


# ---------------------------------------------------------------------------- the one-command recipe

def recipe_config(tmp_path, **recipe) -> Path:
    """Three frames, a latent cache and every recipe stage at a few steps each."""
    (tmp_path / "data").symlink_to(make_dataset(tmp_path / "three", n=3))
    return write_config(tmp_path, tmp_path / "run", **{
        "data.latent_cache": str(tmp_path / "latents.pt"), "data.latent_crop": [4, 4], "data.scale": 1.0,
        "data.silhouette_classes": ["person"], "phase1.max_steps": 2, "phase2.max_steps": 2,
        "export": {"inference_size": None, "dtype": "float32", "timesteps": [800]},
        "frame_seg": {"seg_channels": 8, "variants": 2, "holdout": 1, "batch_size": 2, "crop": [16, 16],
                      "max_steps": 2, "eval_every": 2, "log_every": 2, "max_outside": 1.0},
        "recipe": {"tone_candidates": 1, "tone_frames": 1, **recipe}})


def test_recipe_trains_exports_and_tones_a_model_in_one_command_and_resumes_where_it_stopped(tmp_path):
    from magicfuse_core.pipeline import MagicFusePipeline
    from training import frame_seg, phase1, recipe

    cfg = recipe_config(tmp_path)
    real_frame_seg = frame_seg.main
    with pytest.MonkeyPatch.context() as mp:  # stopped in the frame head's stage
        mp.setattr(frame_seg, "main", lambda argv: (_ for _ in ()).throw(KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            recipe.main(["--config", str(cfg), "--out", str(tmp_path / "model"), "--no-progress"])
    state = json.loads((tmp_path / "run/recipe.json").read_text())
    assert list(state["stages"]) == ["latents", "ikr", "ckg", "fusion"]
    assert (tmp_path / "run/phase2/fusion/last.pt").is_file() and not (tmp_path / "run/fusion").exists()

    calls = []
    with pytest.MonkeyPatch.context() as mp:  # started again: the finished stages do not run again
        mp.setattr(phase1, "main", lambda argv: calls.append(argv))
        mp.setattr(frame_seg, "main", lambda argv: calls.append(argv) or real_frame_seg(argv))
        summary = recipe.main(["--config", str(cfg), "--out", str(tmp_path / "model"), "--no-progress"])
    assert len(calls) == 1 and f"frame_seg.init_fusion={tmp_path / 'run/phase2/fusion/last.pt'}" in calls[0]
    assert list(summary["stages"]) == list(recipe.STAGES)

    model = load_model(tmp_path / "model")
    assert model.fusion.config.seg_head == "frame" and model.ckg_tone == "reference"
    assert list(model.schedule.timesteps) == [800]
    assert model.info["recipe"]["stages_min"].keys() == set(recipe.STAGES)
    assert model.info["profile"]["fusion"]["config"]["seg_head"] == "frame"
    frame = np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    result = MagicFusePipeline(model)([frame], outputs=("magimg", "ckg", "seg"))
    assert result.magimg[0].shape == (48, 48, 3) and result.seg_labels[0].shape == (48, 48)


def test_recipe_splits_what_is_left_of_its_budget_among_the_training_stages(tmp_path):
    from training import recipe

    shares = {"ikr": 1, "ckg": 2, "fusion": 1, "frame_seg": 1}
    stages = ["ikr", "ckg", "fusion", "frame_seg", "export", "ckg_tone"]
    assert recipe.allot_minutes("ikr", stages, shares, 8.0, 1.0, 0.5) == pytest.approx(6.5 / 5)
    # a slow start shrinks the later stages instead of overrunning the budget
    assert recipe.allot_minutes("ckg", stages[1:], shares, 8.0, 5.0, 0.5) == pytest.approx(2.5 * 2 / 4)
    assert recipe.allot_minutes("fusion", stages[2:], shares, 8.0, 9.0, 0.5) == recipe.MIN_STAGE_MIN
    assert recipe.allot_minutes("ikr", stages, shares, 0, 1.0, 0.5) is None  # no budget: the stage's own

    cfg = recipe_config(tmp_path, budget_min=1.0, reserve_min=0.2, stages=["ikr", "ckg"])
    seen = []
    from training import phase1
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(phase1, "main", lambda argv: seen.append(argv))
        summary = recipe.main(["--config", str(cfg), "--out", str(tmp_path / "model"), "--no-progress"])
    budgets = [float(a.split("=")[1]) for argv in seen for a in argv if "time_budget_min=" in a]
    assert budgets[0] == pytest.approx(0.4, abs=0.01)  # half of (1.0 - 0.2), ikr and ckg share alike
    ikr_spent = summary["stages"]["ikr"]["wall_s"] / 60  # what ikr left unused goes to ckg, the last one
    assert budgets[1] == pytest.approx(0.8 - ikr_spent, abs=0.01)
    with pytest.raises(ValueError, match="recipe.stages"):
        recipe.main(["--config", str(cfg), "--out", str(tmp_path / "m"), "--set", "recipe.stages=[ckg, ikr]"])
    with pytest.raises(ValueError, match="recipe.stages: unknown"):
        recipe.main(["--config", str(cfg), "--out", str(tmp_path / "m"), "--set", "recipe.stages=[phase3]"])
    (tmp_path / "run" / "recipe.json").write_text("{truncated")  # a broken record: a clear way out, nothing lost
    with pytest.raises(ValueError, match="--fresh"):
        recipe.main(["--config", str(cfg), "--out", str(tmp_path / "model"), "--no-progress"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(phase1, "main", lambda argv: seen.append(argv))
        assert set(recipe.main(["--config", str(cfg), "--out", str(tmp_path / "model"), "--no-progress",
                                "--fresh"])["stages"]) == {"ikr", "ckg"}
    with pytest.raises(ValueError, match="recipe.shares.ckg"):
        recipe.main(["--config", str(cfg), "--out", str(tmp_path / "m"), "--set", "recipe.shares={ikr: 1}"])


def test_frame_seg_learns_from_teacher_heads_and_refuses_teachers_that_are_not_frame_heads(tmp_path):
    from magicfuse_core.checkpoint import save_component
    from training import frame_seg

    a, b = torch.randn(2, 9, 4, 4), torch.randn(2, 9, 4, 4)
    mean = (a.log_softmax(1) + b.log_softmax(1)) / 2
    assert float(frame_seg.distillation_loss(mean, [a, b])) < 1e-5  # the teachers' average: nothing to learn
    assert float(frame_seg.distillation_loss(a, [a, b])) > 1e-3
    student = a.clone().requires_grad_(True)
    frame_seg.distillation_loss(student, [a, b]).backward()
    assert student.grad.abs().sum() > 0  # a loss the student learns from, not a constant

    cfg = three_frame_seg_run(tmp_path)
    teacher = build_fusion({"profile": "tiny", "config": {"channels": 16, "num_blocks": 1, "seg_head": "frame",
                                                          "seg_channels": 8}})
    with torch.no_grad():
        teacher.frame_seg.out.bias[2] = 8.0  # a teacher that calls everything person
    save_component(teacher, tmp_path / "teacher", "fusion", dtype=torch.float32)
    taught = ["--config", str(cfg), "--no-progress", "--set", "frame_seg.distill=1.0",
              f"frame_seg.teachers=[{tmp_path / 'teacher' / 'fusion.safetensors'}]"]
    with_teacher = frame_seg.main(taught)
    alone = frame_seg.main(["--config", str(cfg), "--no-progress", "--set", f"run_dir={tmp_path / 'alone'}",
                            f"frame_seg.frame_cache={tmp_path / 'run' / 'frames.pt'}"])
    assert with_teacher["step"] == alone["step"] == 4
    a_head = load_trained_module(tmp_path / "run/fusion/last.pt").frame_seg.state_dict()
    b_head = load_trained_module(tmp_path / "alone/fusion/last.pt").frame_seg.state_dict()
    assert any(not torch.equal(a_head[k], b_head[k]) for k in a_head)  # the teacher's loss reached the weights
    with pytest.raises(ValueError, match="frame_seg.distill"):  # a weight without teachers
        frame_seg.main(["--config", str(cfg), "--no-progress", "--fresh", "--set", "frame_seg.distill=1.0"])
    with pytest.raises(ValueError, match="not a frame head"):
        frame_seg.main(["--config", str(cfg), "--no-progress", "--fresh", "--set", "frame_seg.distill=1.0",
                        f"frame_seg.teachers=[{tmp_path / 'm' / 'fusion.safetensors'}]"])
