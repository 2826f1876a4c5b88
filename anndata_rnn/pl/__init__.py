"""Plots (matplotlib): training history and the RNN-vs-baseline comparison."""

from ._plots import baseline_comparison, training_history

__all__ = ["training_history", "baseline_comparison"]
