"""hybridrl: offline, hybrid (offline + online) and preference-based policy optimization.

Importing the package is cheap: neither MuJoCo nor transformers is imported here; the rooms that
need them import them lazily.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
