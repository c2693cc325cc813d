"""The `budgetlm` typer application and what every command shares: the consoles, the error
guard, common option types and JSON printing."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from typer.core import TyperGroup

from budgetlm import __version__
from budgetlm.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, UserError

HELP_ORDER = (
    "schema", "profile", "estimate", "train", "sample", "plan", "calibrate", "tune", "report",
    "export",
)


class CommandsInHelpOrder(TyperGroup):
    """The top-level group: `--help` lists the commands in HELP_ORDER, others after them."""

    def list_commands(self, ctx: Any) -> list[str]:
        rank = {name: i for i, name in enumerate(HELP_ORDER)}
        return sorted(super().list_commands(ctx), key=lambda name: rank.get(name, len(rank)))


app = typer.Typer(
    name="budgetlm",
    cls=CommandsInHelpOrder,
    help="Plan, estimate, tune and train language models on a fixed compute budget.",
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
)
console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="override a config field: key=value (repeatable)"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON object")]


def guarded(fn: F) -> F:
    """Turn user errors into one line on stderr and exit 2; Ctrl-C into exit 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except KeyboardInterrupt:
            err_console.print("interrupted", highlight=False)
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper  # type: ignore[return-value]


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"budgetlm {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="show version"),
    ] = False,
) -> None:
    """budgetlm: what model, batch, precision and schedule give the best model for this budget."""


def print_json(obj: Any) -> None:
    """`obj` as indented JSON on stdout (non-JSON values as their str)."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def main() -> None:
    """The console script: run the app; Ctrl-C outside a command exits 130."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
