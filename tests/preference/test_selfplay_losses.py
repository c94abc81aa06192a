"""Self-play (Nash) losses on hand-computed values: INPO, SPPO, online IPO, EGPO, Nash-MP, Nash-MD."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from hybridrl.preference.games_solvers import SOLVERS
from hybridrl.preference.losses import (
    SELFPLAY_LOSSES,
    PairLogps,
    PreferenceLossConfig,
    egpo_loss,
    inpo_loss,
    nash_md_loss,
    nash_mp_loss,
    online_dpo_loss,
    online_ipo_loss,
    resolve_loss,
    sppo_loss,
)
from hybridrl.preference.selfplay_methods.egpo import EGPOConfig


def t(*values: float, grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


def pair(policy=(0.0, 0.0), ref=(0.0, 0.0), **extras) -> PairLogps:
    return PairLogps(
        t(policy[0]), t(policy[1]), t(ref[0]), t(ref[1]), t(1.0), t(1.0), {k: t(v) for k, v in extras.items()}
    )


def test_inpo_hand_computed():
    # eta=2, tau=0.25: eta*tau = 0.5; policy margin 3, ref margin 2, prev margin -1
    # h = 3 - 0.5*2 - 0.5*(-1) = 2.5; hard label: (2.5 - 1)^2 = 2.25
    config = SimpleNamespace(eta=2.0, tau=0.25)
    p = pair((1.0, -2.0), (0.5, -1.5), prev_chosen=-1.0, prev_rejected=0.0, preference=1.0)
    assert inpo_loss(p, config).item() == pytest.approx(2.25)
    # soft label p=0.25: 0.25*(2.5-1)^2 + 0.75*(2.5+1)^2
    p = pair((1.0, -2.0), (0.5, -1.5), prev_chosen=-1.0, prev_rejected=0.0, preference=0.25)
    assert inpo_loss(p, config).item() == pytest.approx(0.25 * 1.5**2 + 0.75 * 3.5**2)


def test_inpo_minimum_is_eta_times_preference_gap():
    config = SimpleNamespace(eta=4.0, tau=0.1)
    margins = torch.linspace(-3.0, 3.0, 601, dtype=torch.float64)
    zeros = torch.zeros_like(margins)
    p = PairLogps(
        margins,
        zeros,
        zeros,
        zeros,
        zeros + 1,
        zeros + 1,
        {"prev_chosen": zeros, "prev_rejected": zeros, "preference": zeros + 0.7},
    )
    best = margins[inpo_loss(p, config).argmin()].item()
    assert best == pytest.approx(4.0 * (0.7 - 0.5), abs=1e-2)


def test_sppo_hand_computed():
    # r_1 = 1 - 0 = 1, target 2*(0.75-0.5) = 0.5; r_2 = -1 - (-0.5) = -0.5, target 2*(0.25-0.5) = -0.5
    config = SimpleNamespace(eta=2.0)
    p = pair((1.0, -1.0), (9.0, 9.0), prev_chosen=0.0, prev_rejected=-0.5, win_chosen=0.75, win_rejected=0.25)
    assert sppo_loss(p, config).item() == pytest.approx(0.5 * (0.5**2 + 0.0))


def test_online_dpo_hand_computed():
    import math

    config = SimpleNamespace(beta=0.5)
    # logratios (1 - 0.5) - (-1 - 0) = 1.5, times beta: 0.75; a hard label is DPO on (winner, loser)
    p = pair((1.0, -1.0), (0.5, 0.0), preference=1.0)
    assert online_dpo_loss(p, config).item() == pytest.approx(math.log1p(math.exp(-0.75)))
    # a soft label 0.2: 0.2 * -log sigmoid(0.75) + 0.8 * -log sigmoid(-0.75)
    p = pair((1.0, -1.0), (0.5, 0.0), preference=0.2)
    expected = 0.2 * math.log1p(math.exp(-0.75)) + 0.8 * math.log1p(math.exp(0.75))
    assert online_dpo_loss(p, config).item() == pytest.approx(expected)
    assert resolve_loss("online_dpo") is online_dpo_loss and "online_dpo" in SELFPLAY_LOSSES


def test_online_ipo_and_egpo_hand_computed():
    config = SimpleNamespace(beta=0.5)
    # logratios 1 - 0 = 1 and -1 - 0 = -1: margin 2; target (0.9 - 0.5)/0.5 = 0.8
    p = pair((1.0, -1.0), (0.0, 0.0), preference=0.9)
    assert online_ipo_loss(p, config).item() == pytest.approx((2.0 - 0.8) ** 2)
    # EGPO at eta * beta = 1 is the reference's unanchored loss: target (0.6 - 0.3)/0.5 = 0.6, whatever
    # the previous iterate
    config = SimpleNamespace(beta=0.5, eta=2.0, normalize_logprobs=False)
    p = pair((1.0, -1.0), (0.0, 0.0), win_chosen=0.6, win_rejected=0.3, prev_chosen=5.0, prev_rejected=-7.0)
    assert egpo_loss(p, config).item() == pytest.approx((2.0 - 0.6) ** 2)


def test_egpo_hand_computed_with_per_token_averages():
    # lengths 2 and 4; log-ratios 3 - 1 = 2 and -2 - 0 = -2, per token 1 and -0.5: margin 1.5;
    # previous iterate: (1 - 1)/2 = 0 and (-4 - 0)/4 = -1, margin 1; eta = 2, beta = 0.25: eta*beta = 0.5
    # target 0.5 * 1 + 2 * (0.7 - 0.4) = 1.1; loss (1.5 - 1.1)^2 = 0.16
    p = PairLogps(t(3.0), t(-2.0), t(1.0), t(0.0), t(2.0), t(4.0),
                  {"prev_chosen": t(1.0), "prev_rejected": t(-4.0), "win_chosen": t(0.7), "win_rejected": t(0.4)})
    config = EGPOConfig(beta=0.25, eta=2.0)
    assert config.normalize_logprobs  # the reference LM trainer's default
    assert egpo_loss(p, config).item() == pytest.approx(0.16, rel=1e-6)
    # summed: margin 4, previous margin 0 - (-4) = 4: target 0.5 * 4 + 0.6 = 2.6
    summed = EGPOConfig(beta=0.25, eta=2.0, normalize_logprobs=False)
    assert egpo_loss(p, summed).item() == pytest.approx((4.0 - 2.6) ** 2, rel=1e-6)


def test_egpo_fitted_hard_takes_the_configured_step_not_a_best_response():
    """Fitting EGPO's loss to convergence on a tabular policy lands on the games module's EGPO step of
    size ``eta`` (the unanchored loss would land on the best response, i.e. eta * beta = 1)."""
    config = EGPOConfig()
    n = 5
    generator = torch.Generator().manual_seed(0)
    log_ref = torch.log_softmax(torch.randn(n, generator=generator, dtype=torch.float64), 0)
    log_prev = torch.log_softmax(torch.randn(n, generator=generator, dtype=torch.float64), 0)
    wins = torch.rand(n, generator=generator, dtype=torch.float64)
    i, j = torch.triu_indices(n, n, 1)
    logits = log_prev.clone().requires_grad_(True)
    optimizer = torch.optim.SGD([logits], lr=1.0)
    ones = torch.ones(len(i), dtype=torch.float64)
    for _ in range(500):  # far more steps than a phase takes: the fit converges
        log_pi = torch.log_softmax(logits, 0)
        p = PairLogps(log_pi[i], log_pi[j], log_ref[i], log_ref[j], ones, ones,
                      {"prev_chosen": log_prev[i], "prev_rejected": log_prev[j],
                       "win_chosen": wins[i], "win_rejected": wins[j]})
        optimizer.zero_grad()
        egpo_loss(p, config).mean().backward()
        optimizer.step()
    fitted = torch.log_softmax(logits.detach(), 0)
    expected = SOLVERS["egpo"].step(log_prev[None], log_ref[None], config.eta, config.beta, lambda pi: wins[None])[0]
    best_response = torch.log_softmax(log_ref + wins / config.beta, 0)
    assert torch.allclose(fitted, expected, atol=1e-4)
    assert (fitted - best_response).abs().max() > 0.5


def test_nash_mp_hand_computed():
    # eta=1, beta=1: target = (prev margin 1 + ref margin 2 + wins 0.5) / 2 = 1.75; policy margin 1
    config = SimpleNamespace(eta=1.0, beta=1.0)
    p = pair((0.0, -1.0), (1.0, -1.0), prev_chosen=0.0, prev_rejected=-1.0, win_chosen=0.75, win_rejected=0.25)
    assert nash_mp_loss(p, config).item() == pytest.approx((1.0 - 1.75) ** 2)


def test_nash_mp_fixed_point_is_the_tabular_prox_step():
    """Fitting log pi on every pair of a 3-answer bandit reproduces games.py's closed-form prox step."""
    eta, beta = 0.7, 0.3
    prev = torch.log_softmax(t(0.2, -0.4, 0.1), 0)
    ref = torch.log_softmax(t(-0.3, 0.5, 0.0), 0)
    wins = t(0.8, 0.3, 0.4)
    expected = torch.log_softmax((prev + eta * beta * ref + eta * wins) / (1 + eta * beta), 0)
    i, j = torch.triu_indices(3, 3, 1)
    # the exact minimiser: the policy margins equal the targets, so the loss is 0 there
    target_policy = expected
    p = PairLogps(
        target_policy[i],
        target_policy[j],
        ref[i],
        ref[j],
        t(1, 1, 1),
        t(1, 1, 1),
        {"prev_chosen": prev[i], "prev_rejected": prev[j], "win_chosen": wins[i], "win_rejected": wins[j]},
    )
    assert nash_mp_loss(p, SimpleNamespace(eta=eta, beta=beta)).abs().max().item() < 1e-12


def test_nash_md_gradient_is_reinforce_with_kl():
    # first: advantage 0.8 - 0.5 - 0.1 * (-1 - (-2)) = 0.2; second: 0.3 - 0.5 - 0.1 * (-3 - (-1)) = 0
    config = SimpleNamespace(beta=0.1)
    policy = t(-1.0, grad=True), t(-3.0, grad=True)
    p = PairLogps(*policy, t(-2.0), t(-1.0), t(1.0), t(1.0), {"win_chosen": t(0.8), "win_rejected": t(0.3)})
    loss = nash_md_loss(p, config)
    assert loss.item() == pytest.approx(-0.5 * (0.2 * -1.0 + 0.0))
    loss.sum().backward()
    assert policy[0].grad.item() == pytest.approx(-0.1)
    assert policy[1].grad.item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("name", sorted(SELFPLAY_LOSSES))
def test_selfplay_losses_are_float32_and_name_missing_extras(name):
    fn = resolve_loss(name)
    half = PairLogps(*(torch.zeros(2, dtype=torch.bfloat16) for _ in range(6)))
    with pytest.raises(ValueError, match=f"loss '{name}' needs PairLogps.extras"):
        fn(half, SimpleNamespace(eta=1.0, tau=0.1, beta=0.1, normalize_logprobs=True))
    extras = {
        k: torch.full((2,), 0.5, dtype=torch.bfloat16)
        for k in ("prev_chosen", "prev_rejected", "preference", "win_chosen", "win_rejected")
    }
    full = PairLogps(*(torch.zeros(2, dtype=torch.bfloat16) for _ in range(6)), extras)
    assert fn(full, SimpleNamespace(eta=1.0, tau=0.1, beta=0.1, normalize_logprobs=True)).dtype == torch.float32


def test_offline_trainer_refuses_selfplay_losses():
    with pytest.raises(ValueError, match="self-play loss"):
        PreferenceLossConfig(loss_type="inpo")
