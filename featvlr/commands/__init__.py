"""Command modules of the ``featvlr`` CLI; each exposes ``register(app)``."""
from featvlr.commands import ablate, demo, eval, extract, info, train

COMMAND_MODULES = [extract, info, train, eval, demo, ablate]
