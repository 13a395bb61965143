"""Plots and views: tidy tables and tensors drawn on the inputs' geometry.

viz sits below ``mmlens.analysis`` (results' ``plot()`` call these functions) and imports nothing
from it.
"""

from mmlens.viz.attention_view import View, attention_view, position_view, token_labels
from mmlens.viz.flow import plot_accuracy, plot_cliff, plot_knockout, plot_lens, plot_shares
from mmlens.viz.image import (
    heat_panels,
    heat_to_image,
    overlay,
    patch_heat,
    plot_image_attention,
    position_heat_to_image,
)
from mmlens.viz.saliency import plot_cam, plot_disruption, plot_flow_metrics, plot_hit_rate
from mmlens.viz.styles import line_style

__all__ = [
    "View",
    "attention_view",
    "heat_panels",
    "heat_to_image",
    "line_style",
    "overlay",
    "patch_heat",
    "plot_accuracy",
    "plot_cam",
    "plot_cliff",
    "plot_disruption",
    "plot_flow_metrics",
    "plot_hit_rate",
    "plot_image_attention",
    "plot_knockout",
    "plot_lens",
    "plot_shares",
    "position_heat_to_image",
    "position_view",
    "token_labels",
]
