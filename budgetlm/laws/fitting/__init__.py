"""Fitting loss laws to observed runs (numpy, scipy): the Chinchilla form (`chinchilla`), the
Kaplan form (`kaplan`), and the multistart Huber fit with bootstrap they share (`multistart`)."""

from budgetlm.laws.fitting.chinchilla import LawFit, fit_law
from budgetlm.laws.fitting.fitted import FittedLaw
from budgetlm.laws.fitting.kaplan import KaplanFit, fit_kaplan, kaplan_loss

__all__ = ["FittedLaw", "KaplanFit", "LawFit", "fit_kaplan", "fit_law", "kaplan_loss"]
