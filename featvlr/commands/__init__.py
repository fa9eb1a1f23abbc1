"""Command modules of the ``featvlr`` CLI; each exposes ``register(app)``."""
from featvlr.commands import ablate, demo, embed, eval, extract, info, search, train

COMMAND_MODULES = [extract, info, train, eval, demo, ablate, embed, search]
