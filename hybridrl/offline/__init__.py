"""Offline RL methods: one file each (config, pure losses, class, register)."""
