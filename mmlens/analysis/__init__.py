"""Functions that run the model and return tidy results."""

from mmlens.analysis.knockout_sweep import PAPER_FLOWS, KnockoutResult, knockout_sweep
from mmlens.analysis.lens import LensResult, logit_lens
from mmlens.analysis.shares import ShareResult, attention_share

__all__ = [
    "PAPER_FLOWS",
    "KnockoutResult",
    "LensResult",
    "ShareResult",
    "attention_share",
    "knockout_sweep",
    "logit_lens",
]
