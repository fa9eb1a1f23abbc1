"""Scripts whose output is a result table (``python -m benchmarks.experiments.<script>``)."""
