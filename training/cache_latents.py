"""Pre-encode the training latents of a config (the CPU speed-up; phase 1 and 2 build it on demand too).

    python -m training.cache_latents --config training/configs/cpu_demo.yaml
"""
from __future__ import annotations

import argparse

from training.builders import build_autoencoder
from training.config import load_config
from training.distributed import setup_distributed
from training.latent_cache import get_latent_cache


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.set)
    ctx = setup_distributed("cpu")
    cache = get_latent_cache(cfg, build_autoencoder(cfg["autoencoder"]), ctx)
    print(f"{len(cache)} frames, degraded {tuple(cache.degraded.shape)}, masks {tuple(cache.masks.shape)}")


if __name__ == "__main__":
    main()
