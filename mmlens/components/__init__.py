"""The building blocks of both towers: attention, MLPs, norms, rotary, embeddings, projector."""

from mmlens.components.activations import get_activation
from mmlens.components.attention import Attention, AttentionMask
from mmlens.components.block import Block
from mmlens.components.embed import Embed, Unembed
from mmlens.components.mlp import MLP, GatedMLP
from mmlens.components.norms import NORMS, LayerNorm, RMSNorm
from mmlens.components.pixel_shuffle import PixelShuffleProjector, build_projector, pixel_shuffle
from mmlens.components.projector import Projector
from mmlens.components.rotary import Rotary, apply_rotary

__all__ = [
    "MLP",
    "NORMS",
    "Attention",
    "AttentionMask",
    "Block",
    "Embed",
    "GatedMLP",
    "LayerNorm",
    "PixelShuffleProjector",
    "Projector",
    "RMSNorm",
    "Rotary",
    "Unembed",
    "apply_rotary",
    "build_projector",
    "get_activation",
    "pixel_shuffle",
]
