"""Command line: each command parses its input, calls one library function, and prints.

One module per command group registers its commands on the typer `app` when imported. Heavy
modules (torch, optuna, pandas) are imported inside the commands that need them so that
`budgetlm estimate` and `budgetlm plan` answer in about a second.
"""

from budgetlm.cli import calibrate, export, machine, plan, schema, train, tune  # noqa: F401
from budgetlm.cli.root import app, main

__all__ = ["app", "main"]
