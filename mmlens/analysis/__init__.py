"""Per-input analyses: ``(model, inputs: MMInputs, ...) -> Result`` (see :mod:`mmlens.result`).

Loops over datasets live in :mod:`mmlens.studies`; ``group_metrics`` and ``saliency_matrix`` are
the tensor maths of :func:`saliency`, exposed for tests and custom aggregations.
"""

from mmlens.analysis.disruption import DisruptionResult, disruption
from mmlens.analysis.gradcam import CamResult, grad_cam
from mmlens.analysis.knockout_sweep import PAPER_FLOWS, KnockoutResult, knockout_sweep
from mmlens.analysis.lens import LensResult, logit_lens
from mmlens.analysis.saliency import SaliencyResult, group_metrics, saliency, saliency_matrix
from mmlens.analysis.shares import ShareResult, attention_share

__all__ = [
    "PAPER_FLOWS",
    "CamResult",
    "DisruptionResult",
    "KnockoutResult",
    "LensResult",
    "SaliencyResult",
    "ShareResult",
    "attention_share",
    "disruption",
    "grad_cam",
    "group_metrics",
    "knockout_sweep",
    "logit_lens",
    "saliency",
    "saliency_matrix",
]
