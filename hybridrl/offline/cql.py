r"""Conservative Q-Learning, CQL(H) on SAC (Kumar et al., NeurIPS 2020, arXiv 2006.04779).

Critic i minimises

    E_D[(Q_i(s,a) - y)^2] + alpha_cql * ( T E_s[log sum_{a~} exp(Q_i(s,a~)/T - log mu(a~)/T)] - E_D[Q_i(s,a)] )

where the log-sum-exp runs over 3N importance-sampled proposals per state: N uniform actions
(density 0.5^|A|), N actions of the current policy at s, and N actions of the current policy at s'
evaluated at s (as in the official code, ``min_q_version=3``), and
y = r + gamma (1 - d) min_i Qbar_i(s', a'), a' ~ pi(.|s') (no entropy term: ``backup_entropy=False``).
The actor and the temperature follow SAC. ``q_values(obs, action)`` (min over the ensemble) is
what ``control.conservatism`` compares with the returns obtained at each evaluation.

Lagrange variant (``lagrange=True``): the critic's conservative term becomes alpha' * alpha_cql * gap
in both forms below (the threshold is a constant for the critic), and alpha' = clamp(exp(log alpha'),
0, 1e6) (both references clamp so; the clamp's gradient is zero above 1e6) is learned by dual ascent
on the members' mean of (``lagrange_form``):

- ``"corl"`` (default): -alpha' * alpha_cql * (gap - tau). CORL's ``algorithms/offline/cql.py``
  (``cql_min_qf_loss = alpha_prime * cql_alpha * (cql_qf_diff - cql_target_action_gap)``). alpha'
  settles where gap = tau, and its gradient scales with alpha_cql.
- ``"official"``: -alpha' * (alpha_cql * gap - tau). The official code's ``rlkit/torch/sac/cql.py``
  (``alpha_prime * (min_qf_loss - target_action_gap)``, where ``min_qf_loss`` already carries
  ``min_q_weight``). alpha' settles where gap = tau / alpha_cql.

The two coincide at alpha_cql = 1 (the official CLI's ``min_q_weight`` with Lagrange). log alpha'
starts at 0 as in the official code (CORL starts it at 1).

Update order. The official ``train_from_torch`` (one call per batch): (1) steps the SAC temperature,
then reads alpha = exp(log alpha) *after* that step; (2) builds the actor loss with that updated alpha
and the critics as they are before this call's critic steps; (3) builds the critic losses (TD target
from the target critics at a' drawn from the not-yet-stepped actor; proposals detached), and with
Lagrange steps alpha' on the dual loss there, the critic loss keeping the alpha' value from before
that step; (4) steps the actor; (5) steps critic 1, then critic 2, each on its loss from (3), so the
actor's step does not enter them; (6) Polyak-updates the targets. The policy loss therefore does not
use the updated critic. This implementation builds every loss from the parameters as they are at the
start of the update, temperature included, and applies them in one backward pass (each loss reaches
only its own parameters; CORL's ``train`` does the same). The one difference from the official order
is the entropy weight in the actor loss (and in the BC warm-up, and in the TD backup with
``backup_entropy=True``): alpha before this update's temperature step instead of after it. The two
differ by one Adam step on log alpha (of order ``alpha_lr``, so a factor of about 1 +- 1e-4 on alpha),
which is all by which the results differ.

Deviations from the reference code:
- The 3N proposals and the dataset action go through the critic ensemble in one batched forward
  pass instead of six separate ones; values are identical.
- The actor's Q(s, a~) uses detached critic weights instead of letting the actor loss write
  gradients into the critics that are then zeroed (same update, no wasted backward).
- ``bc_steps`` defaults to 0 as in CORL (the official code warms up with 40k BC steps).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Literal

import torch

from hybridrl.core.buffers import Batch
from hybridrl.core.checkpoint import load_training_state, training_state
from hybridrl.core.config import check_fields
from hybridrl.core.context import BuildContext
from hybridrl.core.losses import (
    clipped_double_q_target,
    cql_penalty,
    critic_mse_loss,
    sac_actor_loss,
    sac_temperature_loss,
)
from hybridrl.core.nets import EnsembleCritic, TanhGaussianActor, soft_update_
from hybridrl.core.optim import adam, apply_losses
from hybridrl.registry import MethodSpec, register


@dataclass(frozen=True, kw_only=True)
class CQLConfig:
    """CQL hyperparameters; defaults are the D4RL MuJoCo settings."""

    actor_lr: float = 1e-4
    """Policy learning rate (official CLI default 1e-4; CORL uses 3e-5)."""
    critic_lr: float = 3e-4
    """Q-function learning rate (official, CORL, d3rlpy)."""
    alpha_lr: float = 1e-4
    """SAC temperature learning rate (official: the policy's)."""
    batch_size: int = 256
    """Transitions per update."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 5e-3
    """Polyak rate of the target critics, updated every step."""
    hidden: tuple[int, ...] = (256, 256, 256)
    """Hidden sizes of actor and critics (3x256 in all reference implementations)."""
    num_critics: int = 2
    """Q-functions in the ensemble; targets take their minimum."""
    cql_alpha: float = 10.0
    """Conservative weight (CORL's D4RL gym configs: 10 without Lagrange)."""
    num_sampled_actions: int = 10
    """N proposals of each kind in the log-sum-exp."""
    temperature: float = 1.0
    """T of the log-sum-exp."""
    lagrange: bool = False
    """Learn the conservative weight by dual ascent (official ``lagrange_thresh >= 0``)."""
    lagrange_threshold: float = 10.0
    """Target gap tau of the Lagrange variant."""
    lagrange_form: Literal["corl", "official"] = "corl"
    """Dual loss of alpha': "corl" alpha' * alpha_cql * (gap - tau), "official" alpha' * (alpha_cql * gap - tau)."""
    alpha_prime_lr: float = 3e-4
    """Adam step size of the Lagrange weight alpha'."""
    target_entropy: float | None = None
    """Entropy the SAC temperature steers to (None: -|A|, SAC's heuristic)."""
    initial_alpha: float = 1.0
    """SAC temperature at the start."""
    backup_entropy: bool = False
    """Subtract alpha log pi(a'|s') in the TD target (off in the official D4RL runs)."""
    bc_steps: int = 0
    """Steps of BC warm-up for the actor (official 40000, CORL 0)."""

    def __post_init__(self) -> None:
        check_fields(self)
        if self.num_sampled_actions < 1:
            raise ValueError("num_sampled_actions must be >= 1")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")
        if self.lagrange_form not in ("corl", "official"):
            raise ValueError(f"lagrange_form must be 'corl' or 'official', not {self.lagrange_form!r}")


def cql_critic_loss(q_data: torch.Tensor, q_proposals: torch.Tensor, log_densities: torch.Tensor,
                    td_target: torch.Tensor, cql_weight: torch.Tensor | float, temperature: float,
                    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """CQL(H) critic loss summed over the ensemble.

    Args:
        q_data: (N, B) Q-values of the dataset actions.
        q_proposals: (N, B, K) Q-values of K proposal actions per state.
        log_densities: (B, K) log density of each proposal under the distribution it was drawn from.
        td_target: (B,) TD targets (no gradient).
        cql_weight: the conservative weight (alpha_cql, or alpha' * alpha_cql with Lagrange).
        temperature: T of the log-sum-exp.
    Returns:
        (loss, gap per member (N,), metrics)
    """
    td_loss = critic_mse_loss(q_data, td_target)
    gap = cql_penalty(q_proposals - log_densities.unsqueeze(0), q_data, temperature)
    loss = td_loss + (cql_weight * gap).sum()
    return loss, gap, {"loss/td": td_loss.detach(), "cql/gap": gap.detach().mean()}


def lagrange_loss(log_alpha_prime: torch.Tensor, gap: torch.Tensor, cql_alpha: float,
                  threshold: float, form: Literal["corl", "official"] = "corl") -> torch.Tensor:
    """Dual ascent on alpha', averaged over the members' gaps (N,) (see the module docstring).

    "corl": -alpha' * alpha_cql * (gap - tau); "official": -alpha' * (alpha_cql * gap - tau).
    Minimising it raises alpha' while the (weighted) gap exceeds the threshold and lowers it otherwise.
    """
    alpha_prime = log_alpha_prime.exp().clamp(0.0, 1e6)
    if form == "official":
        return -(alpha_prime * (cql_alpha * gap.detach() - threshold)).sum() / gap.shape[0]
    return -(alpha_prime * cql_alpha * (gap.detach() - threshold)).sum() / gap.shape[0]


class CQL:
    """CQL(H) agent: tanh-Gaussian actor, critic ensemble, automatic entropy tuning."""

    def __init__(self, config: CQLConfig, ctx: BuildContext) -> None:
        self.config = config
        self.device = ctx.device
        self.act_dim = act_dim = ctx.act_dim
        self.actor = TanhGaussianActor(ctx.obs_dim, act_dim, config.hidden).to(self.device)
        self.critic = EnsembleCritic(ctx.obs_dim, act_dim, config.hidden, config.num_critics).to(self.device)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.tensor(math.log(config.initial_alpha), device=self.device, requires_grad=True)
        self.log_alpha_prime = torch.zeros((), device=self.device, requires_grad=True)
        self.target_entropy = -float(act_dim) if config.target_entropy is None else config.target_entropy
        self.optimizers = {"actor": adam(self.actor.parameters(), lr=config.actor_lr),
                           "critic": adam(self.critic.parameters(), lr=config.critic_lr),
                           "alpha": adam([self.log_alpha], lr=config.alpha_lr),
                           "alpha_prime": adam([self.log_alpha_prime], lr=config.alpha_prime_lr)}
        # Uniform proposals on [-1, 1]^|A| have density 0.5^|A|.
        self.log_uniform_density = act_dim * math.log(0.5)
        self.steps = 0

    def param_groups(self) -> dict[str, list[torch.Tensor]]:
        return {"actor": list(self.actor.parameters()), "critic": list(self.critic.parameters()),
                "alpha": [self.log_alpha], "alpha_prime": [self.log_alpha_prime]}

    def _proposals(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """3N proposal actions per state (K, B, A), their log densities (B, K), and the TD target."""
        cfg, n, b = self.config, self.config.num_sampled_actions, len(batch)
        with torch.no_grad():
            # One actor pass gives N samples at s and N + 1 at s' (the extra one is the TD backup's).
            both = torch.cat([batch.obs, batch.next_obs])
            sampled, sampled_logp = self.actor(both, num_samples=n + 1)
            policy_action, policy_logp = sampled[:n, :b], sampled_logp[:n, :b]
            next_action, next_logp = sampled[:n, b:], sampled_logp[:n, b:]
            backup_action, backup_logp = sampled[n, b:], sampled_logp[n, b:]
            random_action = torch.rand((n, b, self.act_dim), device=self.device) * 2.0 - 1.0
            next_q = self.target_critic(batch.next_obs, backup_action)
            if cfg.backup_entropy:
                next_q = next_q - self.log_alpha.exp() * backup_logp
            td_target = clipped_double_q_target(batch.reward, batch.terminated, next_q, cfg.gamma)
            actions = torch.cat([random_action, policy_action, next_action])
            log_densities = torch.cat([
                torch.full((n, b), self.log_uniform_density, device=self.device), policy_logp, next_logp,
            ]).T
        return actions, log_densities, td_target

    def losses(self, batch: Batch) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        cfg = self.config
        b = len(batch)
        # Actor and temperature (SAC), with the critics' weights detached.
        new_action, logp = self.actor(batch.obs)
        alpha = self.log_alpha.exp().detach()
        if self.steps < cfg.bc_steps:
            actor_loss = (alpha * logp - self.actor.log_prob(batch.obs, batch.action)).mean()
        else:
            actor_loss = sac_actor_loss(logp, self.critic(batch.obs, new_action, detach_params=True), alpha)
        alpha_loss = sac_temperature_loss(self.log_alpha, logp, self.target_entropy)

        # Critics: the dataset action and all proposals in one ensemble forward.
        proposals, log_densities, td_target = self._proposals(batch)
        k = proposals.shape[0]
        all_actions = torch.cat([batch.action.unsqueeze(0), proposals]).reshape((k + 1) * b, -1)
        obs_rows = batch.obs.unsqueeze(0).expand(k + 1, -1, -1).reshape((k + 1) * b, -1)
        q_all = self.critic(obs_rows, all_actions).view(-1, k + 1, b)
        q_data, q_proposals = q_all[:, 0], q_all[:, 1:].transpose(1, 2)
        terms = {"actor": actor_loss, "alpha": alpha_loss}
        if cfg.lagrange:
            cql_weight = self.log_alpha_prime.exp().clamp(0.0, 1e6).detach() * cfg.cql_alpha
            critic_loss, gap, metrics = cql_critic_loss(q_data, q_proposals, log_densities, td_target,
                                                        cql_weight, cfg.temperature)
            terms["alpha_prime"] = lagrange_loss(self.log_alpha_prime, gap, cfg.cql_alpha, cfg.lagrange_threshold,
                                                 cfg.lagrange_form)
            metrics["alpha_prime"] = cql_weight / cfg.cql_alpha
        else:
            critic_loss, gap, metrics = cql_critic_loss(q_data, q_proposals, log_densities, td_target,
                                                        cfg.cql_alpha, cfg.temperature)
        terms["critic"] = critic_loss
        metrics.update({
            "loss/critic": critic_loss.detach(), "loss/actor": actor_loss.detach(),
            "loss/alpha": alpha_loss.detach(), "alpha": alpha, "entropy": -logp.detach().mean(),
            "q/data": q_data.detach().mean(), "q/target": td_target.mean(),
        })
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

    @torch.no_grad()
    def q_values(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """min_i Q_i(s, a), e.g. to compare with Monte-Carlo returns (conservatism)."""
        return self.critic(obs, action).min(dim=0).values

    def _parts(self) -> dict[str, torch.nn.Module | torch.Tensor]:
        """What the method saves and loads, besides its optimizers and step count."""
        return {"actor": self.actor, "critic": self.critic, "target_critic": self.target_critic,
                "log_alpha": self.log_alpha, "log_alpha_prime": self.log_alpha_prime}

    def state_dict(self) -> dict:
        return training_state(self._parts(), self.optimizers, self.steps)

    def load_state_dict(self, state: dict) -> None:
        self.steps = load_training_state(state, self._parts(), self.optimizers)


register(MethodSpec(name="cql", family="offline", config=CQLConfig, build=CQL,
                    summary="Conservative Q-Learning, CQL(H) on SAC (Kumar et al. 2020)",
                    tiny={"hidden": (16, 16), "batch_size": 32, "num_sampled_actions": 3}))
