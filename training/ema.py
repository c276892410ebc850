"""Exponential moving average of a network's weights (what the export ships)."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn


class EMA:
    """Exponential moving average of a module's floating-point state (parameters and buffers).

    The decay warms up as min(decay, (1 + n) / (10 + n)) so that early averages
    are not dominated by the random initialisation. The averages (float32) live on the
    device of the module's state: a checkpoint read on the CPU is moved there on load, and
    they follow the module if it moves.
    """

    def __init__(self, module: nn.Module, decay: float, prefix: str = ""):
        """`prefix`: average only the entries under it (e.g. "decoder."): frozen weights outside it stay
        bit-exact (an average of a constant drifts by rounding)."""
        self.decay = float(decay)
        self.updates = 0
        self.shadow = {k: v.detach().clone().float() for k, v in module.state_dict().items()
                       if v.is_floating_point() and k.startswith(prefix)}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in module.state_dict().items():
            if k in self.shadow:
                if self.shadow[k].device != v.device:  # the module moved after the EMA was made
                    self.shadow[k] = self.shadow[k].to(v.device)
                self.shadow[k].mul_(d).add_(v.detach().float(), alpha=1 - d)

    def copy_to(self, module: nn.Module) -> nn.Module:
        """A deep copy of `module` carrying the averaged weights."""
        averaged = copy.deepcopy(module)
        state = averaged.state_dict()
        for k, v in self.shadow.items():
            state[k].copy_(v)
        return averaged

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()` output; each average goes to the device of the one it replaces
        (the module's), whatever device the checkpoint was read onto."""
        saved = state["shadow"]
        missing, unexpected = sorted(set(self.shadow) - set(saved)), sorted(set(saved) - set(self.shadow))
        if missing or unexpected:
            raise ValueError(f"EMA state does not match the network: missing {missing[:8]}, "
                             f"unexpected {unexpected[:8]}")
        for k, v in saved.items():
            if v.shape != self.shadow[k].shape:
                raise ValueError(f"EMA state does not match the network: {k} is {tuple(v.shape)} in the "
                                 f"checkpoint, {tuple(self.shadow[k].shape)} in the network")
        self.decay, self.updates = float(state["decay"]), int(state["updates"])
        self.shadow = {k: v.detach().to(device=self.shadow[k].device, dtype=torch.float32, copy=True)
                       for k, v in saved.items()}
