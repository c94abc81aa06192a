"""Continuous-control tasks and their data: env factory, Minari datasets, scores, evaluation.

Importing this package does not import MuJoCo or Minari; the modules import them where needed.
"""
