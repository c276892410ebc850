"""Pre-encode the training latents of a config (the CPU speed-up; phase 1 and 2 build it on demand too).

    python -m training.cache_latents --config training/configs/cpu_demo.yaml
"""
from __future__ import annotations

import argparse

from training.builders import build_autoencoder
from training.config import RUN_DEFAULTS, load_config, with_defaults
from training.distributed import setup_distributed
from training.latent_cache import get_latent_cache


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.set)
    ctx = setup_distributed(with_defaults(cfg, RUN_DEFAULTS)["device"])  # the encoder on the GPU when there is one
    cache = get_latent_cache(cfg, build_autoencoder(cfg["autoencoder"]).to(ctx.device), ctx)
    print(f"{len(cache)} frames, degraded {tuple(cache.degraded.shape)}, masks {tuple(cache.masks.shape)}")


if __name__ == "__main__":
    main()
