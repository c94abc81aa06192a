"""Pure loss functions shared by the continuous-control methods.

Tensors in, tensors out: no optimizer, no buffer, no ``.item()``. Ensemble values are (N, B) with
the member on the first axis (see ``core.nets.EnsembleCritic``).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def clipped_double_q_target(reward: torch.Tensor, terminated: torch.Tensor, next_q: torch.Tensor,
                            gamma: float) -> torch.Tensor:
    """y = r + gamma (1 - d) min_i Q_i(s', a'); next_q is (N, B), the result (B,), no gradient."""
    return (reward + gamma * (1.0 - terminated) * next_q.min(dim=0).values).detach()


def critic_mse_loss(q: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum over ensemble members of each member's mean squared TD error; q (N, B), target (B,)."""
    return (q - target.unsqueeze(0)).pow(2).mean(dim=1).sum()


def sac_actor_loss(log_prob: torch.Tensor, q: torch.Tensor, alpha: torch.Tensor | float) -> torch.Tensor:
    """E_s[alpha log pi(a~|s) - min_i Q_i(s, a~)] with a~ reparameterised; q (N, B), log_prob (B,)."""
    return (alpha * log_prob - q.min(dim=0).values).mean()


def sac_temperature_loss(log_alpha: torch.Tensor, log_prob: torch.Tensor, target_entropy: float) -> torch.Tensor:
    """-E[log alpha (log pi + H_target)]: raises alpha when the entropy falls below its target."""
    return -(log_alpha * (log_prob.detach() + target_entropy)).mean()


def cql_penalty(q_sampled: torch.Tensor, q_data: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """CQL(H)'s conservative gap per ensemble member.

    T * mean_s logsumexp_k(q_sampled[i, s, k] / T) - mean_s q_data[i, s].

    Args:
        q_sampled: (N, B, K) Q-values at K proposal actions per state, already corrected by their
            importance weights (minus log proposal density).
        q_data: (N, B) Q-values at the dataset actions.
    Returns:
        (N,) gap of each member.
    """
    pushed_down = temperature * torch.logsumexp(q_sampled / temperature, dim=-1).mean(dim=-1)
    return pushed_down - q_data.mean(dim=-1)


def bc_mse_loss(pred_action: torch.Tensor, data_action: torch.Tensor) -> torch.Tensor:
    """Deterministic behaviour cloning: mean squared action error."""
    return F.mse_loss(pred_action, data_action)


def target_policy_smoothing(action: torch.Tensor, noise: torch.Tensor, noise_std: float,
                            noise_clip: float) -> torch.Tensor:
    """TD3's smoothed target action clip(a' + clip(noise_std * eps, -c, c), -1, 1).

    Args:
        action: (..., act_dim) target-policy actions in [-1, 1].
        noise: standard normal draws of the same shape (the caller owns the randomness).
        noise_std: sigma of the Gaussian noise, in units of the [-1, 1] action range.
        noise_clip: c, the bound on the noise.
    """
    return (action + (noise_std * noise).clamp(-noise_clip, noise_clip)).clamp(-1.0, 1.0)


def td3_critic_loss(q: torch.Tensor, reward: torch.Tensor, terminated: torch.Tensor, next_q: torch.Tensor,
                    gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """TD3's critic loss: every member regresses on y = r + gamma (1 - d) min_i Qbar_i(s', a~').

    Args:
        q: (N, B) Q-values of the dataset actions.
        reward, terminated: (B,).
        next_q: (N, B) target-critic values at the smoothed target actions.
    Returns:
        (sum over members of each member's MSE, the targets (B,) without gradient)
    """
    target = clipped_double_q_target(reward, terminated, next_q, gamma)
    return critic_mse_loss(q, target), target


def anchored_actor_loss(q: torch.Tensor, pi_action: torch.Tensor, anchor_action: torch.Tensor, alpha: float,
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-lambda mean(Q) + mean((pi(s) - anchor)^2) with lambda = alpha / mean|Q| held constant.

    TD3+BC anchors the actor to the dataset's action, PRDC to the action of the dataset point
    nearest to (beta s, pi(s)).

    Args:
        q: (B,) Q_1(s, pi(s)), differentiable in pi(s).
        pi_action: (B, act_dim) the actor's actions; anchor_action: (B, act_dim) their anchors.
        alpha: the Q weight before normalization.
    Returns:
        (loss, lambda, the anchor's mean squared error without gradient)
    """
    # Normalizing by the Q scale makes alpha independent of the reward scale; the clamp only guards
    # the 0/0 of an all-zero critic (1e-8 is below any Q a trained critic produces).
    lmbda = alpha / q.abs().mean().detach().clamp_min(1e-8)
    anchor = F.mse_loss(pi_action, anchor_action)
    return -lmbda * q.mean() + anchor, lmbda, anchor.detach()


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """Asymmetric squared loss mean(|tau - 1(u < 0)| u^2) with u = target - prediction.

    Minimised over a constant prediction it gives the tau-expectile of the targets; tau = 0.5 is half
    the mean squared error, tau -> 1 approaches the maximum (IQL's value loss).
    """
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return (weight * diff.pow(2)).mean()


def cvae_loss(recon: torch.Tensor, action: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor, *,
              row_weight: torch.Tensor | None = None, kl_weight: float = 0.5,
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Conditional VAE loss mean(w (a^ - a)^2) + kl_weight * KL (BCQ's form; A2PR weights the rows).

    KL = -0.5 mean(1 + log sigma^2 - mu^2 - sigma^2), averaged over rows and latent dimensions; the
    reconstruction error is averaged over rows and action dimensions, rows of weight 0 included in the
    count (so the weight removes rows' errors without rescaling the others').

    Args:
        recon, action: (B, act_dim) the decoded and the dataset actions.
        mean, log_std: (B, latent_dim) the encoder's Gaussian.
        row_weight: (B,) weight of each row's reconstruction error (default 1); the KL term has none.
        kl_weight: the KL term's weight (0.5 in BCQ and A2PR).
    Returns:
        (loss, metrics with the reconstruction and KL terms)
    """
    error = (recon - action).pow(2)
    if row_weight is not None:
        error = error * row_weight.unsqueeze(-1)
    recon_loss = error.mean()
    kl = -0.5 * (1.0 + 2.0 * log_std - mean.pow(2) - (2.0 * log_std).exp()).mean()
    return recon_loss + kl_weight * kl, {"loss/vae_recon": recon_loss.detach(), "loss/vae_kl": kl.detach()}
