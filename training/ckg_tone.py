"""Pick the reference infrared tone the CKG image is decoded in, from the training frames, and record it in a model.

    python -m training.ckg_tone --config training/configs/cpu_demo.yaml --model models/demo

The released autoencoder's latent carries no absolute brightness, so a generated infrared latent decoded alone
takes whatever tone its sharpness implies (few-step samples decode far too bright). With `ckg_tone: reference`
the decoder normalises the CKG image with the statistics of decoding one real infrared frame instead. This
script chooses that frame among the training split only: every candidate's tone is scored by decoding the
*real* infrared latents of other training frames in it (PSNR of the luma against the real frames), so the
choice measures how faithfully a tone renders this camera's infrared, not how well it suits one model's output.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from tqdm import tqdm

from magicfuse_core.checkpoint import set_ckg_tone
from magicfuse_core.color import luma
from magicfuse_core.evaluation.metrics import ir_similarity
from magicfuse_core.pipeline import images_to_uint8
from training.builders import build_autoencoder
from training.config import RUN_DEFAULTS, load_config, repo_path, with_defaults
from training.data import make_dataset
from training.distributed import setup_distributed


def grey_u8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] -> (B, H, W) uint8 luma, as the pipeline turns the CKG image into its `ir` output."""
    images = images.float()
    return images_to_uint8(luma(images[:, 0:1], images[:, 1:2], images[:, 2:3]))[..., 0]


@torch.no_grad()
def score_tones(ae, candidates: torch.Tensor, latents: torch.Tensor, real: np.ndarray,
                progress: bool = True) -> np.ndarray:
    """Mean PSNR of decoding `latents` (N, C, h, w) in [0, 1] in each candidate's tone (K, C, h', w') against
    the real frames (N, H, W) uint8 -> (K,)."""
    scores = []
    for k in tqdm(range(len(candidates)), desc="CKG tone candidates", disable=not progress):
        style = candidates[k:k + 1].expand(len(latents), -1, -1, -1)
        decoded = grey_u8(ae.decoder(latents, style_latent=style))
        scores.append(np.mean([ir_similarity(d, r)["PSNR"] for d, r in zip(decoded, real)]))
    return np.asarray(scores)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the training config (its data: and autoencoder:)")
    parser.add_argument("--model", required=True, help="model folder to record the tone in")
    parser.add_argument("--candidates", type=int, default=16, help="training frames tried as the tone")
    parser.add_argument("--score-frames", type=int, default=12, help="other training frames each tone is scored on")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides (YAML values)")
    args = parser.parse_args(argv)
    if args.candidates < 1 or args.score_frames < 1:
        parser.error("--candidates and --score-frames must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.set)
    device = setup_distributed(with_defaults(cfg, RUN_DEFAULTS)["device"]).device  # the decodes: on a GPU if any
    ae = build_autoencoder(cfg["autoencoder"]).eval().to(device)
    dataset = make_dataset(cfg["data"], seed=int(cfg.get("seed", 0)), augment=False)  # the training split only
    n = len(dataset)
    if n < 2:
        raise ValueError(f"need at least 2 training frames to pick a tone, found {n}")
    # Evenly spaced, disjoint: candidates at even positions of the spread, scoring frames at odd ones.
    spread = np.linspace(0, n - 1, min(n, 2 * max(args.candidates, args.score_frames))).round().astype(int)
    candidate_ids = list(dict.fromkeys(spread[0::2]))[: args.candidates]
    score_ids = [i for i in dict.fromkeys(spread[1::2]) if i not in candidate_ids][: args.score_frames]
    g = torch.Generator().manual_seed(0)

    def encoded(i: int) -> tuple[torch.Tensor, np.ndarray]:
        ir = dataset[i]["ir"][None]
        noise = torch.randn(ae.encoder.noise_shape(ir), generator=g)  # drawn on the CPU: the same tone anywhere
        return ae.encode(ir.to(device), noise=noise.to(device)), grey_u8(ir)[0]

    with torch.no_grad():
        cands = [encoded(i)[0] for i in tqdm(candidate_ids, desc="encoding candidates")]
        scored = [encoded(i) for i in tqdm(score_ids, desc="encoding scoring frames")]
    shapes = {tuple(c.shape) for c in cands} | {tuple(s[0].shape) for s in scored}
    if len(shapes) != 1:
        raise ValueError(f"training frames of several sizes {sorted(shapes)}: give the data a crop or one size")
    scores = score_tones(ae, torch.cat(cands), torch.cat([s[0] for s in scored]), np.stack([s[1] for s in scored]))
    best = int(np.argmax(scores))
    name = dataset.names[candidate_ids[best]]
    note = {"frame": f"{name} ({cfg['data'].get('split', 'train')} split of {cfg['data']['root']})",
            "picked_by": f"python -m training.ckg_tone: highest mean PSNR of {len(score_ids)} other training frames' "
                         f"real infrared latents decoded in the tone, among {len(candidate_ids)} candidates",
            "psnr_db": round(float(scores[best]), 2), "psnr_db_worst_candidate": round(float(scores.min()), 2)}
    set_ckg_tone(repo_path(args.model), cands[best].cpu(), note)
    print(f"CKG tone of {args.model}: {name}, {scores[best]:.2f} dB on {len(score_ids)} training frames "
          f"(candidates {scores.min():.2f} - {scores.max():.2f} dB)")
    return {"frame": name, "scores": scores.tolist(), "candidates": [dataset.names[i] for i in candidate_ids]}


if __name__ == "__main__":
    main()
