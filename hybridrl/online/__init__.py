"""Online RL methods (the reference for offline-vs-online comparisons)."""
