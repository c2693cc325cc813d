"""What `budgetlm calibrate` leaves behind (`fit.json`), and how `budgetlm report` shows it.

`fit.json` holds a Chinchilla-form law L(N, D) = E + A/N^alpha + B/D^beta (nats/token, this
corpus and tokenizer) fitted to pilot runs on IsoFLOP profiles: a few compute levels C, a few
model sizes N per level, each trained for D = C/(6N) tokens. Beside the law: its intervals and
bootstrap refits, the pilots themselves (loss, fitted loss, residual), and optionally the run
planned from the fit.

- `load_fit` reads it back, turning a malformed file into a one-line `UserError`; `law_of`
  gives its law (`report_load`).
- `summary_rows` builds plain rows for tables or JSON (`report_rows`).
- `describe_law` and `render_fit` print them with rich (`report_tables`).
- `write_fit_png` draws the IsoFLOP profiles and the optimum line into one PNG (`report_png`).

`report_fit` does all of it for one file. Where data was repeated (`unique_tokens` set), the
curves use Muennighoff et al.'s effective data D' (`laws.effective_data`), as the pilots'
`effective_tokens` do; the tables' compute-optimal allocation is the plain closed form
(`LossLaw.optimal`), with the epochs it would take.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from budgetlm.calibrate.report_load import KIND, LAW_KEYS, VERSION, law_of, load_fit
from budgetlm.calibrate.report_png import PNG_NEEDS, write_fit_png
from budgetlm.calibrate.report_rows import DEFAULT_LEVEL, summary_rows
from budgetlm.calibrate.report_tables import describe_law, render_fit

__all__ = [
    "DEFAULT_LEVEL", "KIND", "LAW_KEYS", "PNG_NEEDS", "VERSION", "describe_law", "law_of",
    "load_fit", "render_fit", "report_fit", "summary_rows", "write_fit_png",
]


def report_fit(path: str | Path, png: Path | None = None, console: Any = None
               ) -> dict[str, Any]:
    """Load `path`, print its tables on `console` (when given), write the PNG (default: next to
    the file, suffix .png); return {"png": path written, "rows": summary_rows}."""
    fit = load_fit(path)
    if console is not None:
        render_fit(console, fit)
    target = Path(png) if png is not None else Path(path).with_suffix(".png")
    written = write_fit_png(fit, target)
    if console is not None:
        console.print(f"wrote {written}", highlight=False, soft_wrap=True)
    return {"png": str(written), "rows": summary_rows(fit)}
