"""Methods: a model plus a loss recipe, registered by name (see :mod:`featvlr.methods.base`)."""
from featvlr.methods.base import Method, StepState
from featvlr.methods.registry import (
    create_method,
    get_method,
    list_methods,
    register_method,
)

__all__ = ["Method", "StepState", "create_method", "get_method", "list_methods", "register_method"]
