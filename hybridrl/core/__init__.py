"""Shared core: buffers, networks, pure losses, checkpoints, logging, seeding, configs.

Nothing here imports another room of hybridrl.
"""
