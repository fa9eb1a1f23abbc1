"""Scripts that print speed and memory figures (``python -m benchmarks.speed.<script>``)."""
