"""The files of one run's directory in a grid, and reading its scores.

    spec.json         what the run is (written first; a rerun with another spec is refused)
    environment.json  where it ran (Python, packages, device, commit, host)
    scores.json       its scores, written last and atomically: their presence means "finished"
    error.txt         why it failed, when it did
    .lock             held by the process running it
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SPEC = "spec.json"
SCORES = "scores.json"
ENVIRONMENT = "environment.json"
ERROR = "error.txt"
LOCK = ".lock"


def read_scores(run_dir: Path) -> dict[str, Any] | None:
    """The run's scores, or None when it has not finished (or its scores file is unreadable)."""
    try:
        scores = json.loads((run_dir / SCORES).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return scores if isinstance(scores, dict) and "score" in scores else None
