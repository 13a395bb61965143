"""HookedVLM's image side: the vision tower and projector on every view, without the decoder.

:class:`VisionPath` holds what runs before the prompt is merged: :meth:`~VisionPath.encode_images`
(tower, Q-Former, projector), :meth:`~VisionPath.embed_images` (per image, the embeddings that
fill its placeholders, anyres tiles packed with their newline slots), the anyres
:meth:`~VisionPath.newline_slots`, and the vision-only forward that ``run_with_cache`` picks for a
names filter that selects only vision hooks.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mmlens.errors import ImageTokenMismatchError, MMLensError
from mmlens.geometry import n_views
from mmlens.inputs import MMInputs
from mmlens.models.anyres import pack_image
from mmlens.models.mrope_inputs import image_token_counts

VISION_STAGES = ("features", "image_embed")
"""Where a vision-only forward stops: after the tower, or after the projector."""


class VisionPath:
    """Mixin of :class:`~mmlens.models.vlm.HookedVLM`: its vision tower, Q-Former and projector.

    Reads the model's ``vlm_cfg``, ``vision_encoder``, ``qformer``, ``vision_projector``,
    ``image_newline`` and ``hook_image_embed``, all made by ``HookedVLM.__init__``.
    """

    def embed_images(
        self,
        pixel_values: Tensor,
        image_sizes: Tensor | None = None,
        *,
        qformer_input_ids: Int[Tensor, "batch q_pos"] | None = None,
        qformer_attention_mask: Tensor | None = None,
        image_grid_thw: Int[Tensor, "n_img 3"] | None = None,
    ) -> list[Float[Tensor, "n_tokens d_model"]]:
        """Vision encoder and projector: per image, the embeddings that replace its placeholders.

        Single-view models take ``pixel_values`` ``[n_img, 3, H, W]``. Anyres models (LLaVA-NeXT,
        LLaVA-OneVision) take ``[n_img, max_views, 3, H, W]`` (or the views stacked,
        ``[n_views, 3, H, W]``) with ``image_sizes`` ``[n_img, 2]`` as (height, width);
        ``hook_image_embed`` then holds the projected features of every view, before tiles are
        un-padded (and, for OneVision, shrunk) and newline slots added. Tiled models (InternVL)
        take every image's tiles and thumbnail stacked, ``[n_views, 3, H, W]``, and return one
        entry per view (the model concatenates them in order). Packed models (Qwen2-VL) take every
        image's patches, ``[n_patches, d_patch]``, with ``image_grid_thw``.
        """
        pinpoints = self.vlm_cfg.image_grid_pinpoints
        if self.vlm_cfg.vision.packed:
            packed = self.encode_images(pixel_values, image_grid_thw=image_grid_thw)[0]
            return list(packed.split(image_token_counts(image_grid_thw, self.vlm_cfg.vision.merge_size)))
        if pinpoints is None:
            return list(self.encode_images(
                pixel_values, qformer_input_ids=qformer_input_ids, qformer_attention_mask=qformer_attention_mask
            ))
        if image_sizes is None:
            raise MMLensError(
                "anyres models (LLaVA-NeXT, LLaVA-OneVision) need image_sizes (height, width) for each "
                "image: use model.prepare, or pass the processor's image_sizes."
            )
        tile = self.vlm_cfg.vision.image_size
        sizes = [tuple(s) for s in torch.as_tensor(image_sizes).tolist()]
        counts = [n_views(size, pinpoints, tile) for size in sizes]
        views = self.encode_images(pixel_values, image_sizes)
        max_patches = self.vlm_cfg.anyres_max_patches
        return [
            pack_image(v, size, pinpoints, tile, self.image_newline, max_patches)
            for v, size in zip(views.split(counts), sizes)
        ]

    def encode_images(
        self,
        pixel_values: Tensor,
        image_sizes: Tensor | None = None,
        *,
        project: bool = True,
        qformer_input_ids: Int[Tensor, "batch q_pos"] | None = None,
        qformer_attention_mask: Tensor | None = None,
        image_grid_thw: Int[Tensor, "n_img 3"] | None = None,
    ) -> Float[Tensor, "n_views n_patch d_out"]:
        """Vision tower (and projector) on every view: no decoder runs.

        Args:
            pixel_values: ``[n_img, 3, H, W]``; anyres ``[n_img, max_views, 3, H, W]`` (padding
                views are dropped using ``image_sizes``) or the views stacked, ``[n_views, 3, H, W]``.
            image_sizes: ``[n_img, 2]`` (height, width), needed for 5-d anyres ``pixel_values``.
            project: Return ``hook_image_embed`` (``d_out = d_model``); False: the tower's
                ``vision_encoder.hook_features`` (what the projector consumes).
            qformer_input_ids: InstructBLIP's instruction in the Q-Former's vocabulary, one row per
                image (its ``qformer_attention_mask`` marks padding); the Q-Former runs between the
                tower and the projector when ``project``.
            image_grid_thw: Packed models (Qwen2-VL): the patch grid of every image; ``pixel_values``
                are then ``[n_patches, d_patch]`` and the result ``[1, n_patches or n_tokens, d]``
                (all images in one sequence).

        Raises:
            MMLensError: 5-d anyres ``pixel_values`` without ``image_sizes``.
        """
        if pixel_values.dim() == 5:
            if image_sizes is None:
                raise MMLensError(
                    "5-d anyres pixel_values [n_img, max_views, 3, H, W] need image_sizes (height, width) to "
                    "drop the padding views: pass the processor's image_sizes, or the views stacked [n_views, 3, H, W]."
                )
            pinpoints, tile = self.vlm_cfg.image_grid_pinpoints, self.vlm_cfg.vision.image_size
            counts = [n_views(tuple(s), pinpoints, tile) for s in torch.as_tensor(image_sizes).tolist()]
            pixel_values = torch.cat([pv[:c] for pv, c in zip(pixel_values, counts)])
        packed = {"image_grid_thw": image_grid_thw} if self.vlm_cfg.vision.packed else {}
        features = self.vision_encoder(pixel_values, **packed)
        if not project:
            return features
        if self.qformer is not None:
            features = self.qformer(features, qformer_input_ids, qformer_attention_mask)
        return self.hook_image_embed(self.vision_projector(features))

    def _vision_only(
        self, inputs: Any, pixel_values: Tensor | None, image_sizes: Tensor | None, stage: str, image_inputs: dict
    ) -> Tensor:
        """The ``vision_stage`` forward: :meth:`encode_images` on the inputs' pixels."""
        if stage not in VISION_STAGES:
            raise MMLensError(f"vision_stage takes one of {VISION_STAGES}, not {stage!r}.")
        if isinstance(inputs, MMInputs):
            pixel_values, image_sizes = inputs.pixel_values, inputs.image_sizes
        if pixel_values is None:
            raise MMLensError("a vision-only run needs pixel_values: pass model(pixel_values=px, vision_stage=...) "
                              "or MMInputs that hold images.")
        return self.encode_images(pixel_values, image_sizes, project=stage == "image_embed", **image_inputs)

    def vision_stage_for(self, names_filter: Any) -> str | None:
        """The last stage a names filter needs when it selects only vision hooks: ``"features"``
        (tower hooks only), ``"image_embed"`` (projector or ``hook_image_embed`` too); else None."""
        if names_filter is None:
            return None
        if isinstance(names_filter, str):
            names = [names_filter]
        elif isinstance(names_filter, (list, tuple)):
            names = list(names_filter)
        else:
            names = [n for n in self.hook_dict if names_filter(n)]
        if not names:
            return None
        tower = all(n.startswith("vision_encoder.") for n in names)
        projector = all(n.startswith(("vision_encoder.", "vision_projector.")) or n == "hook_image_embed" for n in names)
        return "features" if tower else "image_embed" if projector else None

    def newline_slots(
        self, input_ids: Int[Tensor, "batch pos"], image_sizes: Tensor | None = None
    ) -> Bool[Tensor, "batch pos"]:
        """The anyres ``image_newline`` positions of a prompt (none for single-view models).

        Laid out by the same :func:`~mmlens.models.anyres.pack_image` that fills the image slots,
        run on an indicator instead of features, so no vision tower runs.

        Args:
            input_ids: Prompts whose image placeholders are expanded, one image after another.
            image_sizes: ``[n_img, 2]`` (height, width) of each image (anyres models).
        """
        image = input_ids == self.vlm_cfg.image_token_index
        out = torch.zeros_like(image)
        pinpoints = self.vlm_cfg.image_grid_pinpoints
        if pinpoints is None or image_sizes is None or not bool(image.any()):
            return out
        tile, per_view = self.vlm_cfg.vision.image_size, self.vlm_cfg.image_seq_length
        flags = []
        for size in torch.as_tensor(image_sizes).tolist():
            views = torch.zeros(n_views(size, pinpoints, tile), per_view, 1)
            packed = pack_image(views, size, pinpoints, tile, torch.ones(1), self.vlm_cfg.anyres_max_patches)
            flags.append(packed[:, 0] > 0.5)
        flags = torch.cat(flags).to(image.device)
        if flags.numel() != int(image.sum()):
            raise ImageTokenMismatchError(
                f"the prompt has {int(image.sum())} image tokens but images of sizes {image_sizes} need "
                f"{flags.numel()}: build prompts with model.prepare() or the checkpoint's processor."
            )
        out[image] = flags
        return out
