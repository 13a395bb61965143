"""Where a patch can go: short site names → hook names, and how each activation is laid out."""

from __future__ import annotations

from dataclasses import dataclass

from mmlens.errors import UnknownNameError, check_layer, closest


@dataclass(frozen=True)
class Site:
    """One patchable activation.

    Attributes:
        name: Short name as the user passes it (``"resid_pre"``, ``"z"``, ``"vision_resid_pre"``).
        template: Hook name with ``{l}`` for the layer.
        tower: ``"decoder"`` or ``"vision"``.
        per_head: The result has one column per head (``z``, ``pattern``).
        pos_axis: Axis of the (query) positions in the activation, batch included.
    """

    name: str
    template: str
    tower: str = "decoder"
    per_head: bool = False
    pos_axis: int = 1

    def hook(self, layer: int) -> str:
        return self.template.format(l=layer)


_DECODER = {
    "resid_pre": "blocks.{l}.hook_resid_pre",
    "resid_mid": "blocks.{l}.hook_resid_mid",
    "resid_post": "blocks.{l}.hook_resid_post",
    "attn_out": "blocks.{l}.hook_attn_out",
    "mlp_out": "blocks.{l}.hook_mlp_out",
}
SITES: dict[str, Site] = {
    **{k: Site(k, v) for k, v in _DECODER.items()},
    "z": Site("z", "blocks.{l}.attn.hook_z", per_head=True),
    "pattern": Site("pattern", "blocks.{l}.attn.hook_pattern", per_head=True, pos_axis=2),
    # The projected image features as written into the prompt: the merged embedding (the input
    # of block 0) at image positions. For single-view models this is hook_image_embed's row of
    # each image token; for anyres models it includes un-padding and newline slots.
    "image_embed": Site("image_embed", "blocks.0.hook_resid_pre"),
    **{f"vision_{k}": Site(f"vision_{k}", "vision_encoder." + v, tower="vision") for k, v in _DECODER.items()},
}
"""Site name → :class:`Site`. ``hook_image_embed`` and full ``blocks.{l}.hook_*`` names also resolve."""


def get_site(name: str) -> Site:
    """The :class:`Site` for a short name, a ``hook_``-prefixed one or a TransformerLens hook name.

    Raises:
        UnknownNameError: no such site.
    """
    key = name.removeprefix("hook_")
    if key.startswith(("blocks.", "vision_encoder.blocks.")):
        vision = key.startswith("vision_encoder.")
        key = ("vision_" if vision else "") + key.rsplit(".hook_", 1)[-1]
    if key not in SITES:
        raise UnknownNameError(
            f"cannot patch {name!r}: sites are {sorted(SITES)} (closest: {closest(key, SITES, 3)})."
        )
    return SITES[key]


def check_layers(layers: list[int], n_layers: int, site: Site) -> list[int]:
    """Layers of the site's tower, negatives from the end."""
    if site.name == "image_embed":
        return [0]
    return [check_layer(layer, n_layers, "vision tower" if site.tower == "vision" else "decoder") for layer in layers]
