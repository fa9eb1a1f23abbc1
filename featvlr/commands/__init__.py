"""Command modules of the ``featvlr`` CLI; each exposes ``register(app)``."""
from featvlr.commands import ablate, demo, embed, eval, extract, info, search, train, tune

COMMAND_MODULES = [extract, info, train, eval, demo, ablate, tune, embed, search]
