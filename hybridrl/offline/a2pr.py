r"""A2PR: Adaptive Advantage-guided Policy Regularization (Liu et al., ICML 2024, arXiv 2405.19909).

A TD3+BC-style actor-critic whose behaviour-cloning target is chosen by advantage. On states
normalized with the dataset's mean and std, with a' = clip(pibar(s') + clip(sigma eps, -c, c), -1, 1):

    critics:  y = r + gamma (1 - d) min_i Qbar_i(s', a'),        L_Q = sum_i E_D[(Q_i(s, a) - y)^2]
    value:    y_V = min(r + gamma (1 - d) min_i Q_i(s', a'), y),  L_V = E_D[(V(s) - y_V)^2]
    VAE:      L_VAE = E_D[w 1[A(s, a) > 0] (a^ - a)^2] + 0.5 KL(q(z|s,a) || N(0, I)),  a^ = Dec(s, z ~ q(z|s,a))

with A(s, a) = Q_1(s, a) - V(s): the conditional VAE reconstructs only the dataset actions whose
advantage is positive (the paper's "elevating positive behaviour learning"). Every ``policy_delay``
steps the actor minimises

    L_pi = -lambda E_D[Q_1(s, pi(s))] + E_D[m (pi(s) - a~)^2],     lambda = alpha / E_D[|Q_1(s, pi(s))|]

where a^_pi = VAE(s, pi(s)) is the VAE's encode-decode of the policy's action, the target
a~ = a^_pi if A(s, a^_pi) >= A(s, a) else a (the one with the larger advantage), and the weight
m = mask (1[A(s, a^_pi) >= 0] + 1[A(s, a) > 0]) lets the regularization vanish where neither action
beats V(s). lambda, the advantages and m are constants; a~ is not: where it is the VAE's output,
the gradient of the squared error also flows through the VAE (weights held fixed) into pi(s), as in
the reference code. Then the target actor and critics move by Polyak averaging.

Deviations from the reference code (ltlhuuu/A2PR ``A2PR.py``):
- Every loss is built from the parameters as they are at the start of the update and all are
  applied in one step (as this package's TD3+BC and IQL do). The reference steps them in turn:
  the value target's current-critic term, the VAE's advantage filter and the actor's advantages use
  the critic just stepped on this batch, and the actor uses the VAE just stepped; here they use the
  critic and the VAE before this update's step (one Adam step apart). V(s) is the pre-step value in
  both.
- The twin critics are one ensemble evaluated in a batched forward pass; Q_1 comes from the same
  pass. The VAE's mean and log-std heads are one linear layer of 2 x latent_dim outputs, split.
- Losses that read a network they do not train use its weights detached, instead of writing
  gradients into it that a later ``zero_grad`` discards (same update, no wasted backward).
- KL uses 2 log sigma where the reference takes log(sigma^2) of sigma = exp(log sigma) (equal up to
  rounding).
- The state std is floored at 1e-3 (the build context's statistics) instead of having 1e-3 added.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from hybridrl.core.buffers import Batch
from hybridrl.core.checkpoint import load_training_state, training_state
from hybridrl.core.config import check_fields
from hybridrl.core.context import BuildContext
from hybridrl.core.losses import clipped_double_q_target, cvae_loss, target_policy_smoothing, td3_critic_loss
from hybridrl.core.nets import ConditionalVAE, DeterministicActor, EnsembleCritic, ObsNormalizer, ValueNet, soft_update_
from hybridrl.core.optim import adam, apply_losses
from hybridrl.registry import MethodSpec, register


@dataclass(frozen=True, kw_only=True)
class A2PRConfig:
    """A2PR hyperparameters; defaults are the reference code's (its per-task settings are the presets)."""

    alpha: float = 2.5
    """Weight of the Q term against the regularization: lambda = alpha / mean|Q_1| (40 for halfcheetah-medium)."""
    mask: float = 0.5
    """Weight of each advantage indicator in the regularization weight m in {0, mask, 2 mask} (code default)."""
    vae_weight: float = 1.0
    """Weight w of the VAE's reconstruction error on advantage-positive rows (1.5 for walker2d-medium)."""
    kl_weight: float = 0.5
    """Weight of the VAE's KL term (fixed at 0.5 in the reference, as in BCQ)."""
    actor_lr: float = 3e-4
    """Adam step size of the actor."""
    critic_lr: float = 3e-4
    """Adam step size of the critics."""
    value_lr: float = 3e-4
    """Adam step size of the state-value net."""
    vae_lr: float = 1e-3
    """Adam step size of the VAE (the reference uses Adam's default)."""
    batch_size: int = 256
    """Transitions per update."""
    gamma: float = 0.99
    """Discount factor (0.995 for hopper-medium)."""
    tau: float = 5e-3
    """Polyak rate of the target actor and critics, applied on the actor's steps."""
    actor_hidden: tuple[int, ...] = (256, 256, 256)
    """Hidden widths of the actor (3x256, deeper than TD3+BC's)."""
    critic_hidden: tuple[int, ...] = (256, 256, 256, 256)
    """Hidden widths of each critic (4x256)."""
    value_hidden: tuple[int, ...] = (256, 256, 256, 256)
    """Hidden widths of the state-value net (4x256)."""
    vae_hidden: tuple[int, ...] = (750, 750)
    """Hidden widths of the VAE's encoder and of its decoder (2x750, as BCQ)."""
    latent_dim: int | None = None
    """Size of the VAE's latent; None: twice the action size (reference)."""
    latent_clip: float = 0.5
    """Latents drawn from the prior are clipped to [-latent_clip, latent_clip] when the VAE samples."""
    num_critics: int = 2
    """Q-functions in the ensemble; targets take their minimum, the advantages use the first."""
    policy_delay: int = 2
    """The actor and the targets update once every this many critic updates."""
    policy_noise: float = 0.2
    """Std of the target policy smoothing noise, in units of the [-1, 1] action range."""
    noise_clip: float = 0.5
    """Bound on the target policy smoothing noise."""
    normalize_states: bool = True
    """Normalize observations with the dataset's mean and std (reference: on)."""

    def __post_init__(self) -> None:
        check_fields(self)
        if self.policy_delay < 1:
            raise ValueError("policy_delay must be >= 1")
        if self.num_critics < 1:
            raise ValueError("num_critics must be >= 1")
        if self.latent_dim is not None and self.latent_dim < 1:
            raise ValueError("latent_dim must be >= 1 (or None for twice the action size)")
        if min(self.alpha, self.mask, self.vae_weight, self.kl_weight, self.policy_noise, self.noise_clip) < 0:
            raise ValueError("alpha, mask, vae_weight, kl_weight, policy_noise and noise_clip must be >= 0")


def a2pr_value_loss(v: torch.Tensor, reward: torch.Tensor, terminated: torch.Tensor, next_q: torch.Tensor,
                    td_target: torch.Tensor, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """MSE of V(s) against min(r + gamma (1 - d) min_i Q_i(s', a'), y).

    Args:
        v: (B,) V(s).
        reward, terminated: (B,).
        next_q: (N, B) the current critics at the smoothed target action a' (no gradient).
        td_target: (B,) the critics' target y from the target critics at the same a'.
    Returns:
        (loss, the value targets (B,) without gradient)
    """
    # The smaller of the two bootstraps keeps V from running ahead of the slower target critics.
    target = torch.minimum(clipped_double_q_target(reward, terminated, next_q, gamma), td_target.detach())
    return F.mse_loss(v, target), target


def a2pr_regularization_target(recon_pi: torch.Tensor, data_action: torch.Tensor, q_recon: torch.Tensor,
                               q_data: torch.Tensor, v: torch.Tensor, mask: float,
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The advantage-selected action a~ and its weight m.

    a~ = a^_pi where A(s, a^_pi) >= A(s, a), else the dataset action a (ties go to the VAE);
    m = mask (1[A(s, a^_pi) >= 0] + 1[A(s, a) > 0]), with A(s, x) = Q_1(s, x) - V(s). The
    comparisons are the reference's (>= for the VAE's action, > for the dataset's).

    Args:
        recon_pi: (B, act_dim) the VAE's reconstruction of pi(s); a~ keeps its gradient.
        data_action: (B, act_dim).
        q_recon, q_data: (B,) Q_1 at a^_pi and at a; v: (B,) V(s). Used as constants.
        mask: weight of each indicator.
    Returns:
        (a~ (B, act_dim), m (B,))
    """
    adv_recon = (q_recon - v).detach()
    adv_data = (q_data - v).detach()
    target = torch.where((adv_recon >= adv_data).unsqueeze(-1), recon_pi, data_action)
    weight = mask * ((adv_recon >= 0).to(v.dtype) + (adv_data > 0).to(v.dtype))
    return target, weight


def a2pr_actor_loss(q_pi: torch.Tensor, pi_action: torch.Tensor, reg_target: torch.Tensor,
                    reg_weight: torch.Tensor, alpha: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """-lambda mean(Q_1(s, pi(s))) + mean(m (pi(s) - a~)^2), lambda = alpha / mean|Q_1(s, pi(s))| held constant.

    Args:
        q_pi: (B,) Q_1(s, pi(s)), differentiable in pi(s).
        pi_action, reg_target: (B, act_dim) the actor's actions and the selected targets a~.
        reg_weight: (B,) m, a constant.
        alpha: the Q weight before normalization.
    Returns:
        (loss, metrics with lambda and the regularization term)
    """
    # Normalizing by the Q scale makes alpha independent of the reward scale; the clamp only guards
    # the 0/0 of an all-zero critic.
    lmbda = alpha / q_pi.abs().mean().detach().clamp_min(1e-8)
    reg = ((pi_action - reg_target).pow(2) * reg_weight.detach().unsqueeze(-1)).mean()
    return -lmbda * q_pi.mean() + reg, {"actor/lambda": lmbda, "loss/reg": reg.detach()}


class A2PR:
    """A2PR agent: deterministic tanh actor, critic ensemble, state-value net, advantage-filtered VAE."""

    def __init__(self, config: A2PRConfig, ctx: BuildContext) -> None:
        self.config = config
        self.device = ctx.device
        view = ctx.require_offline("a2pr")
        self.normalizer = ObsNormalizer.of(view.obs_mean, view.obs_std, enabled=config.normalize_states)
        self.normalizer = self.normalizer.to(self.device)
        obs_dim, act_dim = ctx.obs_dim, ctx.act_dim
        latent_dim = config.latent_dim if config.latent_dim is not None else 2 * act_dim
        self.actor = DeterministicActor(obs_dim, act_dim, config.actor_hidden).to(self.device)
        self.critic = EnsembleCritic(obs_dim, act_dim, config.critic_hidden, config.num_critics).to(self.device)
        self.value = ValueNet(obs_dim, config.value_hidden).to(self.device)
        self.vae = ConditionalVAE(obs_dim, act_dim, latent_dim, config.vae_hidden, config.latent_clip).to(self.device)
        self.target_actor = copy.deepcopy(self.actor).requires_grad_(False)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.optimizers = {"actor": adam(self.actor.parameters(), lr=config.actor_lr),
                           "critic": adam(self.critic.parameters(), lr=config.critic_lr),
                           "value": adam(self.value.parameters(), lr=config.value_lr),
                           "vae": adam(self.vae.parameters(), lr=config.vae_lr)}
        self.steps = 0

    def param_groups(self) -> dict[str, list[torch.Tensor]]:
        return {"actor": list(self.actor.parameters()), "critic": list(self.critic.parameters()),
                "value": list(self.value.parameters()), "vae": list(self.vae.parameters())}

    def _actor_due(self) -> bool:
        # The reference counts updates from 1 and trains the actor when the count divides by the delay.
        return (self.steps + 1) % self.config.policy_delay == 0

    def _losses(self, batch: Batch, *, with_actor: bool,
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        cfg = self.config
        obs, next_obs, action = self.normalizer(batch.obs), self.normalizer(batch.next_obs), batch.action
        with torch.no_grad():
            next_action = self.target_actor(next_obs)
            next_action = target_policy_smoothing(next_action, torch.randn_like(next_action),
                                                  cfg.policy_noise, cfg.noise_clip)
            target_next_q = self.target_critic(next_obs, next_action)
            current_next_q = self.critic(next_obs, next_action)
        q = self.critic(obs, action)
        critic_loss, td_target = td3_critic_loss(q, batch.reward, batch.terminated, target_next_q, cfg.gamma)
        v = self.value(obs)
        value_loss, value_target = a2pr_value_loss(v, batch.reward, batch.terminated, current_next_q,
                                                   td_target, cfg.gamma)
        q_data, v_const = q[0].detach(), v.detach()
        # Only advantage-positive dataset actions are reconstructed; the KL term covers every row.
        positive = (q_data > v_const).to(v.dtype)
        recon, mean, log_std = self.vae(obs, action)
        vae_loss, metrics = cvae_loss(recon, action, mean, log_std, row_weight=cfg.vae_weight * positive,
                                      kl_weight=cfg.kl_weight)
        terms = {"critic": critic_loss, "value": value_loss, "vae": vae_loss}
        metrics.update({
            "loss/critic": critic_loss.detach(), "loss/value": value_loss.detach(), "loss/vae": vae_loss.detach(),
            "q/data": q.detach().mean(), "q/target": td_target.mean(), "v/mean": v_const.mean(),
            "v/target": value_target.mean(), "vae/positive_fraction": positive.mean(),
        })
        if with_actor:
            pi_action = self.actor(obs)
            q_pi = self.critic(obs, pi_action, detach_params=True)[0]
            # The VAE's weights are constants here, but its output keeps its gradient in pi(s).
            recon_pi = self.vae(obs, pi_action, detach_params=True)[0]
            with torch.no_grad():
                q_recon = self.critic(obs, recon_pi)[0]
            reg_target, reg_weight = a2pr_regularization_target(recon_pi, action, q_recon, q_data, v_const,
                                                                cfg.mask)
            actor_loss, actor_metrics = a2pr_actor_loss(q_pi, pi_action, reg_target, reg_weight, cfg.alpha)
            terms["actor"] = actor_loss
            metrics.update(actor_metrics)
            metrics.update({"loss/actor": actor_loss.detach(), "actor/reg_weight": reg_weight.mean(),
                            "actor/vae_target_fraction": (q_recon >= q_data).to(v.dtype).mean()})
        return terms, metrics

    def losses(self, batch: Batch) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Every term, the actor's included whether or not this step is one of its delayed steps."""
        return self._losses(batch, with_actor=True)

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        due = self._actor_due()
        # Off the actor's steps its forward pass is skipped, not computed and dropped.
        terms, metrics = self._losses(batch, with_actor=due)
        apply_losses(terms, self.optimizers)
        if due:
            soft_update_(self.target_critic, self.critic, self.config.tau)
            soft_update_(self.target_actor, self.actor, self.config.tau)
        self.steps += 1
        return metrics

    @torch.no_grad()
    def act(self, obs: torch.Tensor, *, deterministic: bool = True) -> torch.Tensor:
        """The actor's action on normalized observations (evaluated without exploration noise)."""
        return self.actor(self.normalizer(obs))

    @torch.no_grad()
    def q_values(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """min_i Q_i(s, a) on raw observations, in the dataset's reward units (rewards are not rescaled)."""
        return self.critic(self.normalizer(obs), action).min(dim=0).values

    def _parts(self) -> dict[str, torch.nn.Module | torch.Tensor]:
        """What the method saves and loads, besides its optimizers and step count."""
        return {"actor": self.actor, "critic": self.critic, "value": self.value, "vae": self.vae,
                "target_actor": self.target_actor, "target_critic": self.target_critic,
                "obs_normalizer": self.normalizer}

    def state_dict(self) -> dict:
        return training_state(self._parts(), self.optimizers, self.steps)

    def load_state_dict(self, state: dict) -> None:
        self.steps = load_training_state(state, self._parts(), self.optimizers)


register(MethodSpec(name="a2pr", family="offline", config=A2PRConfig, build=A2PR,
                    summary="A2PR: TD3+BC regularized toward the higher-advantage of the data and an "
                            "advantage-filtered VAE's action (Liu et al. 2024)",
                    tiny={"actor_hidden": (16, 16), "critic_hidden": (16, 16), "value_hidden": (16, 16),
                          "vae_hidden": (16, 16), "batch_size": 32}))
