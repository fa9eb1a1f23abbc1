"""The ``featvlr`` typer application.

Each command lives in ``featvlr/commands/<name>.py`` as a thin wrapper over a library
function, and registers itself through ``register(app)``. Heavy imports (torch,
sentence-transformers) happen inside the commands so that ``featvlr --help`` is instant.
"""
from __future__ import annotations

import sys

import typer
from typer.core import TyperGroup

from featvlr.commands import COMMAND_MODULES
from featvlr.core.errors import FeatvlrError

# The order of the top-level help: the steps of the work first, then the rest as registered.
FIRST_COMMANDS = ("extract", "train", "eval", "demo")


class _Group(TyperGroup):
    """The top-level command list: the work's steps first, each description's first paragraph
    in full (wrapped, never cut)."""

    def list_commands(self, ctx) -> list[str]:
        names = list(super().list_commands(ctx))
        return [n for n in FIRST_COMMANDS if n in names] + [n for n in names if n not in FIRST_COMMANDS]

    def format_commands(self, ctx, formatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is None or cmd.hidden:
                continue
            text = cmd.short_help or (cmd.help or "").split("\n\n", 1)[0]
            rows.append((name, " ".join(text.replace("\b", "").split())))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

app = typer.Typer(
    name="featvlr",
    cls=_Group,
    help=(
        "Precomputed-feature trainer for vision-language retrieval.\n\n"
        "Cache frozen backbone features once (extract), train small heads in minutes "
        "(train), and evaluate every retrieval scenario with the papers' protocols (eval). "
        "Start with `featvlr demo`."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)



def _version(value: bool) -> None:
    if value:
        from featvlr import __version__

        typer.echo(f"featvlr {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Precomputed-feature trainer for vision-language retrieval."""


for _module in COMMAND_MODULES:
    _module.register(app)


def main(argv: list[str] | None = None) -> None:
    """Run the app; a :class:`FeatvlrError` becomes one line on stderr and exit status 2."""
    try:
        app(args=argv, standalone_mode=True)
    except FeatvlrError as exc:
        print(f"featvlr: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
