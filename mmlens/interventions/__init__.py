"""Hook factories and builders. Nothing here runs a model."""

from mmlens.interventions.knockout import block_attention, knockout, onward, paper_window_size, window

__all__ = ["block_attention", "knockout", "onward", "paper_window_size", "window"]
