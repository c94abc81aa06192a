"""The ``hybridrl`` command: data, algos, train, eval, demo, bench, report (and ``pref`` for language models).

Thin: it parses, calls the library, prints. One room per group of commands (``data``, ``train``,
``bench``, ``pref``), mounted in ``root``; ``errors`` turns what a user can act on into one stderr line
and an exit code (2 for bad input, 1 for a diverged run, 130 for Ctrl-C). Importing this package
mounts nothing, so ``python -m hybridrl.cli.pref`` loads only the preference commands.
"""

from __future__ import annotations

from typing import Any

from hybridrl.cli.errors import EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_INTERRUPTED

__all__ = ["EXIT_BAD_INPUT", "EXIT_DIVERGED", "EXIT_INTERRUPTED", "app", "main"]


def __getattr__(name: str) -> Any:
    if name in ("app", "main"):  # the root app, built on first use
        from hybridrl.cli import root

        return getattr(root, name)
    raise AttributeError(f"module 'hybridrl.cli' has no attribute {name!r}")
