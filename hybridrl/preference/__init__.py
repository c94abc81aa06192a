"""Preference optimization and Nash learning for language models and tabular games.

Pairwise methods (DPO, IPO, f-DPO) train through ``trainer``; self-play Nash methods (INPO, SPPO,
Nash-MP, EGPO, Nash-MD, online IPO; one file each in ``selfplay_methods``) through ``selfplay``, on
prompts from ``prompts``, judged by ``oracles`` (Hugging Face reward models: ``reward_models``) and
compared by ``winrate``; tabular preference games and their Nash solvers live in ``games``. Importing
this package imports neither transformers nor TRL: the submodules that need them (``models``, ``data``,
``trainer``, ``task``, ``reward_models``) import them inside their functions.
"""
