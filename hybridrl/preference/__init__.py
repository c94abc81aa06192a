"""Preference optimization and Nash learning for language models and tabular games."""
