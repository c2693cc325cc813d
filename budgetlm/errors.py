"""User-facing errors: one line, naming the field or file at fault, exit code 2."""

from __future__ import annotations

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """A mistake in the user's input (config, flag, file). Printed as one line; exit code 2."""


def format_validation_error(exc: object, prefix: str = "") -> str:
    """Turn a pydantic ValidationError into one line: `field.path: message; other: message`."""
    parts: list[str] = []
    for err in exc.errors():  # type: ignore[attr-defined]
        loc = ".".join(str(p) for p in err.get("loc", ()))
        where = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "config"
        msg = err.get("msg", "invalid value")
        msg = msg.removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            msg = "unknown key"
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)
