"""Optimizers shared by the control methods."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def adam(params: Iterable[torch.Tensor], lr: float) -> torch.optim.Adam:
    """Adam (PyTorch defaults besides ``lr``) with the fused kernel where the parameters' device has one.

    Unfused, Adam on the CPU steps parameter by parameter in Python: about a sixth of a SAC update
    with 2x256 networks. Fused, it is one kernel per parameter (measured here: 118 -> 132 SAC
    updates/s on 2 cores). Same algorithm and hyperparameters; results differ only in float rounding.
    """
    params = list(params)
    device = params[0].device.type if params else "cpu"
    return torch.optim.Adam(params, lr=lr, fused=device in ("cpu", "cuda"))
