"""Image-token pruning as forward options, and FLOPs accounting."""

from mmlens.pruning.flops import flops
from mmlens.pruning.policies import FastV, HiMAP, Plan, Stage, Truncate, with_convention
from mmlens.pruning.spec import parse_policy

__all__ = ["FastV", "HiMAP", "Plan", "Stage", "Truncate", "flops", "parse_policy", "with_convention"]
