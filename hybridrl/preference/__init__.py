"""Preference optimization on language models (DPO, IPO, f-DPO; Nash / self-play methods next).

Importing this package imports neither transformers nor TRL: the submodules that need them
(``models``, ``data``, ``trainer``, ``task``) import them inside their functions.
"""
