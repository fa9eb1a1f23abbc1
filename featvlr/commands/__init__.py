"""Command modules of the ``featvlr`` CLI, one file per command (``tune`` also holds
``compare``); each exposes ``register(app)``."""
from featvlr.commands import ablate, demo, embed, eval, extract, info, report, search, train, tune

COMMAND_MODULES = [extract, info, train, eval, demo, ablate, report, tune, embed, search]
