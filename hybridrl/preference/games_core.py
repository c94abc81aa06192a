r"""Tabular preference games: the game itself, its input checks and random intransitive instances.

A preference game over ``n`` responses is a matrix ``P`` with ``P[i, j]`` the probability that
response ``i`` is preferred to response ``j`` (so ``P + P.T = 1`` and ``P[i, i] = 1/2``), plus a
reference policy :math:`\pi_{ref}`. Every routine here works on float64 stacks of ``G`` games,
``(G, n, n)`` and ``(G, n)``, so the equilibrium solver (``games_equilibrium``) and the self-play
methods (``games_solvers``) handle many games in one vectorized computation;
:class:`PreferenceGame` is the one-game, NumPy view of the same checks.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

from hybridrl.core.seeding import resolve_device

__all__ = ["WIN_RATE_LIPSCHITZ", "PreferenceGame", "random_games"]

# Lipschitz constant of the win-rate map pi -> P pi from the l1 norm to the sup norm: for a
# difference d of two policies (sum d = 0), |(P d)_y| = |sum_x (P[y, x] - 1/2) d_x| <= ||d||_1 / 2.
# Mirror-prox theory (KL is 1-strongly convex w.r.t. l1 by Pinsker) allows eta <= 1 / L.
WIN_RATE_LIPSCHITZ = 0.5

# Tolerance of the P + P.T = 1 and sum(reference) = 1 checks; inputs are then projected exactly.
_VALIDATION_ATOL = 1e-9

Tensor = torch.Tensor


def _check_preference_matrices(P: Tensor) -> Tensor:
    """Validate a (G, n, n) stack of preference matrices; return them projected onto P + P.T = 1."""
    if P.ndim != 3 or P.shape[-1] != P.shape[-2]:
        raise ValueError(
            f"P must be a square (n, n) matrix (or a (G, n, n) stack), got shape {tuple(P.shape)}; "
            "pass one row and one column per response"
        )
    n = P.shape[-1]
    if n < 2:
        raise ValueError(f"a preference game needs at least 2 responses, got n={n}; add responses")
    if not torch.isfinite(P).all():
        raise ValueError("P contains NaN or inf; every entry must be a probability in [0, 1]")
    if (P < 0).any() or (P > 1).any():
        lo, hi = P.min().item(), P.max().item()
        raise ValueError(
            f"P entries must lie in [0, 1] (they are win probabilities), got range [{lo:.4g}, {hi:.4g}]; "
            "rescale or clip them"
        )
    diagonal = torch.diagonal(P, dim1=-2, dim2=-1)
    if (diagonal - 0.5).abs().max() > _VALIDATION_ATOL:
        raise ValueError(
            "P must have 0.5 on the diagonal (a response ties with itself); "
            f"max |P[i, i] - 0.5| is {(diagonal - 0.5).abs().max().item():.3g}; set the diagonal to 0.5"
        )
    skew_error = (P + P.transpose(-1, -2) - 1).abs()
    if skew_error.max() > _VALIDATION_ATOL:
        flat = int(skew_error.reshape(-1).argmax())
        i, j = (flat // n) % n, flat % n
        raise ValueError(
            f"P + P.T must equal 1 (P[i, j] is the probability that i beats j); max deviation "
            f"{skew_error.max().item():.3g} at (i, j) = ({i}, {j}); set P[j, i] = 1 - P[i, j]"
        )
    # Project out rounding so that pi^T P pi = 1/2 holds to machine precision (the gap formula uses it).
    return 0.5 * (P + 1 - P.transpose(-1, -2))


def _check_references(reference: Tensor, n: int) -> Tensor:
    """Validate a (G, n) stack of reference policies; return them renormalized."""
    if reference.ndim != 2 or reference.shape[-1] != n:
        raise ValueError(
            f"reference must be a probability vector of length n={n} (or (G, n)), "
            f"got shape {tuple(reference.shape)}; pass one probability per response"
        )
    if not torch.isfinite(reference).all() or (reference <= 0).any():
        raise ValueError(
            "reference must have positive, finite entries (the KL to it must be finite); "
            "mix in a little uniform mass, e.g. 0.99 * ref + 0.01 / n"
        )
    totals = reference.sum(-1)
    if (totals - 1).abs().max() > _VALIDATION_ATOL:
        raise ValueError(
            f"reference must sum to 1, got sums in [{totals.min().item():.6g}, {totals.max().item():.6g}]; "
            "normalize it with reference / reference.sum()"
        )
    return reference / totals.unsqueeze(-1)


def _check_beta(beta: float, *, allow_zero: bool) -> float:
    if not isinstance(beta, (int, float)) or not math.isfinite(beta):
        raise ValueError(f"beta must be a finite number, got {beta!r}")
    if beta < 0 or (beta == 0 and not allow_zero):
        needed = "beta >= 0" if allow_zero else "beta > 0 (the unregularized game has no unique equilibrium)"
        raise ValueError(f"need {needed}, got beta={beta}")
    return float(beta)


class PreferenceGame:
    """A symmetric preference game ``(P, reference)`` over ``n`` responses.

    Args:
        P: (n, n) array; ``P[i, j]`` is the probability that response ``i`` beats ``j``.
            Must satisfy ``P + P.T == 1`` and ``P[i, i] == 0.5`` (tolerance 1e-9; the stored copy
            is projected so both hold to machine precision).
        reference: (n,) reference policy with positive entries summing to 1 (renormalized).

    Raises:
        ValueError: naming the violated condition and how to fix it.
    """

    def __init__(self, P: np.ndarray | Tensor, reference: np.ndarray | Tensor) -> None:
        P_t = torch.as_tensor(np.asarray(P, dtype=np.float64))
        if P_t.ndim != 2:
            raise ValueError(
                f"P must be a square (n, n) matrix, got shape {tuple(P_t.shape)}; "
                "use solve_batched / random_games for stacks of games"
            )
        ref_t = torch.as_tensor(np.asarray(reference, dtype=np.float64))
        if ref_t.ndim != 1:
            raise ValueError(f"reference must be a 1-D probability vector, got shape {tuple(ref_t.shape)}")
        P_t = _check_preference_matrices(P_t.unsqueeze(0))[0]
        ref_t = _check_references(ref_t.unsqueeze(0), P_t.shape[0])[0]
        self.P: np.ndarray = P_t.numpy()
        self.reference: np.ndarray = ref_t.numpy()
        self.P.flags.writeable = False
        self.reference.flags.writeable = False

    @property
    def n(self) -> int:
        """Number of responses."""
        return self.P.shape[0]

    def __repr__(self) -> str:
        return f"PreferenceGame(n={self.n}, cycle={self.preference_cycle()})"

    @classmethod
    def random(
        cls,
        n: int,
        seed: int = 0,
        *,
        reference: Literal["random", "uniform"] = "random",
    ) -> PreferenceGame:
        """A random intransitive game, the first game of :func:`random_games` ``(1, n, seed)``.

        ``P[i, j] ~ U(0, 1)`` below the diagonal as in EGPO's simulations (``simulations/utils.py``),
        redrawn until no response beats every other one (no Condorcet winner), which guarantees a
        preference cycle ``i > j > k > i`` (see :meth:`preference_cycle`).
        """
        P, ref = random_games(1, n, seed, reference=reference)
        return cls(P[0].numpy(), ref[0].numpy())

    def condorcet_winner(self) -> int | None:
        """The response that beats every other with probability > 1/2, or None."""
        beats = self.P > 0.5
        wins = beats.sum(1)
        winners = np.flatnonzero(wins == self.n - 1)
        return int(winners[0]) if winners.size else None

    def preference_cycle(self) -> tuple[int, int, int] | None:
        """A majority cycle ``(i, j, k)`` with P[i, j], P[j, k], P[k, i] all > 1/2, or None.

        A tournament has a cycle if and only if it has one of length 3, so this is a complete check
        of (majority) intransitivity.
        """
        beats = (self.P > 0.5).astype(np.int64)
        # (beats @ beats)[i, k] counts j with i > j > k; a cycle closes when also k > i.
        closing = (beats @ beats) * beats.T
        found = np.argwhere(closing > 0)
        if found.size == 0:
            return None
        i, k = (int(v) for v in found[0])
        j = int(np.flatnonzero(beats[i] * beats[:, k])[0])
        return i, j, k


def random_games(
    num_games: int,
    n: int,
    seed: int = 0,
    *,
    reference: Literal["random", "uniform"] = "random",
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """A stack of random intransitive preference games.

    ``P[g, i, j] ~ U(0, 1)`` for ``i > j`` and ``P[g, j, i] = 1 - P[g, i, j]`` (EGPO's generator);
    games with a Condorcet winner are redrawn, so every game contains a majority cycle. The reference
    is ``softmax(N(0, I))`` (EGPO's ``random_init``) or uniform. Drawn with NumPy from ``seed``, so the
    games do not depend on the device.

    Returns:
        ``(P, reference)``: float64 tensors of shapes (num_games, n, n) and (num_games, n).
    """
    if n < 3:
        raise ValueError(f"an intransitive game needs n >= 3 responses, got n={n}")
    if reference not in ("random", "uniform"):
        raise ValueError(f"reference must be 'random' or 'uniform', got {reference!r}")
    lower_mask = np.tril(np.ones((n, n), dtype=bool), -1)
    P = np.empty((num_games, n, n))
    ref = np.empty((num_games, n))
    # One child generator per game, so game g depends only on (seed, g): PreferenceGame.random(n, seed)
    # is game 0 of any stack. Drawing is cheap; the solvers are what is vectorized over games.
    for g, child in enumerate(np.random.SeedSequence(seed).spawn(num_games)):
        rng = np.random.default_rng(child)
        for _ in range(10_000):
            lower = np.where(lower_mask, rng.uniform(size=(n, n)), 0.0)
            P[g] = lower + np.where(lower_mask, 1.0 - lower, 0.0).T + 0.5 * np.eye(n)
            # Without a Condorcet winner the majority tournament is not transitive, hence has a 3-cycle.
            if not ((P[g] > 0.5).sum(-1) == n - 1).any():
                break
        else:  # pragma: no cover - probability n 2^(1-n) per draw
            raise RuntimeError("could not draw a game without a Condorcet winner")
        if reference == "random":
            weights = np.exp(rng.normal(size=n))
            ref[g] = weights / weights.sum()
        else:
            ref[g] = 1.0 / n
    target = torch.device("cpu") if device is None else resolve_device(str(device))
    return torch.from_numpy(P).to(target), torch.from_numpy(ref).to(target)


def _as_batch(
    P: np.ndarray | Tensor, reference: np.ndarray | Tensor, device: torch.device | str | None
) -> tuple[Tensor, Tensor]:
    """Validated float64 tensors (G, n, n), (G, n) on the chosen device (default: where P lives)."""
    if device is None:
        target = P.device if isinstance(P, Tensor) else torch.device("cpu")
    else:
        target = resolve_device(str(device))
    # np.array copies read-only NumPy inputs (PreferenceGame's) that torch cannot wrap.
    P_t = torch.as_tensor(P if isinstance(P, Tensor) else np.array(P, dtype=np.float64), device=target)
    ref_t = reference if isinstance(reference, Tensor) else np.array(reference, dtype=np.float64)
    P_t = P_t.to(torch.float64)
    ref_t = torch.as_tensor(ref_t, device=target).to(torch.float64)
    if P_t.ndim == 2:
        P_t = P_t.unsqueeze(0)
    if ref_t.ndim == 1:
        ref_t = ref_t.unsqueeze(0)
    P_t = _check_preference_matrices(P_t)
    ref_t = _check_references(ref_t, P_t.shape[-1])
    if ref_t.shape[0] != P_t.shape[0]:
        raise ValueError(
            f"got {P_t.shape[0]} preference matrices but {ref_t.shape[0]} references; pass one per game"
        )
    return P_t, ref_t


def _win_rates(P: Tensor, policy: Tensor) -> Tensor:
    """(P pi)[..., g, y] = P(y > pi_g): P (G, n, n), policy (..., G, n) -> (..., G, n)."""
    return (P @ policy.unsqueeze(-1)).squeeze(-1)
