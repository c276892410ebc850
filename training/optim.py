"""Gradient clipping shared by the phases (the optimizers themselves are built in each phase script)."""
from __future__ import annotations

import torch


def grad_norm_(params, max_norm: float | None) -> float:
    """Clip the gradients of `params` to a total L2 norm of `max_norm` (None/0: no clipping);
    returns the norm before clipping (0 when no parameter has a gradient)."""
    params = [p for p in params if p.grad is not None]
    if max_norm:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    return float(torch.sqrt(sum((p.grad.float() ** 2).sum() for p in params))) if params else 0.0
