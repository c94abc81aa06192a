"""Self-play (Nash learning) methods for language models, one file each; importing this registers them all.

Each file holds the method's config (paper defaults, one docstring per field), its target construction
(judgments -> pairs and targets; INPO, online IPO and online DPO share ``selfplay_spec.every_pair_targets``)
and one ``register_selfplay`` line; its loss lives in ``preference.losses`` and the loop in
``preference.selfplay``.
"""

from hybridrl.preference.selfplay_methods import egpo, inpo, nash_md, nash_mp, online_dpo, online_ipo, sppo

__all__ = ["egpo", "inpo", "nash_md", "nash_mp", "online_dpo", "online_ipo", "sppo"]
