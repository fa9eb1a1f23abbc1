"""Methods: a model plus a loss recipe, registered by name (see :mod:`featvlr.methods.base`)."""
from featvlr.methods.base import Method, StepState
from featvlr.methods.registry import get_method, list_methods, register_method

__all__ = ["Method", "StepState", "get_method", "list_methods", "register_method"]
