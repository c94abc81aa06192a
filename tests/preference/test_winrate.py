"""Win-rate matrices: the fixed JSON layout, bootstrap intervals, LM players, exact tabular players."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hybridrl.preference.games import exact_winrate_matrix
from hybridrl.preference.oracles import MajorityJudge
from hybridrl.preference.winrate import (
    MATRIX_KEYS,
    format_matrix,
    matrix_from_outcomes,
    winrate_matrix,
    write_matrix,
)


def test_matrix_from_outcomes_layout_and_values(tmp_path):
    outcomes = {
        (0, 1): np.array([[1.0, 1.0], [1.0, 0.0], [0.5, 1.0]]),  # mean 0.75 over 6 comparisons
        (0, 2): np.zeros((3, 2)),
        (1, 2): np.full((3, 2), 0.5),
    }
    m = matrix_from_outcomes(["a", "b", "c"], outcomes, judge="majority", seed=0)
    assert list(m) == list(MATRIX_KEYS)
    win = np.array(m["win_rate"])
    assert np.allclose(np.diag(win), 0.5) and np.allclose(win + win.T, 1.0)
    assert win[0, 1] == pytest.approx(0.75) and win[2, 0] == 1.0 and win[1, 2] == 0.5
    low, high = np.array(m["ci_low"]), np.array(m["ci_high"])
    assert (low <= win + 1e-12).all() and (win <= high + 1e-12).all()
    assert low[0, 1] < 0.75 < high[0, 1]  # the per-prompt means 1, 0.5, 0.75 differ
    assert low[1, 0] == pytest.approx(1 - high[0, 1])
    assert m["num_comparisons"] == [[0, 6, 6], [6, 0, 6], [6, 6, 0]]
    write_matrix(m, tmp_path / "m.json")
    assert json.loads((tmp_path / "m.json").read_text()) == json.loads(json.dumps(m))
    assert "| a | – | 0.750" in format_matrix(m)


def test_lm_players_copies_tie_exactly(tiny_lm, text_rows, one_torch_thread):
    from hybridrl.preference.models import load_causal_lm, load_tokenizer

    models = {
        "policy": load_causal_lm(tiny_lm[0]),
        "same": load_causal_lm(tiny_lm[0]),
        "other": load_causal_lm(tiny_lm[1]),
    }
    prompts = [r["prompt"] for r in text_rows[:10]]
    m = winrate_matrix(
        models, load_tokenizer(tiny_lm[0]), prompts, MajorityJudge(), judge_name="majority", samples_per_prompt=2
    )
    assert m["players"] == ["policy", "same", "other"]
    assert m["win_rate"][0][1] == 0.5 and m["ci_low"][0][1] == 0.5 == m["ci_high"][0][1]
    assert m["num_comparisons"][0][2] == 20
    assert m["win_rate"][0][2] == pytest.approx(m["win_rate"][1][2])
    with pytest.raises(ValueError, match="at least two players"):
        winrate_matrix({"one": models["policy"]}, load_tokenizer(tiny_lm[0]), prompts, MajorityJudge(), judge_name="x")


def test_exact_tabular_matrix_rock_paper_scissors():
    P = np.array([[0.5, 0.0, 1.0], [1.0, 0.5, 0.0], [0.0, 1.0, 0.5]])  # paper beats rock, ...
    rock, paper, scissors, uniform = np.eye(3)[0], np.eye(3)[1], np.eye(3)[2], np.full(3, 1 / 3)
    m = exact_winrate_matrix(P, [rock, paper, scissors, uniform], ["R", "P", "S", "U"])
    win = np.array(m["win_rate"])
    assert win[1, 0] == 1.0 and win[2, 1] == 1.0 and win[0, 2] == 1.0  # a cycle
    assert np.allclose(win[3], 0.5) and m["ci_low"] == m["win_rate"] and list(m) == list(MATRIX_KEYS)
    with pytest.raises(ValueError, match="probability vector"):
        exact_winrate_matrix(P, [np.array([1.0, 1.0, 0.0]), rock], ["x", "y"])


def test_kl_to_reference_is_zero_for_the_reference_and_matches_the_exact_kl(tiny_lm):
    """Zero for the reference itself; for another policy, the Monte-Carlo estimate agrees with the
    exact KL of one-token answers (max_new_tokens=1: a sum over the vocabulary)."""
    import torch

    from hybridrl.preference.models import load_causal_lm, load_tokenizer
    from hybridrl.preference.prompts import encode_prompts
    from hybridrl.preference.winrate import kl_to_reference

    tokenizer = load_tokenizer(tiny_lm[0])
    reference = load_causal_lm(tiny_lm[0])
    prompts = ["write about cats :", "count to three :"]
    same = kl_to_reference(reference, reference, tokenizer, prompts, seed=0, samples_per_prompt=8)
    assert same["kl"] == 0.0
    policy = load_causal_lm(tiny_lm[0])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    estimate = kl_to_reference(policy, reference, tokenizer, prompts, seed=0, samples_per_prompt=20000,
                               max_new_tokens=1, batch_size=8000)
    exact = []
    for ids in encode_prompts(tokenizer, prompts):
        x = torch.tensor([ids])
        with torch.no_grad():
            log_p = policy(x).logits[0, -1].log_softmax(-1)
            log_q = reference(x).logits[0, -1].log_softmax(-1)
        exact.append(float((log_p.exp() * (log_p - log_q)).sum()))
    expected = sum(exact) / len(exact)
    assert expected > 0.01
    # 40000 one-token answers: the Monte-Carlo error is about 3% of the KL here
    assert estimate["kl"] == pytest.approx(expected, rel=0.12)
