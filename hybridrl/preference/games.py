r"""Tabular preference games: the KL-regularized Nash equilibrium and the self-play methods that seek it.

One import for the three parts, each a module of one concern:

* :mod:`hybridrl.preference.games_core`: the game ``(P, reference)``, its input checks and random
  intransitive instances (:class:`PreferenceGame`, :func:`random_games`);
* :mod:`hybridrl.preference.games_equilibrium`: the regularized equilibrium (damped Newton on its
  fixed point), the game value and the duality gap;
* :mod:`hybridrl.preference.games_solvers`: the six methods (Nash-MP, EGPO, Nash-MD, INPO, SPPO,
  online IPO) in one table, :data:`SOLVERS`, with :func:`solve_batched` and :func:`gap_curves`; its
  docstring gives each update and the deviations from the reference code.
"""

from __future__ import annotations

import numpy as np

from hybridrl.preference.games_core import WIN_RATE_LIPSCHITZ, PreferenceGame, random_games
from hybridrl.preference.games_equilibrium import (
    duality_gap,
    duality_gap_batched,
    game_value,
    regularized_nash,
    regularized_nash_batched,
)
from hybridrl.preference.games_solvers import (
    METHODS,
    SOLVERS,
    GameSolver,
    default_lr,
    exact_winrate_matrix,
    gap_curves,
    queries_per_iteration,
    solve,
    solve_batched,
)

__all__ = [
    "METHODS",
    "SOLVERS",
    "WIN_RATE_LIPSCHITZ",
    "GameSolver",
    "PreferenceGame",
    "default_lr",
    "duality_gap",
    "duality_gap_batched",
    "exact_winrate_matrix",
    "game_value",
    "gap_curves",
    "queries_per_iteration",
    "random_games",
    "regularized_nash",
    "regularized_nash_batched",
    "solve",
    "solve_batched",
]


GAP_FLOOR = 1e-17  # gaps are plotted above this (exact zeros after rounding)


def gap_bands(
    curves: dict[str, np.ndarray], queries: dict[str, int] | None = None
) -> dict[str, dict[str, list[float]]]:
    """The median, min and max over games of each method's gap, at every iteration.

    Args:
        curves: ``{method: (iterations + 1, num_games) array of gaps}``, as :func:`gap_curves` returns.
        queries: ``{method: oracle queries per iteration}`` (:func:`queries_per_iteration`); when given,
            each band also has ``queries``, the preference comparisons used up to each point.

    Returns:
        ``{method: {"iterations", "median", "min", "max"[, "queries"]}}``: the layout of a games run's
        ``gap_curves`` with the extremes in place of the quartiles, which ``hybridrl pref games``
        draws with the report's gap plot.
    """
    bands: dict[str, dict[str, list[float]]] = {}
    for method, gaps in curves.items():
        bands[method] = {
            "iterations": list(range(gaps.shape[0])),
            "median": np.median(gaps, axis=1).tolist(),
            "min": gaps.min(1).tolist(),
            "max": gaps.max(1).tolist(),
        }
        if queries is not None:
            bands[method]["queries"] = [t * queries[method] for t in range(gaps.shape[0])]
    return bands
