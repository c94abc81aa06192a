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


class ValueNet(nn.Module):
    """State value V(s): an MLP with one output, (B, obs_dim) -> (B,) (IQL, A2PR)."""

    def __init__(self, obs_dim: int, hidden: Sequence[int] = (256, 256)) -> None:
        super().__init__()
        self.net = mlp(obs_dim, 1, hidden)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).squeeze(-1)


class GaussianActor(nn.Module):
    """N(tanh(MLP(s)), diag(exp(log_std))^2) with a learned, state-independent log std (IQL's policy).

    The mean is squashed, the samples are not: ``log_prob`` scores dataset actions under a plain
    Gaussian (no tanh Jacobian), and ``act`` clips samples into [-1, 1].
    """

    # The official IQL clips the log std to [-5, 2] (CORL's port uses [-20, 2]).
    LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (256, 256)) -> None:
        super().__init__()
        self.net = mlp(obs_dim, act_dim, hidden)
        self.log_std = nn.Parameter(torch.zeros(act_dim))

    def distribution_params(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (B, act_dim) in [-1, 1] and log std (act_dim,)."""
        return torch.tanh(self.net(obs)), self.log_std.clamp(self.LOG_STD_MIN, self.LOG_STD_MAX)

    def log_prob(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """log pi(action | obs) summed over action dims: (B,)."""
        mean, log_std = self.distribution_params(obs)
        z = (action - mean) * torch.exp(-log_std)
        return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, *, deterministic: bool = True) -> torch.Tensor:
        mean, log_std = self.distribution_params(obs)
        if deterministic:
            return mean
        return (mean + log_std.exp() * torch.randn_like(mean)).clamp(-1.0, 1.0)


class ObsNormalizer(nn.Module):
    """(obs - mean) / std with the dataset's statistics held as buffers.

    Buffers, not parameters: no optimizer touches them, yet they travel with ``state_dict``, so a
    restored or evaluated policy normalizes with the numbers it was trained with. ``identity``
    (mean 0, std 1) returns its input unchanged, bit for bit.
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        if mean.shape != std.shape or mean.dim() != 1:
            raise ValueError(f"mean and std must be equal 1-D shapes, got {tuple(mean.shape)} and {tuple(std.shape)}")
        if bool((std <= 0).any()):
            raise ValueError("std must be positive")
        self.register_buffer("mean", mean.detach().clone().float())
        self.register_buffer("std", std.detach().clone().float())

    @classmethod
    def identity(cls, obs_dim: int, device: torch.device | str = "cpu") -> ObsNormalizer:
        return cls(torch.zeros(obs_dim, device=device), torch.ones(obs_dim, device=device))

    @classmethod
    def of(cls, obs_mean: torch.Tensor, obs_std: torch.Tensor, *, enabled: bool = True) -> ObsNormalizer:
        """From a dataset's statistics (``ctx.offline.obs_mean/obs_std``), or the identity when disabled."""
        if not enabled:
            return cls.identity(obs_mean.shape[0], obs_mean.device)
        return cls(obs_mean, obs_std)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.mean) / self.std


def _mlp_forward(net: nn.Sequential, x: torch.Tensor, *, detach_params: bool) -> torch.Tensor:
    """Run an ``mlp`` on ``x``; with ``detach_params`` its weights act as constants (no gradient reaches them)."""
    if not detach_params:
        return net(x)
    for layer in net:
        # Parameter-free layers (ReLU) run as they are; the VAE's nets have no LayerNorm.
        x = F.linear(x, layer.weight.detach(), layer.bias.detach()) if isinstance(layer, nn.Linear) else layer(x)
    return x


class ConditionalVAE(nn.Module):
    """Conditional VAE of actions given states, BCQ-style (BCQ, A2PR's behaviour model).

    Encoder (s, a) -> hidden -> (mean, log std) of a ``latent_dim`` Gaussian, the log std clamped to
    [-4, 15]; decoder (s, z) -> hidden -> tanh action in [-1, 1]. ``detach_params=True`` lets a
    loss differentiate through the VAE to its inputs (an actor's actions) without reaching its weights.
    """

    LOG_STD_MIN, LOG_STD_MAX = -4.0, 15.0

    def __init__(self, obs_dim: int, act_dim: int, latent_dim: int, hidden: Sequence[int] = (750, 750),
                 latent_clip: float = 0.5) -> None:
        super().__init__()
        # One head of 2 * latent_dim outputs is the reference's two heads (mean, log std) side by side.
        self.encoder = mlp(obs_dim + act_dim, 2 * latent_dim, hidden)
        self.decoder = mlp(obs_dim + latent_dim, act_dim, hidden)
        self.latent_dim = latent_dim
        self.latent_clip = latent_clip

    def encode(self, obs: torch.Tensor, action: torch.Tensor, *, detach_params: bool = False,
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clamped log std of q(z | s, a), each (B, latent_dim)."""
        out = _mlp_forward(self.encoder, torch.cat([obs, action], dim=-1), detach_params=detach_params)
        mean, log_std = out.chunk(2, dim=-1)
        return mean, log_std.clamp(self.LOG_STD_MIN, self.LOG_STD_MAX)

    def decode(self, obs: torch.Tensor, z: torch.Tensor | None = None, *, detach_params: bool = False,
               ) -> torch.Tensor:
        """Actions (B, act_dim) in [-1, 1] decoded from ``z``.

        Without ``z``, the latent is drawn from N(0, 1) and clipped to [-latent_clip, latent_clip]:
        sampling near the prior's mode keeps generated actions where the data are dense (BCQ).
        """
        if z is None:
            z = torch.randn(*obs.shape[:-1], self.latent_dim, device=obs.device, dtype=obs.dtype)
            z = z.clamp(-self.latent_clip, self.latent_clip)
        out = _mlp_forward(self.decoder, torch.cat([obs, z], dim=-1), detach_params=detach_params)
        return torch.tanh(out)

    def forward(self, obs: torch.Tensor, action: torch.Tensor, *, detach_params: bool = False,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reparameterised reconstruction of ``action``: (reconstruction, mean, log std)."""
        mean, log_std = self.encode(obs, action, detach_params=detach_params)
        z = mean + log_std.exp() * torch.randn_like(mean)
        return self.decode(obs, z, detach_params=detach_params), mean, log_std
