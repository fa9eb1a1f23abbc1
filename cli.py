"""featvlr command line, runnable from a checkout as ``python cli.py ...``.

The installed console script ``featvlr`` runs the same typer app (``featvlr.cli``).
"""
from featvlr.cli import app, main  # noqa: F401 (app: the typer application, re-exported)

if __name__ == "__main__":
    main()
