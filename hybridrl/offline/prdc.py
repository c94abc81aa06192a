r"""PRDC: Policy Regularization with Dataset Constraint (Ran et al., ICML 2023, arXiv 2306.06569).

TD3+BC with its behaviour-cloning term replaced by a dataset constraint. On states normalized with
the dataset's mean and standard deviation, the critics follow TD3

    y = r + gamma (1 - d) min_i Qbar_i(s', clip(pibar(s') + clip(sigma eps, -c, c), -1, 1)),
    L_Q = sum_i E_D[(Q_i(s, a) - y)^2],

and every ``policy_delay`` steps the actor minimises

    L_pi = -lambda E_D[Q_1(s, pi(s))] + E_D[(pi(s) - a^(s, pi(s)))^2],   lambda = alpha / E_D[|Q_1(s, pi(s))|]

where (s^, a^) is the dataset point nearest to the query (beta s, pi(s)) in the Euclidean metric of
(beta s_j, a_j), i.e. the minimiser of beta^2 |s - s_j|^2 + |pi(s) - a_j|^2 over the dataset
(the paper's d^beta_D; states normalized first, as the tree of the reference code is built on them). Only
the action of the neighbour is penalised; the search is not differentiated (the key is detached).
A large beta picks the nearest state and so approaches TD3+BC; a small one, the nearest action
anywhere in the dataset. Lambda is detached; the target actor and critics move by Polyak averaging
on the actor's steps.

The search is exact (``core.neighbours``): a KD-tree built once for a dataset on the CPU, a chunked
scan on the accelerator otherwise. The index is derived from the dataset and the normalizer's
statistics, so it is never saved: ``load_state_dict`` rebuilds it when the loaded statistics differ.

Deviations from the reference code (LAMDA-RL/PRDC ``prdc.py``, ``main.py``):
- The same as TD3+BC's here (``hybridrl.offline.td3bc``): one critic ensemble in a batched pass;
  the actor reads the critic through detached weights and both steps use the parameters from
  before the update; the state std is floored at 1e-3 instead of having 1e-3 added.
- The neighbour search runs where the data lives: the reference queries a host KD-tree (float64)
  each actor step with keys copied off the GPU; on an accelerator this one scans on the device.
  The neighbours are the same (ties aside, see ``core.neighbours``).
- Only the nearest neighbour (the reference's ``k=1``, used by every published setting) is
  supported; reward scale and shift (the reference's AntMaze option) are not.
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
from hybridrl.core.neighbours import NearestNeighbours
from hybridrl.core.nets import DeterministicActor, EnsembleCritic, ObsNormalizer, soft_update_
from hybridrl.core.optim import adam, apply_losses
from hybridrl.registry import MethodSpec, register


@dataclass(frozen=True, kw_only=True)
class PRDCConfig:
    """PRDC hyperparameters; defaults are the reference code's hopper/walker2d D4RL settings."""

    alpha: float = 2.5
    """Weight of the Q term against the dataset constraint: lambda = alpha / mean|Q| (README: 2.5 on
    hopper and walker2d, 40 on halfcheetah)."""
    beta: float = 2.0
    """Scale of the normalized state against the action in the neighbour search (README: 2 on MuJoCo)."""
    actor_lr: float = 3e-4
    """Adam step size of the actor."""
    critic_lr: float = 3e-4
    """Adam step size of the critics."""
    batch_size: int = 256
    """Transitions per update."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 5e-3
    """Polyak rate of the target actor and critics, applied on the actor's steps."""
    hidden: tuple[int, ...] = (256, 256)
    """Hidden widths of the actor and of each critic (2x256 in the reference)."""
    num_critics: int = 2
    """Q-functions in the ensemble; targets take their minimum (TD3's clipped double Q)."""
    policy_delay: int = 2
    """The actor and the targets update once every this many critic updates."""
    policy_noise: float = 0.2
    """Std of the target policy smoothing noise, in units of the [-1, 1] action range."""
    noise_clip: float = 0.5
    """Bound on the target policy smoothing noise."""
    normalize_states: bool = True
    """Normalize observations with the dataset's mean and std, for the networks and the search alike."""

    def __post_init__(self) -> None:
        check_fields(self)
        if self.policy_delay < 1:
            raise ValueError("policy_delay must be >= 1")
        if self.num_critics < 1:
            raise ValueError("num_critics must be >= 1")
        if self.alpha < 0 or self.policy_noise < 0 or self.noise_clip < 0:
            raise ValueError("alpha, policy_noise and noise_clip must be >= 0")
        if not self.beta > 0:
            raise ValueError("beta must be > 0")


def prdc_search_keys(obs: torch.Tensor, action: torch.Tensor, beta: float) -> torch.Tensor:
    """(beta s, a): the space the neighbour search measures in; obs (B, obs_dim) already normalized."""
    return torch.cat([beta * obs, action], dim=-1)


def prdc_actor_loss(q: torch.Tensor, pi_action: torch.Tensor, neighbour_action: torch.Tensor, alpha: float,
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """-lambda mean(Q) + mean((pi(s) - a^)^2) with lambda = alpha / mean|Q| held constant.

    Args:
        q: (B,) Q_1(s, pi(s)), differentiable in pi(s).
        pi_action: (B, act_dim) the actor's actions.
        neighbour_action: (B, act_dim) the action of each query's nearest dataset point (no gradient).
        alpha: the Q weight before normalization.
    Returns:
        (loss, metrics with lambda and the dataset-constraint error)
    """
    loss, lmbda, dc = anchored_actor_loss(q, pi_action, neighbour_action, alpha)
    return loss, {"actor/lambda": lmbda, "loss/dc": dc}


class PRDC:
    """PRDC agent: TD3+BC's networks with an exact nearest-neighbour index over the dataset."""

    def __init__(self, config: PRDCConfig, ctx: BuildContext) -> None:
        self.config = config
        self.device = ctx.device
        view = ctx.require_offline("prdc")
        self.normalizer = ObsNormalizer.of(view.obs_mean, view.obs_std, enabled=config.normalize_states)
        self.normalizer = self.normalizer.to(self.device)
        self.actor = DeterministicActor(ctx.obs_dim, ctx.act_dim, config.hidden).to(self.device)
        self.critic = EnsembleCritic(ctx.obs_dim, ctx.act_dim, config.hidden, config.num_critics).to(self.device)
        self.target_actor = copy.deepcopy(self.actor).requires_grad_(False)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.optimizers = {"actor": adam(self.actor.parameters(), lr=config.actor_lr),
                           "critic": adam(self.critic.parameters(), lr=config.critic_lr)}
        self.steps = 0
        # The dataset stays where the context put it (the training device): no copy per update.
        self._data_obs, self._data_action = view.obs, view.action
        self._build_index()

    def _build_index(self) -> None:
        with torch.no_grad():
            points = prdc_search_keys(self.normalizer(self._data_obs), self._data_action, self.config.beta)
        self.index = NearestNeighbours(points)
        self._index_stats = (self.normalizer.mean.clone(), self.normalizer.std.clone())

    def param_groups(self) -> dict[str, list[torch.Tensor]]:
        return {"actor": list(self.actor.parameters()), "critic": list(self.critic.parameters())}

    def _actor_due(self) -> bool:
        # The reference counts updates from 1 and trains the actor when the count divides by the delay.
        return (self.steps + 1) % self.config.policy_delay == 0

    def neighbour_actions(self, obs: torch.Tensor, pi_action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Actions (B, act_dim) of the dataset points nearest to (beta obs, pi_action), and their distances (B,).

        ``obs`` is normalized (as the networks see it); nothing here is differentiated.
        """
        dist, rows = self.index.query(prdc_search_keys(obs, pi_action, self.config.beta).detach())
        return self._data_action[rows], dist

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
            neighbour_action, dist = self.neighbour_actions(obs, pi_action)
            q_pi = self.critic(obs, pi_action, detach_params=True)[0]
            actor_loss, actor_metrics = prdc_actor_loss(q_pi, pi_action, neighbour_action, cfg.alpha)
            terms["actor"] = actor_loss
            metrics.update(actor_metrics)
            metrics["loss/actor"] = actor_loss.detach()
            metrics["dc/distance"] = dist.mean().to(device=q.device, dtype=q.dtype)
        return terms, metrics

    def losses(self, batch: Batch) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Every term, the actor's included whether or not this step is one of its delayed steps."""
        return self._losses(batch, with_actor=True)

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        due = self._actor_due()
        # Off the actor's steps its forward pass and the search are skipped, not computed and dropped.
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
        return {"actor": self.actor, "critic": self.critic, "target_actor": self.target_actor,
                "target_critic": self.target_critic, "obs_normalizer": self.normalizer}

    def state_dict(self) -> dict:
        # No index: it is a function of the dataset and the statistics, rebuilt rather than saved.
        return training_state(self._parts(), self.optimizers, self.steps)

    def load_state_dict(self, state: dict) -> None:
        self.steps = load_training_state(state, self._parts(), self.optimizers)
        mean, std = self._index_stats
        if not (torch.equal(mean, self.normalizer.mean) and torch.equal(std, self.normalizer.std)):
            self._build_index()


register(MethodSpec(name="prdc", family="offline", config=PRDCConfig, build=PRDC,
                    summary="PRDC: TD3 with a nearest-dataset-point actor constraint (Ran et al. 2023)",
                    tiny={"hidden": (16, 16), "batch_size": 32}))
