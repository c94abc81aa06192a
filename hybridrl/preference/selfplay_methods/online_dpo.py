r"""Online iterative DPO (Guo et al., arXiv 2402.04792; Xiong et al., arXiv 2312.11456): the baseline that
asks the judge as often as the self-play methods do.

Each iteration samples K answers per prompt from the current policy, the oracle judges every pair of them
(the same ``K(K-1)/2`` queries per prompt as INPO and SPPO), and ``steps_per_iteration`` optimizer steps
fit the DPO loss against the fixed reference with the oracle's preference as the label
(``losses.online_dpo_loss``). It is not a Nash method: DPO fits a Bradley-Terry reward, so under an
intransitive judge it has no equilibrium to find, which is what the Nash methods are compared against.

As in the reference online trainers, log-probs are summed over the answer and the reference is the
initial policy; unlike TRL's single pair per prompt, every judged pair is used, so that a comparison at
equal judge calls also feeds it every judgment.
"""

from __future__ import annotations

from dataclasses import dataclass

from hybridrl.preference.selfplay_spec import SelfPlaySpec, every_pair_targets, register_selfplay


@dataclass(frozen=True, kw_only=True)
class OnlineDPOConfig:
    """Online DPO hyperparameters (TRL's ``OnlineDPOConfig`` default beta = 0.1)."""

    beta: float = 0.1
    """KL strength toward the reference (DPO's beta, on log-probs summed over the answer)."""

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ValueError(f"beta must be positive, got {self.beta}")


register_selfplay(
    SelfPlaySpec(name="online_dpo",
        summary="Online iterative DPO on the policy's own judged answers (Guo et al. 2024), the judge-matched baseline",
        config=OnlineDPOConfig, loss="online_dpo", build_targets=every_pair_targets)
)
