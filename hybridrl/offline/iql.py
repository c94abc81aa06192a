r"""Implicit Q-Learning (Kostrikov, Nair & Levine, ICLR 2022, arXiv 2110.06169).

IQL never queries the critic at actions outside the dataset. Three losses, all on dataset transitions:

    L_V  = E_D[ L_2^tau( min_i Qbar_i(s, a) - V(s) ) ],          L_2^tau(u) = |tau - 1(u < 0)| u^2
    L_Q  = sum_i E_D[ (Q_i(s, a) - (c r + gamma (1 - d) V(s')))^2 ]
    L_pi = -E_D[ min(exp(beta (min_i Qbar_i(s, a) - V(s))), w_max) log pi(a | s) ]

The expectile tau > 0.5 makes V an upper expectile of the target Q over the dataset's actions (an
in-sample max); the actor is advantage-weighted regression on those advantages (detached). The
target critics move by Polyak averaging every step; the actor's learning rate follows a cosine
decay to zero over the run's total steps. For locomotion, rewards are scaled by
c = 1000 / (max episode return - min episode return) of the dataset.

The actor is the paper's MuJoCo policy: a Gaussian with tanh-squashed mean and a learned
state-independent log std (clipped to [-5, 2]), trained on the log density of the dataset's actions;
``deterministic_actor=True`` gives CORL's alternative (weighted squared error of a tanh policy).

Deviations from the reference code (the official JAX IQL; CORL ``iql.py``):
- The three losses use the parameters as they were before the update and are applied in one step,
  as in CORL; the official code steps V first and gives the actor and the critics the new V.
- The twin critics are one ensemble evaluated in one batched forward pass; their loss is the sum of
  the members' mean squared errors (official code; CORL averages the two, half the gradient scale).
- States are normalized with the dataset's mean and std as CORL does (``normalize_states``); the
  official code feeds raw states.
- The cosine schedule spans the run's total steps (as CORL); the official code always spans 1e6.
- Reward scaling is applied in the loss from the build context's episode returns instead of
  rewriting the dataset; the returns come from the dataset's episodes as recorded (CORL cuts
  episodes at 1000 steps when counting).
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
from hybridrl.core.losses import critic_mse_loss, expectile_loss
from hybridrl.core.nets import DeterministicActor, EnsembleCritic, GaussianActor, ObsNormalizer, ValueNet, soft_update_
from hybridrl.core.optim import adam, apply_losses
from hybridrl.registry import MethodSpec, register


@dataclass(frozen=True, kw_only=True)
class IQLConfig:
    """IQL hyperparameters; defaults are the paper's D4RL locomotion settings."""

    expectile: float = 0.7
    """tau of the expectile value loss (paper, MuJoCo locomotion; 0.9 for AntMaze)."""
    temperature: float = 3.0
    """beta, the inverse temperature of the advantage weights (paper, MuJoCo; 10 for AntMaze)."""
    max_weight: float = 100.0
    """Clip on the advantage weights exp(beta A) (official code and CORL)."""
    actor_lr: float = 3e-4
    """Initial Adam step size of the actor (decays with the cosine schedule)."""
    critic_lr: float = 3e-4
    """Adam step size of the Q-functions."""
    value_lr: float = 3e-4
    """Adam step size of the state-value function."""
    batch_size: int = 256
    """Transitions per update."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 5e-3
    """Polyak rate of the target Q-functions, updated every step (paper; CORL's hopper medium files use 1e-3)."""
    hidden: tuple[int, ...] = (256, 256)
    """Hidden widths of the actor, the value net and each Q-function (2x256 in the paper)."""
    num_critics: int = 2
    """Q-functions in the ensemble; the value target and the advantages use their minimum."""
    deterministic_actor: bool = False
    """Deterministic tanh actor trained by weighted squared error, instead of the paper's Gaussian."""
    cosine_schedule: bool = True
    """Decay the actor's learning rate to zero over the run's total steps by a cosine (paper)."""
    normalize_reward: bool = True
    """Scale rewards by 1000 / (max - min episode return) (paper, locomotion; off for sparse rewards)."""
    normalize_states: bool = True
    """Normalize observations with the dataset's mean and std (CORL; the official code does not)."""

    def __post_init__(self) -> None:
        check_fields(self)
        if not 0.0 < self.expectile < 1.0:
            raise ValueError("expectile must be in (0, 1)")
        if self.temperature < 0 or self.max_weight <= 0:
            raise ValueError("temperature must be >= 0 and max_weight > 0")
        if self.num_critics < 1:
            raise ValueError("num_critics must be >= 1")


def iql_actor_loss(log_likelihood: torch.Tensor, advantage: torch.Tensor, temperature: float,
                   max_weight: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Advantage-weighted regression: -mean(min(exp(beta A), w_max) * log_likelihood).

    Args:
        log_likelihood: (B,) log pi(a|s) of the dataset actions (or minus the squared error of a
            deterministic actor).
        advantage: (B,) Q(s, a) - V(s); detached here, so only the actor learns from this loss.
        temperature: beta.
        max_weight: clip on the weights, which keeps one large advantage from dominating the batch.
    """
    weight = torch.exp(temperature * advantage.detach()).clamp(max=max_weight)
    return -(weight * log_likelihood).mean(), {"actor/weight": weight.mean()}


def reward_scale(return_min: float, return_max: float) -> float:
    """IQL's locomotion scale 1000 / (max - min episode return); 1 when the returns do not spread."""
    spread = return_max - return_min
    return 1000.0 / spread if spread > 0 else 1.0


def cosine_lr(base_lr: float, step: int, total_steps: int) -> float:
    """base_lr * (1 + cos(pi t / T)) / 2, held at 0 after T (optax's cosine_decay_schedule)."""
    progress = min(step, total_steps) / max(total_steps, 1)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


class IQL:
    """IQL agent: value net, twin Q with targets, advantage-weighted actor."""

    def __init__(self, config: IQLConfig, ctx: BuildContext) -> None:
        self.config = config
        self.device = ctx.device
        view = ctx.require_offline("iql")
        self.total_steps = ctx.total_steps
        self.normalizer = ObsNormalizer.of(view.obs_mean, view.obs_std, enabled=config.normalize_states)
        self.normalizer = self.normalizer.to(self.device)
        self.reward_scale = reward_scale(view.return_min, view.return_max) if config.normalize_reward else 1.0
        actor_cls = DeterministicActor if config.deterministic_actor else GaussianActor
        self.actor = actor_cls(ctx.obs_dim, ctx.act_dim, config.hidden).to(self.device)
        self.critic = EnsembleCritic(ctx.obs_dim, ctx.act_dim, config.hidden, config.num_critics).to(self.device)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.value = ValueNet(ctx.obs_dim, config.hidden).to(self.device)
        self.optimizers = {"actor": adam(self.actor.parameters(), lr=config.actor_lr),
                           "critic": adam(self.critic.parameters(), lr=config.critic_lr),
                           "value": adam(self.value.parameters(), lr=config.value_lr)}
        self.steps = 0

    def param_groups(self) -> dict[str, list[torch.Tensor]]:
        return {"actor": list(self.actor.parameters()), "critic": list(self.critic.parameters()),
                "value": list(self.value.parameters())}

    def _log_likelihood(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        if self.config.deterministic_actor:
            return -(self.actor(obs) - action).pow(2).sum(-1)
        return self.actor.log_prob(obs, action)

    def losses(self, batch: Batch) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        cfg = self.config
        obs, next_obs = self.normalizer(batch.obs), self.normalizer(batch.next_obs)
        with torch.no_grad():
            target_q = self.target_critic(obs, batch.action).min(dim=0).values
            next_v = self.value(next_obs)
            td_target = batch.reward * self.reward_scale + cfg.gamma * (1.0 - batch.terminated) * next_v
        v = self.value(obs)
        advantage = target_q - v
        value_loss = expectile_loss(advantage, cfg.expectile)
        q = self.critic(obs, batch.action)
        critic_loss = critic_mse_loss(q, td_target)
        actor_loss, metrics = iql_actor_loss(self._log_likelihood(obs, batch.action), advantage,
                                             cfg.temperature, cfg.max_weight)
        metrics.update({
            "loss/value": value_loss.detach(), "loss/critic": critic_loss.detach(),
            "loss/actor": actor_loss.detach(), "v/mean": v.detach().mean(), "q/data": q.detach().mean(),
            "advantage/mean": advantage.detach().mean(),
        })
        return {"value": value_loss, "critic": critic_loss, "actor": actor_loss}, metrics

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        if self.config.cosine_schedule:
            # Set from the step count, not stepped by a scheduler object: a resumed run gets the exact rate.
            for group in self.optimizers["actor"].param_groups:
                group["lr"] = cosine_lr(self.config.actor_lr, self.steps, self.total_steps)
        terms, metrics = self.losses(batch)
        apply_losses(terms, self.optimizers)
        soft_update_(self.target_critic, self.critic, self.config.tau)
        self.steps += 1
        return metrics

    @torch.no_grad()
    def act(self, obs: torch.Tensor, *, deterministic: bool = True) -> torch.Tensor:
        return self.actor.act(self.normalizer(obs), deterministic=deterministic)

    @torch.no_grad()
    def q_values(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """min_i Q_i(s, a) on raw observations, in the dataset's reward units (the critic's scale undone)."""
        return self.critic(self.normalizer(obs), action).min(dim=0).values / self.reward_scale

    def _parts(self) -> dict[str, torch.nn.Module]:
        """What the method saves and loads, besides its reward scale, optimizers and step count."""
        return {"actor": self.actor, "critic": self.critic, "target_critic": self.target_critic,
                "value": self.value, "obs_normalizer": self.normalizer}

    def state_dict(self) -> dict:
        return {**training_state(self._parts(), self.optimizers, self.steps), "reward_scale": self.reward_scale}

    def load_state_dict(self, state: dict) -> None:
        self.steps = load_training_state(state, self._parts(), self.optimizers)
        self.reward_scale = state["reward_scale"]


register(MethodSpec(name="iql", family="offline", config=IQLConfig, build=IQL,
                    summary="Implicit Q-Learning: expectile value, advantage-weighted actor (Kostrikov et al. 2021)",
                    tiny={"hidden": (16, 16), "batch_size": 32}))
