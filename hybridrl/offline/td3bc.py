r"""TD3+BC: TD3 with a behaviour-cloning term in the actor loss (Fujimoto & Gu, NeurIPS 2021, arXiv 2106.06860).

On states normalized with the dataset's mean and standard deviation, the critics follow TD3

    y = r + gamma (1 - d) min_i Qbar_i(s', clip(pibar(s') + clip(sigma eps, -c, c), -1, 1)),
    L_Q = sum_i E_D[(Q_i(s, a) - y)^2],

and every ``policy_delay`` steps the actor minimises

    L_pi = -lambda E_D[Q_1(s, pi(s))] + E_D[(pi(s) - a)^2],   lambda = alpha / E_D[|Q_1(s, pi(s))|]

(lambda detached), after which the target actor and critics move by Polyak averaging. The
normalizer's statistics are part of the state, so evaluation and a resumed run act on the same inputs.

Deviations from the reference code (CORL ``td3_bc.py``, the authors' ``TD3_BC``):
- The critics are one ensemble evaluated in a single batched forward pass; Q_1 for the actor comes
  from the same pass (both members are computed, the first is used). Values are identical.
- The actor loss reads the critic through detached weights instead of writing gradients into the
  critics that are never applied; the critic step and the actor step use the parameters as they
  were before the update (the reference steps the critics first, then computes the actor loss with
  the freshly stepped critics).
- The state standard deviation is floored at 1e-3 (the build context's statistics) instead of
  having 1e-3 added; the two differ only for features whose spread is near 1e-3.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from hybridrl.core.buffers import Batch
from hybridrl.core.checkpoint import load_training_state, training_state
from hybridrl.core.config import check_fields
from hybridrl.core.context import BuildContext
from hybridrl.core.losses import anchored_actor_loss, target_policy_smoothing, td3_critic_loss
from hybridrl.core.nets import DeterministicActor, EnsembleCritic, ObsNormalizer, soft_update_
from hybridrl.core.optim import adam, apply_losses
from hybridrl.registry import MethodSpec, register


@dataclass(frozen=True, kw_only=True)
class TD3BCConfig:
    """TD3+BC hyperparameters; defaults are the paper's D4RL MuJoCo settings (the same on every task)."""

    alpha: float = 2.5
    """Weight of the Q term against behaviour cloning: lambda = alpha / mean|Q| (paper, all MuJoCo tasks)."""
    actor_lr: float = 3e-4
    """Adam step size of the actor (TD3, paper, CORL)."""
    critic_lr: float = 3e-4
    """Adam step size of the critics (TD3, paper, CORL)."""
    batch_size: int = 256
    """Transitions per update."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 5e-3
    """Polyak rate of the target actor and critics, applied on the actor's steps."""
    hidden: tuple[int, ...] = (256, 256)
    """Hidden widths of the actor and of each critic (2x256 in the paper and CORL)."""
    num_critics: int = 2
    """Q-functions in the ensemble; targets take their minimum (TD3's clipped double Q)."""
    policy_delay: int = 2
    """The actor and the targets update once every this many critic updates."""
    policy_noise: float = 0.2
    """Std of the target policy smoothing noise, in units of the [-1, 1] action range."""
    noise_clip: float = 0.5
    """Bound on the target policy smoothing noise."""
    normalize_states: bool = True
    """Normalize observations with the dataset's mean and std (paper: on for all D4RL tasks)."""

    def __post_init__(self) -> None:
        check_fields(self)
        if self.policy_delay < 1:
            raise ValueError("policy_delay must be >= 1")
        if self.num_critics < 1:
            raise ValueError("num_critics must be >= 1")
        if self.alpha < 0 or self.policy_noise < 0 or self.noise_clip < 0:
            raise ValueError("alpha, policy_noise and noise_clip must be >= 0")


def td3bc_actor_loss(q: torch.Tensor, pi_action: torch.Tensor, data_action: torch.Tensor, alpha: float,
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """-lambda mean(Q) + mean((pi(s) - a)^2) with lambda = alpha / mean|Q| held constant.

    Args:
        q: (B,) Q_1(s, pi(s)), differentiable in pi(s).
        pi_action: (B, act_dim) the actor's actions; data_action: the dataset's.
        alpha: the Q weight before normalization.
    Returns:
        (loss, metrics with lambda and the BC error)
    """
    loss, lmbda, bc = anchored_actor_loss(q, pi_action, data_action, alpha)
    return loss, {"actor/lambda": lmbda, "loss/bc": bc}


class TD3BC:
    """TD3+BC agent: deterministic tanh actor, critic ensemble, targets for both."""

    def __init__(self, config: TD3BCConfig, ctx: BuildContext) -> None:
        self.config = config
        self.device = ctx.device
        view = ctx.require_offline("td3bc")
        self.normalizer = ObsNormalizer.of(view.obs_mean, view.obs_std, enabled=config.normalize_states)
        self.normalizer = self.normalizer.to(self.device)
        self.actor = DeterministicActor(ctx.obs_dim, ctx.act_dim, config.hidden).to(self.device)
        self.critic = EnsembleCritic(ctx.obs_dim, ctx.act_dim, config.hidden, config.num_critics).to(self.device)
        self.target_actor = copy.deepcopy(self.actor).requires_grad_(False)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.optimizers = {"actor": adam(self.actor.parameters(), lr=config.actor_lr),
                           "critic": adam(self.critic.parameters(), lr=config.critic_lr)}
        self.steps = 0

    def param_groups(self) -> dict[str, list[torch.Tensor]]:
        return {"actor": list(self.actor.parameters()), "critic": list(self.critic.parameters())}

    def _actor_due(self) -> bool:
        # The reference counts updates from 1 and trains the actor when the count divides by the delay.
        return (self.steps + 1) % self.config.policy_delay == 0

    def _losses(self, batch: Batch, *, with_actor: bool,
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        cfg = self.config
        obs, next_obs = self.normalizer(batch.obs), self.normalizer(batch.next_obs)
        with torch.no_grad():
            next_action = self.target_actor(next_obs)
            next_action = target_policy_smoothing(next_action, torch.randn_like(next_action),
                                                  cfg.policy_noise, cfg.noise_clip)
            next_q = self.target_critic(next_obs, next_action)
        q = self.critic(obs, batch.action)
        critic_loss, target = td3_critic_loss(q, batch.reward, batch.terminated, next_q, cfg.gamma)
        terms = {"critic": critic_loss}
        metrics = {"loss/critic": critic_loss.detach(), "q/data": q.detach().mean(), "q/target": target.mean()}
        if with_actor:
            pi_action = self.actor(obs)
            q_pi = self.critic(obs, pi_action, detach_params=True)[0]
            actor_loss, actor_metrics = td3bc_actor_loss(q_pi, pi_action, batch.action, cfg.alpha)
            terms["actor"] = actor_loss
            metrics.update(actor_metrics)
            metrics["loss/actor"] = actor_loss.detach()
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
        """The actor's action on normalized observations (TD3+BC evaluates without exploration noise)."""
        return self.actor(self.normalizer(obs))

    @torch.no_grad()
    def q_values(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """min_i Q_i(s, a) on raw observations, e.g. to compare with Monte-Carlo returns."""
        return self.critic(self.normalizer(obs), action).min(dim=0).values

    def _parts(self) -> dict[str, torch.nn.Module | torch.Tensor]:
        """What the method saves and loads, besides its optimizers and step count."""
        return {"actor": self.actor, "critic": self.critic, "target_actor": self.target_actor,
                "target_critic": self.target_critic, "obs_normalizer": self.normalizer}

    def state_dict(self) -> dict:
        return training_state(self._parts(), self.optimizers, self.steps)

    def load_state_dict(self, state: dict) -> None:
        self.steps = load_training_state(state, self._parts(), self.optimizers)


register(MethodSpec(name="td3bc", family="offline", config=TD3BCConfig, build=TD3BC,
                    summary="TD3+BC: TD3 with a behaviour-cloning actor term (Fujimoto & Gu 2021)",
                    tiny={"hidden": (16, 16), "batch_size": 32}))
