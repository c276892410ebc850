"""GroupNorm in float32, shared by the UNet and the fusion network."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the activation dtype: bf16/fp16 statistics
    over thousands of positions lose too much. Same parameters as nn.GroupNorm (kept fp32).

    On a CPU, bf16 activations go to torch's mixed-dtype kernel (bf16 in and out, fp32
    parameters, statistics accumulated in fp32): the same arithmetic without converting the
    tensor to fp32 and back, 14x faster at 64x120x160 (0.23 vs 3.1 ms)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dtype == torch.bfloat16 and self.weight is not None \
                and self.weight.dtype == torch.float32:
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return super().forward(x.float()).to(x.dtype)
