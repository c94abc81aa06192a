r"""Soft Actor-Critic (Haarnoja et al., 2018, arXiv 1801.01290 and 1812.05905), automatic temperature.

Critics:  E[(Q_i(s,a) - y)^2],  y = r + gamma (1 - d) (min_i Qbar_i(s', a') - alpha log pi(a'|s')),  a' ~ pi(.|s')
Actor:    E_s[alpha log pi(a~|s) - min_i Q_i(s, a~)]
Alpha:    -E[log alpha (log pi(a~|s) + H_target)],  H_target = -|A|

Defaults are the paper's (v2, Table 1): Adam 3e-4 for all three, 2x256 networks, batch 256,
gamma 0.99, tau 0.005, one update per environment step; the run's first ``learning_starts`` steps
act uniformly at random (CleanRL's 5000; a run setting, see ``RunConfig``).

Deviations from the reference code:
- All three losses are computed from the parameters before the step and applied in one backward
  pass (the actor's Q uses detached critic weights), as CQL does here; the reference steps the critic
  first and evaluates the actor loss with the updated critic.
- The two critics are one vectorized ensemble (one batched matmul per layer).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from hybridrl.core.buffers import Batch
from hybridrl.core.checkpoint import load_training_state, training_state
from hybridrl.core.config import check_fields
from hybridrl.core.context import BuildContext
from hybridrl.core.losses import clipped_double_q_target, critic_mse_loss, sac_actor_loss, sac_temperature_loss
from hybridrl.core.nets import EnsembleCritic, TanhGaussianActor, soft_update_
from hybridrl.core.optim import adam, apply_losses
from hybridrl.registry import MethodSpec, register


@dataclass(frozen=True, kw_only=True)
class SACConfig:
    """SAC hyperparameters (Haarnoja et al. 2018, v2 Table 1)."""

    actor_lr: float = 3e-4
    """Adam step size of the policy."""
    critic_lr: float = 3e-4
    """Adam step size of the Q-functions."""
    alpha_lr: float = 3e-4
    """Adam step size of the temperature."""
    batch_size: int = 256
    """Transitions per update."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 5e-3
    """Polyak rate of the target critics, updated every step."""
    hidden: tuple[int, ...] = (256, 256)
    """Hidden widths of actor and critics."""
    num_critics: int = 2
    """Q-functions in the ensemble; targets take their minimum (clipped double Q)."""
    target_entropy: float | None = None
    """Entropy the temperature steers to (None: -|A|)."""
    initial_alpha: float = 1.0
    """Temperature at the start."""

    def __post_init__(self) -> None:
        check_fields(self)


class SAC:
    def __init__(self, config: SACConfig, ctx: BuildContext) -> None:
        self.config = config
        self.device = ctx.device
        self.actor = TanhGaussianActor(ctx.obs_dim, ctx.act_dim, config.hidden).to(self.device)
        self.critic = EnsembleCritic(ctx.obs_dim, ctx.act_dim, config.hidden, config.num_critics).to(self.device)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.tensor(math.log(config.initial_alpha), device=self.device, requires_grad=True)
        self.target_entropy = -float(ctx.act_dim) if config.target_entropy is None else config.target_entropy
        self.optimizers = {"actor": adam(self.actor.parameters(), lr=config.actor_lr),
                           "critic": adam(self.critic.parameters(), lr=config.critic_lr),
                           "alpha": adam([self.log_alpha], lr=config.alpha_lr)}
        self.steps = 0

    def param_groups(self) -> dict[str, list[torch.Tensor]]:
        return {"actor": list(self.actor.parameters()), "critic": list(self.critic.parameters()),
                "alpha": [self.log_alpha]}

    def losses(self, batch: Batch) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        cfg = self.config
        alpha = self.log_alpha.exp().detach()
        with torch.no_grad():
            next_action, next_logp = self.actor(batch.next_obs)
            next_q = self.target_critic(batch.next_obs, next_action) - alpha * next_logp
            td_target = clipped_double_q_target(batch.reward, batch.terminated, next_q, cfg.gamma)
        q = self.critic(batch.obs, batch.action)
        critic_loss = critic_mse_loss(q, td_target)
        new_action, logp = self.actor(batch.obs)
        actor_loss = sac_actor_loss(logp, self.critic(batch.obs, new_action, detach_params=True), alpha)
        alpha_loss = sac_temperature_loss(self.log_alpha, logp, self.target_entropy)
        terms = {"critic": critic_loss, "actor": actor_loss, "alpha": alpha_loss}
        metrics = {"loss/critic": critic_loss.detach(), "loss/actor": actor_loss.detach(),
                   "loss/alpha": alpha_loss.detach(), "alpha": alpha, "entropy": -logp.detach().mean(),
                   "q/data": q.detach().mean()}
        return terms, metrics

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        terms, metrics = self.losses(batch)
        apply_losses(terms, self.optimizers)
        soft_update_(self.target_critic, self.critic, self.config.tau)
        self.steps += 1
        return metrics

    @torch.no_grad()
    def act(self, obs: torch.Tensor, *, deterministic: bool = True) -> torch.Tensor:
        return self.actor.act(obs, deterministic=deterministic)

    def _parts(self) -> dict[str, torch.nn.Module | torch.Tensor]:
        """What the method saves and loads, besides its optimizers and step count."""
        return {"actor": self.actor, "critic": self.critic, "target_critic": self.target_critic,
                "log_alpha": self.log_alpha}

    def state_dict(self) -> dict:
        return training_state(self._parts(), self.optimizers, self.steps)

    def load_state_dict(self, state: dict) -> None:
        self.steps = load_training_state(state, self._parts(), self.optimizers)


register(MethodSpec(name="sac", family="online", config=SACConfig, build=SAC,
                    summary="Soft Actor-Critic with automatic temperature (Haarnoja et al. 2018)",
                    tiny={"hidden": (16, 16), "batch_size": 32}))
