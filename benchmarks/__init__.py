"""Benchmarks and experiments of featvlr (not part of the installed package).

Run every script from the repository root as a module: ``python -m benchmarks.speed.bench_train``,
``python -m benchmarks.experiments.equal_epochs``; README.md in this folder lists them.
"""
