"""Behaviour cloning: a deterministic tanh policy regressed onto the dataset's actions.

The floor every offline method must beat. Defaults follow CORL's ``any_percent_bc`` (2x256 MLP,
Adam 3e-4, batch 256), trained on all of the data (no top-percent filtering).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hybridrl.core.buffers import Batch
from hybridrl.core.losses import bc_mse_loss
from hybridrl.core.nets import DeterministicActor
from hybridrl.core.optim import adam
from hybridrl.registry import AlgoSpec, register


@dataclass(frozen=True, kw_only=True)
class BCConfig:
    """BC hyperparameters (CORL any_percent_bc)."""

    lr: float = 3e-4
    batch_size: int = 256
    hidden: tuple[int, ...] = (256, 256)


class BC:
    def __init__(self, obs_dim: int, act_dim: int, config: BCConfig = BCConfig(),
                 device: torch.device | str = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        self.actor = DeterministicActor(obs_dim, act_dim, config.hidden).to(self.device)
        self.optim = adam(self.actor.parameters(), lr=config.lr)
        self.steps = 0

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        loss = bc_mse_loss(self.actor(batch.obs), batch.action)
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        self.optim.step()
        self.steps += 1
        return {"loss/actor": loss.detach()}

    @torch.no_grad()
    def act(self, obs: torch.Tensor, *, deterministic: bool = True) -> torch.Tensor:
        return self.actor(obs)

    def state_dict(self) -> dict:
        return {"actor": self.actor.state_dict(), "optim": self.optim.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.actor.load_state_dict(state["actor"])
        self.optim.load_state_dict(state["optim"])
        self.steps = state["steps"]


register(AlgoSpec(name="bc", family="offline", config=BCConfig, build=BC,
                  summary="Behaviour cloning (deterministic, MSE)"))
