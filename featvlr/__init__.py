"""featvlr: precomputed-feature, lightweight trainer for vision-language retrieval."""
__version__ = "0.1.0"
