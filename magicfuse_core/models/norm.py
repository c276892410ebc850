"""GroupNorm in float32, shared by the UNet and the fusion network."""
from __future__ import annotations

import torch
import torch.nn as nn


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the activation dtype: bf16/fp16 statistics
    over thousands of positions lose too much. Same parameters as nn.GroupNorm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)
