"""Numbers in and out, and files written whole: the one place for each.

- Parsing what a user types: `parse_number` ('8B', '1e19'), `parse_duration` ('1h30m'), both
  finite (`require_finite`).
- Formatting numbers for people: `format_count`, `format_si`, `format_flops_rate`,
  `format_seconds`, `human_bytes`, `short_bytes`, `format_sci`.
- Writing files so a reader never sees half of one: `atomic_write_text`, `write_json`
  (a temporary file beside the target, then `os.replace`).
- `cache_dir()`: where budgetlm keeps what it measured or tokenized.

No torch, no third-party imports: every layer may use it.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from budgetlm.errors import UserError

GiB = 1024**3

# ---------------------------------------------------------------------------------------------
# Parsing

_SUFFIX = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12, "p": 1e15}


def require_finite(value: float, what: str, text: Any = None) -> float:
    """`value` as a float; UserError naming `what` when it is infinite or NaN (what was typed,
    `text`, is quoted when given: '1e400' overflows to inf)."""
    v = float(value)
    if not math.isfinite(v):
        shown = str(value) if text is None else str(text)
        shown = repr(shown if len(shown) <= 40 else shown[:37] + "...")
        raise UserError(f"{what}: must be finite, got {shown}")
    return v


def parse_number(text: str, what: str) -> float:
    """'1e19', '2.5e9', '8B', '400M', '1.5T', '20k' -> a finite float; UserError naming `what`
    otherwise ('inf', 'nan' and numbers that overflow, '1e400', are not finite)."""
    s = str(text).strip().replace("_", "").replace(",", "")
    try:
        if s and s[-1].lower() in _SUFFIX and not s.lower().endswith("e"):
            value = float(s[:-1]) * _SUFFIX[s[-1].lower()]
        else:
            value = float(s)
    except ValueError:
        raise UserError(f"{what}: expected a number like 1e19 or 8B, got {text!r}") from None
    return require_finite(value, what, text)


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(d|h|m|s|ms)?", re.IGNORECASE)
_UNIT_SECONDS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, None: 1.0}


def parse_duration(text: str | float, what: str = "--time") -> float:
    """'10m', '90s', '1h30m', '2.5h', '45' or '1e3' (plain seconds) -> seconds, finite and
    positive; UserError otherwise."""
    if isinstance(text, int | float):
        seconds = require_finite(text, what)
    else:
        seconds = _duration_seconds(text, what)
    if seconds <= 0:
        raise UserError(f"{what}: must be positive, got {text!r}")
    return seconds


def _duration_seconds(text: str, what: str) -> float:
    s = str(text).strip().lower().replace(" ", "")
    try:
        plain = float(s)  # plain seconds in any float syntax; 'inf', 'nan', '1e400' refused
    except ValueError:
        plain = None
    if plain is not None:
        return require_finite(plain, what, text)
    if s.startswith("-"):
        raise UserError(f"{what}: must be positive, got {text!r}")
    pos, seconds, parts = 0, 0.0, 0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if not m or m.end() == pos:
            raise UserError(
                f"{what}: cannot read {text!r}; expected a duration like 10m, 90s, 1h30m or "
                "plain seconds"
            )
        unit = m.group(2).lower() if m.group(2) else None
        if unit is None and (m.end() < len(s) or parts > 0):
            raise UserError(f"{what}: cannot read {text!r}; put a unit on each part (1h30m)")
        seconds += float(m.group(1)) * _UNIT_SECONDS[unit]
        pos, parts = m.end(), parts + 1
    if parts == 0:
        raise UserError(f"{what}: empty duration")
    return require_finite(seconds, what, text)


def finite_number(v: Any) -> float | None:
    """A finite float, or None (bool, None, strings and non-finite values are not numbers)."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


# ---------------------------------------------------------------------------------------------
# Formatting

_COUNT = ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K"))


def format_count(n: float, digits: int = 3) -> str:
    """1.23e9 -> '1.23B' (significant digits); small numbers as they are."""
    for div, unit in _COUNT:
        if abs(n) >= div:
            return f"{n / div:.{digits}g}{unit}"
    return f"{n:.{digits}g}"


def format_count_fixed(n: float) -> str:
    """1.234e9 -> '1.23B' (two decimals): table cells of counts."""
    for div, unit in _COUNT:
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def format_si(x: float, unit: str) -> str:
    """4e10, 'FLOP/s' -> '40 GFLOP/s' (three significant digits, SI prefixes up to P)."""
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= factor:
            return f"{x / factor:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}"


def format_flops_rate(f: float) -> str:
    """FLOP/s with a prefix from M to P: '989 TFLOP/s'."""
    for div, unit in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
        if f >= div:
            return f"{f / div:.3g} {unit}FLOP/s"
    return f"{f:.3g} FLOP/s"


def format_seconds(s: float) -> str:
    """Seconds in the unit a person reads best: '45 s', '12 min', '8 h', '3.5 days'."""
    if s < 120:
        return f"{s:.3g} s"
    if s < 7200:
        return f"{s / 60:.3g} min"
    if s < 2 * 86400:
        return f"{s / 3600:.3g} h"
    return f"{s / 86400:.3g} days"


def human_bytes(n: float) -> str:
    """Bytes in binary units with two decimals: '1.50 GiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def short_bytes(n: float) -> str:
    """Bytes, short, for narrow table cells: '1.5G'."""
    for div, unit in ((2**40, "T"), (2**30, "G"), (2**20, "M"), (2**10, "K")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.0f}B"


def format_sci(v: Any, digits: int = 2) -> str:
    """A number as '1.2e19' (trailing zeros dropped); '-' when it is not a finite number."""
    f = finite_number(v)
    if f is None:
        return "-"
    mant, exp = f"{f:.{digits}e}".split("e")
    mant = mant.rstrip("0").rstrip(".")
    return f"{mant}e{int(exp)}"


# ---------------------------------------------------------------------------------------------
# Files


def atomic_replace(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Create `path` whole or not at all: `write` fills a temporary file beside it, which then
    replaces `path` (a reader sees the old file or the new one, never half of one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, _new_file_mode())  # as open() would have made it, not mkstemp's 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` whole or not at all."""
    return atomic_replace(path, lambda tmp: tmp.write_text(text))


def _new_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_json(path: str | Path, obj: Any, indent: int = 2) -> Path:
    """`obj` as JSON (non-JSON values as their str), written atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, default=str) + "\n")


# ---------------------------------------------------------------------------------------------
# Cache


def cache_dir() -> Path:
    """$BUDGETLM_CACHE_DIR, else $XDG_CACHE_HOME/budgetlm, else ~/.cache/budgetlm."""
    explicit = os.environ.get("BUDGETLM_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "budgetlm"
