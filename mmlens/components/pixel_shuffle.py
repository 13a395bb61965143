"""InternVL's projector: pixel shuffle (2×2 patches → one token), LayerNorm, two-layer MLP.

Pixel shuffle moves each ``s × s`` block of neighbouring patches into the channel axis, so a
view of ``g × g`` patches becomes ``(g/s) × (g/s)`` tokens of ``s² · d`` channels: InternVL's
448-px tiles give 32×32 patches and 256 image tokens per tile.
"""

from __future__ import annotations

import einops
from jaxtyping import Float
from torch import Tensor, nn

from mmlens.components.activations import get_activation
from mmlens.components.norms import LayerNorm
from mmlens.components.patch_merger import PatchMerger
from mmlens.components.projector import Projector
from mmlens.config import ProjectorConfig
from mmlens.errors import MMLensError
from mmlens.hooks import HookPoint


def pixel_shuffle(
    features: Float[Tensor, "n_views n_patch d_vision"], factor: int
) -> Float[Tensor, "n_views n_tokens d_shuffled"]:
    """Merge each ``factor × factor`` block of a square patch grid into one token.

    Token ``(i, j)`` (row-major over the ``g/factor`` grid) holds patches ``(factor·i + a,
    factor·j + b)`` concatenated in the order ``a`` (row offset), then ``b``, then channel, as
    Hugging Face's ``InternVLModel.pixel_shuffle`` lays them out.

    Raises:
        MMLensError: the patches do not form a square grid whose side ``factor`` divides.
    """
    n, p, _ = features.shape
    g = int(round(p**0.5))
    if g * g != p or g % factor:
        raise MMLensError(
            f"pixel shuffle by {factor} needs a square patch grid whose side it divides; got {p} patches: "
            "check the vision tower's image_size / patch_size and vision_feature_select_strategy."
        )
    return einops.rearrange(features, "n (i a j b) d -> n (i j) (a b d)", i=g // factor, a=factor, j=g // factor, b=factor)


class PixelShuffleProjector(nn.Module):
    """``linear_2(act(linear_1(ln(pixel_shuffle(features)))))`` (InternVL's ``multi_modal_projector``).

    Hooks: ``hook_shuffled`` (``[n_views, n_tokens, s²·d_vision]``, the shuffled features),
    ``ln.hook_scale|normalized``, and ``hook_pre`` / ``hook_post`` around the activation, as
    the LLaVA projector. Its input, ``vision_encoder.hook_features``, keeps one row per patch.
    """

    def __init__(self, cfg: ProjectorConfig):
        super().__init__()
        self.factor = cfg.pixel_shuffle
        d_shuffled = cfg.d_in * cfg.pixel_shuffle**2
        self.hook_shuffled = HookPoint()  # [n_views, n_tokens, d_shuffled]
        self.ln = LayerNorm(d_shuffled, cfg.ln_eps)
        self.linear_1 = nn.Linear(d_shuffled, cfg.d_out, bias=cfg.bias)
        self.act = get_activation(cfg.act_fn)
        self.linear_2 = nn.Linear(cfg.d_out, cfg.d_out, bias=cfg.bias)
        self.hook_pre = HookPoint()  # [n_views, n_tokens, d_model]
        self.hook_post = HookPoint()  # [n_views, n_tokens, d_model]

    def forward(self, features: Float[Tensor, "n_views n_patch d_vision"]) -> Float[Tensor, "n_views n_tokens d_model"]:
        x = self.ln(self.hook_shuffled(pixel_shuffle(features, self.factor)))
        return self.linear_2(self.hook_post(self.act(self.hook_pre(self.linear_1(x)))))


def build_projector(cfg: ProjectorConfig) -> nn.Module:
    """The projector module for ``cfg.kind``: :class:`PixelShuffleProjector`, Qwen2-VL's
    :class:`~mmlens.components.patch_merger.PatchMerger` (``"patch_merger"``) or
    :class:`~mmlens.components.projector.Projector` (``"mlp"``, ``"linear"``)."""
    kinds = {"pixel_shuffle_mlp": PixelShuffleProjector, "patch_merger": PatchMerger}
    return kinds.get(cfg.kind, Projector)(cfg)
