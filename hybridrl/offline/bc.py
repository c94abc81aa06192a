"""Behaviour cloning: a deterministic tanh policy regressed onto the dataset's actions.

The floor every offline method must beat. Defaults follow CORL's ``any_percent_bc`` (2x256 MLP,
Adam 3e-4, batch 256), trained on all of the data (no top-percent filtering). With
``normalize_states`` the policy reads observations normalized by the dataset's mean and std, as
CORL's ``normalize`` option does; the statistics are saved with the policy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hybridrl.core.buffers import Batch
from hybridrl.core.checkpoint import load_training_state, training_state
from hybridrl.core.config import check_fields
from hybridrl.core.context import BuildContext
from hybridrl.core.losses import bc_mse_loss
from hybridrl.core.nets import DeterministicActor, ObsNormalizer
from hybridrl.core.optim import adam, apply_losses
from hybridrl.registry import MethodSpec, register


@dataclass(frozen=True, kw_only=True)
class BCConfig:
    """BC hyperparameters (CORL any_percent_bc)."""

    lr: float = 3e-4
    """Adam step size of the policy."""
    batch_size: int = 256
    """Transitions per update."""
    hidden: tuple[int, ...] = (256, 256)
    """Hidden widths of the policy MLP."""
    normalize_states: bool = False
    """Normalize observations with the dataset's mean and std (CORL's option; off by default)."""

    def __post_init__(self) -> None:
        check_fields(self)


class BC:
    def __init__(self, config: BCConfig, ctx: BuildContext) -> None:
        self.config = config
        self.device = ctx.device
        if config.normalize_states:
            view = ctx.require_offline("bc with normalize_states")
            self.normalizer = ObsNormalizer(view.obs_mean, view.obs_std).to(self.device)
        else:
            self.normalizer = ObsNormalizer.identity(ctx.obs_dim, self.device)
        self.actor = DeterministicActor(ctx.obs_dim, ctx.act_dim, config.hidden).to(self.device)
        self.optimizers = {"actor": adam(self.actor.parameters(), lr=config.lr)}
        self.steps = 0

    def param_groups(self) -> dict[str, list[torch.Tensor]]:
        return {"actor": list(self.actor.parameters())}

    def losses(self, batch: Batch) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        loss = bc_mse_loss(self.actor(self.normalizer(batch.obs)), batch.action)
        return {"actor": loss}, {"loss/actor": loss.detach()}

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        terms, metrics = self.losses(batch)
        apply_losses(terms, self.optimizers)
        self.steps += 1
        return metrics

    @torch.no_grad()
    def act(self, obs: torch.Tensor, *, deterministic: bool = True) -> torch.Tensor:
        return self.actor(self.normalizer(obs))

    def _parts(self) -> dict[str, torch.nn.Module]:
        """What the method saves and loads, besides its optimizer and step count."""
        return {"actor": self.actor, "obs_normalizer": self.normalizer}

    def state_dict(self) -> dict:
        return training_state(self._parts(), self.optimizers, self.steps)

    def load_state_dict(self, state: dict) -> None:
        parts = self._parts()
        # Checkpoints written before the option existed have no statistics: they were unnormalized.
        if "obs_normalizer" not in state:
            del parts["obs_normalizer"]
        self.steps = load_training_state(state, parts, self.optimizers)


register(MethodSpec(name="bc", family="offline", config=BCConfig, build=BC,
                    summary="Behaviour cloning: a deterministic policy regressed on the dataset's actions (MSE)",
                    tiny={"hidden": (16, 16), "batch_size": 32}))
