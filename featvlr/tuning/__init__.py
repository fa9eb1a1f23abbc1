"""Hyper-parameter search on Optuna: `featvlr tune` (TPE and pruning), the grid of `featvlr
ablate`, and `featvlr compare` (every method tuned with the same budget)."""
