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
from rich.markup import escape
from typer.core import TyperGroup

from budgetlm import __version__
from budgetlm.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, UserError

HELP_ORDER = (
    "schema", "profile", "estimate", "train", "sample", "plan", "calibrate", "tune", "report",
    "export",
)


def _click_base(name: str) -> type[Exception]:
    """click's exception class `name` (ClickException, UsageError) as typer uses it: typer
    vendors click in recent versions, and names only BadParameter publicly."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)


CLICK_ERROR = _click_base("ClickException")
USAGE_ERROR = _click_base("UsageError")


class CommandsInHelpOrder(TyperGroup):
    """The top-level group: `--help` lists the commands in HELP_ORDER, others after them; a
    usage error (bad flag value, missing argument, unknown option) is one line and exit 2."""

    def list_commands(self, ctx: Any) -> list[str]:
        rank = {name: i for i, name in enumerate(HELP_ORDER)}
        return sorted(super().list_commands(ctx), key=lambda name: rank.get(name, len(rank)))

    def main(self, args: Any = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except CLICK_ERROR as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":
                exc.show()
            else:
                print_error(usage_error_line(exc))
            sys.exit(exc.exit_code)
        except typer.Abort:
            print_error("aborted")
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) and not isinstance(rv, bool) else 0)


def usage_error_line(exc: Exception) -> str:
    """A click error as one line: its message, and where to read the command's usage."""
    msg = " ".join(exc.format_message().split())  # type: ignore[attr-defined]
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, USAGE_ERROR) and ctx is not None:
        msg = f"{msg.rstrip('.')} (see {ctx.command_path} --help)"
    return msg


def print_error(msg: str) -> None:
    """`error: msg` as one line on stderr (the message is never read as markup)."""
    line = " ".join(msg.splitlines())
    err_console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)


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
            print_error(str(exc))
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
