"""budgetlm: plan, estimate, tune and train language models on a fixed compute budget."""

__version__ = "0.1.0"

__all__ = ["__version__"]
