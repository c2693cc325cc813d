"""What a plan's predicted loss is in, and whether it is shown as a number for this corpus.

A prior (Chinchilla, Epoch, Kaplan) predicts nats per token of *its* data and tokenizer: 14.4
nats/token for a character model whose real loss is ~1.6 is the prior's 32K-BPE number, not a
prediction for this corpus. Converting it to bits per byte would need the prior's bytes per token
on its own corpus and would still describe that corpus, not this one, so a prior's loss is shown
only as a difference: Δ, the candidate's predicted loss minus the top candidate's, in the prior's
nats/token (a ranking, and how much the prior thinks a choice costs). A law fitted on this corpus
and tokenizer (`budgetlm calibrate`, `--fit`) predicts this corpus's nats/token: shown as it is,
with its interval. The absolute number of either stays in `--json` (`loss`), with `loss_unit`
saying whose nats/token it is.
"""

from __future__ import annotations

from budgetlm import laws
from budgetlm.config import DataConfig

ABSOLUTE = "absolute"
RELATIVE = "relative"


def fit_matches(law: laws.LossLaw, data: DataConfig, data_given: bool) -> bool:
    """Whether a fitted law is for this plan's corpus and tokenizer (a fit that names no corpus
    is taken as given)."""
    fdata = law.extra.get("data") or {}
    if not fdata:
        return True
    return (data_given and fdata.get("source") == data.source
            and fdata.get("tokenizer") == data.tokenizer)


def loss_shown(law: laws.LossLaw, data: DataConfig, data_given: bool) -> str:
    """ABSOLUTE (a fit for this corpus and tokenizer) or RELATIVE (a prior, or a fit of
    another corpus or tokenizer)."""
    return ABSOLUTE if law.kind == "fit" and fit_matches(law, data, data_given) else RELATIVE


def loss_unit(law: laws.LossLaw, data: DataConfig, data_given: bool) -> str:
    """Whose nats/token a plan's `loss` is in, in words."""
    if law.kind == "fit":
        fdata = law.extra.get("data") or {}
        where = (f"{fdata.get('source')} ({fdata.get('tokenizer')} tokens)" if fdata
                 else "the corpus it was fitted on")
        return f"nats/token of {where}; fitted law ({law.source})"
    return (f"nats/token of the {law.name} prior's own data and tokenizer ({law.source}); "
            "not this corpus's: compare candidates by it")


def relative_cell(loss: float, best: float) -> str:
    """A prior's loss in a table cell: the difference from the top candidate's."""
    return f"{loss - best:+.3f}"
