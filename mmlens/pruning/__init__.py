"""Image-token pruning as forward options, and FLOPs accounting."""

from mmlens.pruning.flops import flops
from mmlens.pruning.policies import FastV, HiMAP, Truncate

__all__ = ["FastV", "HiMAP", "Truncate", "flops"]
