"""Functions that run the model and return tidy results."""

from mmlens.analysis.accuracy import CliffResult, cliff_layer, evaluate
from mmlens.analysis.disruption import DisruptionResult, d_metric, disruption
from mmlens.analysis.gradcam import CamResult, grad_cam
from mmlens.analysis.knockout_sweep import PAPER_FLOWS, KnockoutResult, knockout_sweep
from mmlens.analysis.lens import LensResult, logit_lens
from mmlens.analysis.saliency import SaliencyResult, flow_metrics, group_metrics, saliency, saliency_matrix
from mmlens.analysis.shares import ShareResult, attention_share

__all__ = [
    "PAPER_FLOWS",
    "CliffResult",
    "cliff_layer",
    "evaluate",
    "flow_metrics",
    "CamResult",
    "DisruptionResult",
    "KnockoutResult",
    "LensResult",
    "SaliencyResult",
    "ShareResult",
    "attention_share",
    "d_metric",
    "disruption",
    "grad_cam",
    "group_metrics",
    "knockout_sweep",
    "logit_lens",
    "saliency",
    "saliency_matrix",
]
