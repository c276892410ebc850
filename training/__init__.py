"""Training entry points: phase 1 (autoencoder, IKR Ψ, CKG Φ) and phase 2 (fusion F + segmentation S).

    python -m training.phase1 --config training/configs/cpu_smoke.yaml --component ikr
    python -m training.phase2 --config training/configs/cpu_smoke.yaml
    python -m training.export_model --config training/configs/cpu_smoke.yaml --out models/my_model

Every entry point also runs under torchrun (see docs/TRAINING.md, which also maps the shared modules).
"""
