"""Plots and views. Nothing in mmlens imports this package."""

from mmlens.viz.attention_view import attention_view, token_labels
from mmlens.viz.flow import plot_knockout, plot_lens, plot_shares
from mmlens.viz.image import heat_to_image, overlay, patch_heat, plot_image_attention, position_heat_to_image
from mmlens.viz.saliency import plot_cam, plot_disruption, plot_flow_metrics

__all__ = [
    "attention_view",
    "heat_to_image",
    "overlay",
    "patch_heat",
    "plot_cam",
    "plot_disruption",
    "plot_flow_metrics",
    "plot_image_attention",
    "plot_knockout",
    "plot_lens",
    "plot_shares",
    "position_heat_to_image",
    "token_labels",
]
