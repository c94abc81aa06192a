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

from pathlib import Path

import numpy as np

from hybridrl.core.checkpoint import atomic_write_json
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
    "random_games",
    "regularized_nash",
    "regularized_nash_batched",
    "solve",
    "solve_batched",
]


GAP_FLOOR = 1e-17  # gaps are plotted above this (exact zeros after rounding)


def plot_gap_curves(
    methods: list[str] | tuple[str, ...] = ("nash_mp", "egpo", "nash_md", "inpo", "online_ipo", "sppo"),
    n: int = 10,
    beta: float = 0.1,
    iterations: int = 3000,
    samples: int | None = None,
    seed: int = 0,
    out_path: str | Path = "nash_games.png",
    num_games: int = 10,
    device: str | None = None,
) -> dict[str, dict[str, float]]:
    """Plot duality gap vs iteration (log y) for ``methods`` on ``num_games`` random games.

    Behind ``hybridrl pref games``; needs matplotlib (``pip install 'hybridrl[bench]'``).

    Writes ``out_path`` (PNG) and the same name with ``.json`` (per-method final gaps). ``sppo`` is
    scored on the unregularized game. Returns ``{method: {"gap_final_median", "gap_final_max"}}``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    curves = gap_curves(
        list(methods),
        n=n,
        beta=beta,
        iterations=iterations,
        samples=samples,
        seed=seed,
        num_games=num_games,
        device=device,
    )
    fig, ax = plt.subplots(figsize=(7, 4.8))
    for method, gaps in curves.items():
        gaps = np.maximum(gaps, GAP_FLOOR)
        label = f"{method} (beta=0 gap)" if method == "sppo" else method
        (line,) = ax.plot(np.median(gaps, axis=1), label=label)
        ax.fill_between(
            np.arange(gaps.shape[0]), gaps.min(1), gaps.max(1), alpha=0.12, color=line.get_color()
        )
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"duality gap (median, min-max over {num_games} games)")
    kind = "exact preferences" if samples is None else f"{samples} samples per estimate"
    ax.set_title(f"n={n}, beta={beta}, {kind}, seed={seed}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    summary = {
        method: {"gap_final_median": float(np.median(gaps[-1])), "gap_final_max": float(gaps[-1].max())}
        for method, gaps in curves.items()
    }
    atomic_write_json(out_path.with_suffix(".json"), summary)
    return summary
