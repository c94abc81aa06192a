"""Networks shared by every continuous-control method.

The critic ensemble keeps its N members' weights in one (N, in, out) tensor per layer, so a forward
pass of all members is one batched matmul (``torch.baddbmm``), never a Python loop over members.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


def mlp(in_dim: int, out_dim: int, hidden: Sequence[int], *, layer_norm: bool = False) -> nn.Sequential:
    """Plain ReLU MLP; ``layer_norm`` puts a LayerNorm after each hidden linear layer."""
    layers: list[nn.Module] = []
    dims = [in_dim, *hidden]
    for d_in, d_out in itertools.pairwise(dims):
        layers.append(nn.Linear(d_in, d_out))
        if layer_norm:
            layers.append(nn.LayerNorm(d_out))
        # In place: the linear layer's backward needs its input, not its output.
        layers.append(nn.ReLU(inplace=True))
    layers.append(nn.Linear(dims[-1], out_dim))
    return nn.Sequential(*layers)


class EnsembleLinear(nn.Module):
    """N independent linear layers applied as one batched matmul: (N, B, in) -> (N, B, out)."""

    def __init__(self, in_dim: int, out_dim: int, ensemble_size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(ensemble_size, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(ensemble_size, 1, out_dim))
        # The same initialisation as nn.Linear, member by member.
        bound = 1.0 / math.sqrt(in_dim)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, *, detach_params: bool = False) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        if detach_params:
            weight, bias = weight.detach(), bias.detach()
        if x.dim() == 2:  # the same (B, in) input for every member broadcasts to (N, B, out)
            return torch.matmul(x, weight) + bias
        return torch.baddbmm(bias, x, weight)


class EnsembleCritic(nn.Module):
    """N Q-functions Q_i(s, a) evaluated together.

    ``forward(obs, action)`` takes (B, obs_dim) and (B, act_dim), or (N, B, ·) per-member inputs,
    and returns (N, B) values.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (256, 256, 256),
                 ensemble_size: int = 2) -> None:
        super().__init__()
        dims = [obs_dim + act_dim, *hidden, 1]
        self.layers = nn.ModuleList(
            EnsembleLinear(d_in, d_out, ensemble_size) for d_in, d_out in itertools.pairwise(dims)
        )
        self.ensemble_size = ensemble_size

    def forward(self, obs: torch.Tensor, action: torch.Tensor, *, detach_params: bool = False) -> torch.Tensor:
        x = torch.cat([obs, action], dim=-1)
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.ensemble_size, -1, -1)
        for layer in self.layers[:-1]:
            # In place saves allocating (and page-faulting) a fresh (N, rows, hidden) tensor per layer.
            x = F.relu(layer(x, detach_params=detach_params), inplace=True)
        return self.layers[-1](x, detach_params=detach_params).squeeze(-1)


class TanhGaussianActor(nn.Module):
    """Gaussian policy squashed by tanh into [-1, 1]^act_dim (SAC, CQL).

    ``forward`` returns a reparameterised sample and its log-probability (with the tanh Jacobian,
    computed in the numerically stable form ``2 (log 2 - u - softplus(-2u))``).
    """

    LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (256, 256, 256)) -> None:
        super().__init__()
        self.net = mlp(obs_dim, 2 * act_dim, hidden)
        self.act_dim = act_dim

    def distribution_params(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        return mean, log_std.clamp(self.LOG_STD_MIN, self.LOG_STD_MAX)

    def forward(self, obs: torch.Tensor, *, num_samples: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample actions. With ``num_samples=K`` returns (K, B, act_dim) and (K, B), else (B, ·)."""
        mean, log_std = self.distribution_params(obs)
        std = log_std.exp()
        shape = mean.shape if num_samples is None else (num_samples, *mean.shape)
        noise = torch.randn(shape, device=mean.device, dtype=mean.dtype)
        pre_tanh = mean + std * noise
        # log N(u; mean, std) summed over action dims, minus log|d tanh(u)/du|
        log_prob = (-0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prob = log_prob - (2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))).sum(-1)
        return torch.tanh(pre_tanh), log_prob

    def log_prob(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """log pi(action | obs) of given actions in [-1, 1] (clipped away from +-1 for atanh)."""
        mean, log_std = self.distribution_params(obs)
        action = action.clamp(-1.0 + 1e-6, 1.0 - 1e-6)
        pre_tanh = torch.atanh(action)
        noise = (pre_tanh - mean) / log_std.exp()
        log_prob = (-0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        return log_prob - (2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))).sum(-1)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, *, deterministic: bool = True) -> torch.Tensor:
        if deterministic:
            return torch.tanh(self.distribution_params(obs)[0])
        return self(obs)[0]


class DeterministicActor(nn.Module):
    """a = max_action * tanh(MLP(s)) (TD3, TD3+BC, BC)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (256, 256)) -> None:
        super().__init__()
        self.net = mlp(obs_dim, act_dim, hidden)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(obs))

    @torch.no_grad()
    def act(self, obs: torch.Tensor, *, deterministic: bool = True) -> torch.Tensor:
        return self(obs)


def soft_update_(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging in place: target <- (1 - tau) target + tau source."""
    with torch.no_grad():
        torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)
