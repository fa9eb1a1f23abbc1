"""featvlr: precomputed-feature, lightweight trainer for vision-language retrieval."""
__version__ = "0.1.0"

__all__ = ["__version__", "load"]


def __getattr__(name: str):
    """``featvlr.load`` (:func:`featvlr.inference.load`), imported on first use so that
    ``import featvlr`` stays light and the package root depends on no layer above it."""
    if name == "load":
        import importlib

        return importlib.import_module("featvlr.inference").load
    raise AttributeError(f"module 'featvlr' has no attribute {name!r}")
