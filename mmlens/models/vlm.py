"""HookedVLM: vision encoder → projector → merge into the prompt → hooked decoder."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from mmlens.adapters import load_checkpoint
from mmlens.components.pixel_shuffle import build_projector
from mmlens.config import VLMConfig
from mmlens.errors import ImageTokenMismatchError, ProcessorUnavailableError
from mmlens.hooks import HookPoint
from mmlens.inputs import MMInputs, prepare
from mmlens.inputs.tokens import running_on
from mmlens.models.checks import check_token_ids
from mmlens.models.decoder import HookedDecoder, KVCache, as_plan, positions_from_mask
from mmlens.models.generate import greedy_generate
from mmlens.models.mrope_inputs import multimodal_positions, refuse_videos
from mmlens.models.packed_vision_encoder import HookedPackedVisionEncoder
from mmlens.models.placement import place
from mmlens.models.qformer import HookedQFormer
from mmlens.models.qformer_geometry import with_query_geometry
from mmlens.models.vision_encoder import HookedVisionEncoder
from mmlens.models.vlm_inputs import extra_image_inputs, unpack_inputs
from mmlens.models.vlm_vision import VISION_STAGES, VisionPath

__all__ = ["VISION_STAGES", "HookedVLM"]


class HookedVLM(VisionPath, HookedDecoder):
    """A LLaVA-style vision-language model with TransformerLens hooks on all three towers.

    Decoder hooks carry TransformerLens' names verbatim (``blocks.3.attn.hook_pattern``); the
    vision tower's are prefixed ``vision_encoder.``, the projector's ``vision_projector.``; the
    joins are ``vision_encoder.hook_features``, ``hook_image_embed`` and ``hook_merged_embed``.
    The image side (``encode_images``, ``embed_images``, ``newline_slots``) comes from
    :class:`~mmlens.models.vlm_vision.VisionPath`.

    Example:
        >>> model = HookedVLM.from_pretrained("shapes-llava")  # doctest: +SKIP
        >>> inputs = model.prepare(image, "Is the circle red or blue?")  # doctest: +SKIP
        >>> logits, cache = model.run_with_cache(inputs)  # doctest: +SKIP
        >>> cache["pattern", 3].shape  # doctest: +SKIP
    """

    def __init__(self, cfg: VLMConfig, processor: Any = None):
        super().__init__(cfg.decoder, setup=False)
        self.vlm_cfg = cfg
        self.processor = processor
        self.vision_encoder = (
            HookedPackedVisionEncoder(cfg.vision) if cfg.vision.packed
            else HookedVisionEncoder(cfg.vision, cfg.vision_feature_layer, cfg.vision_feature_select_strategy)
        )
        self.vision_projector = build_projector(cfg.projector)
        # InstructBLIP: learned queries read the instruction and the vision features; the projector maps them.
        self.qformer = HookedQFormer(cfg.qformer) if cfg.qformer is not None else None
        self.image_newline = nn.Parameter(torch.zeros(cfg.decoder.d_model)) if cfg.image_grid_pinpoints else None
        self.hook_image_embed = HookPoint()  # [n_img (NeXT: n_views), n_patch, d_model]
        self.hook_merged_embed = HookPoint()  # [batch, pos, d_model]
        self.setup()

    @classmethod
    def from_pretrained(
        cls,
        path_or_model: Any,
        *,
        dtype: torch.dtype | str = torch.float32,
        device: str | torch.device = "cpu",
        processor: Any = None,
        vision_tower: str | Path | None = None,
        device_map: str | dict | None = None,
        max_memory: dict | None = None,
        offload_folder: str | Path | None = None,
    ) -> HookedVLM:
        """Load a checkpoint in Hugging Face format, or in the original LLaVA repository layout.

        Args:
            path_or_model: A registered name (``"shapes-llava"``), a local directory in Hugging
                Face format, or an already-loaded ``transformers`` model.
            dtype: Parameter dtype (fp32, bf16 or fp16), or its name (``"float16"``).
            device: Where the model lives (without ``device_map``).
            processor: The processor to use for :meth:`prepare`; loaded from the directory when
                omitted and present there.
            vision_tower: Local CLIP directory of an original-layout checkpoint
                (``LlavaLlamaForCausalLM``, ``ShikraLlamaForCausalLM``), overriding the
                ``mm_vision_tower`` it names; nothing is ever downloaded.
            device_map: ``"auto"`` or module name → device (``"vision_encoder"``,
                ``"blocks.3"``…, GPU index, ``"cpu"`` or ``"disk"``): blocks across devices, the
                vision tower and projector with the first decoder blocks, CPU/disk offload when
                memory is short (:mod:`mmlens.models.placement`).
            max_memory: Memory per device for ``device_map="auto"`` (``{0: "20GiB", "cpu": "60GiB"}``).
            offload_folder: Directory for the weights of modules mapped to ``"disk"``.

        Raises:
            UnsupportedArchitectureError: no adapter handles the checkpoint's architecture or
                config options.
            ProcessorUnavailableError: the directory's processor cannot be built here and none
                was passed (LLaVA-OneVision's without torchvision falls back to images only).
        """
        cfg, state_dict, found_processor = load_checkpoint(
            path_or_model, dtype=dtype, with_processor=processor is None, vision_tower=vision_tower
        )
        with torch.device("meta"):
            model = cls(cfg)
        model.load_state_dict(state_dict, strict=True, assign=True)
        model.rotary.inv_freq = torch.tensor(cfg.decoder.rotary_inv_freq, dtype=torch.float32)
        model.processor = processor if processor is not None else found_processor
        return place(model, device, device_map, max_memory, offload_folder)

    def prepare(self, images: Any, text: Any, *, template: Any = "auto", mark: Any = None) -> MMInputs:
        """Images and questions → :class:`~mmlens.inputs.MMInputs` (tensors, ``groups``, ``image_grid``).

        Uses the checkpoint's own processor and tokenizer. ``template="auto"`` takes the one the
        model's family uses (``vlm_cfg.template``, set by its adapter); a name overrides it.
        Templates: ``"vicuna_v1"`` (LLaVA-1.5 with its system sentence, images padded to square
        with the processor's mean colour) and ``"llava_hf"`` (short prompt, centre crop; the
        LLaVA-NeXT/OneVision default); ``template=None`` takes full prompts. Anyres
        models (LLaVA-NeXT, LLaVA-OneVision) tile images with their processor; ``image_grid``
        then tells base-view patches, tile patches and newline slots apart. InternVL defaults to
        ``"internvl"`` (its chat template); its processor cuts tiles plus a thumbnail, and
        ``image_grid`` maps each pixel-shuffled token to its 2×2 patches' pixels. Qwen2-VL and
        Qwen2.5-VL default to ``"qwen2_vl"``; their processor resizes each image within its pixel budget
        and ``image_grid`` maps each 2×2-merged token to its pixels (``image_grid_thw`` is kept).
        """
        if self.processor is None or getattr(self.processor, "image_processor", None) is None:
            what = "no processor" if self.processor is None else f"a {type(self.processor).__name__} without an image processor"
            raise ProcessorUnavailableError(
                f"this model has {what}, so it cannot prepare images: load it from a directory that holds a "
                "saved processor (processor.save_pretrained), or pass processor=AutoProcessor.from_pretrained(...) "
                "to HookedVLM.from_pretrained."
            )
        inputs = prepare(self.processor, self.vlm_cfg, images, text, template=template, mark=mark)
        # InstructBLIP: query tokens get the patch their cross-attention reads most (models/qformer_geometry.py).
        return with_query_geometry(self, inputs) if self.qformer is not None else inputs

    def generate(
        self,
        inputs: MMInputs | Tensor | None = None,
        max_new_tokens: int = 16,
        *,
        pixel_values: Tensor | None = None,
        attention_mask: Tensor | None = None,
        input_ids: Tensor | None = None,
        fwd_hooks: list | tuple = (),
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        prune: Any = None,
        image_sizes: Tensor | None = None,
        qformer_input_ids: Int[Tensor, "batch q_pos"] | None = None,
        qformer_attention_mask: Tensor | None = None,
        rerank_every_step: bool = False,
        image_grid_thw: Int[Tensor, "n_img 3"] | None = None,
        mm_token_type_ids: Tensor | None = None,
    ) -> Int[Tensor, "batch pos_plus_new"]:
        """Greedy decoding with a KV cache; returns the prompt followed by the new tokens.

        ``prune`` (a :mod:`mmlens.pruning` policy, or a plan made by its ``plan(n_layers)``)
        prunes image tokens once at prefill; decoding then runs on a cache whose length differs
        by layer. ``rerank_every_step=True`` instead re-runs the whole sequence without a cache
        and prunes it afresh for every new token, as the released FastV and HiMAP code does
        (docs/conventions.md).

        Equal token for token to Hugging Face's greedy ``generate`` on the same checkpoint.
        ``fwd_hooks`` are active during prefill and every decoding step. ``eos_token_id`` and
        ``pad_token_id`` default to the checkpoint's. Qwen2-VL takes ``image_grid_thw`` (its
        processor's ``mm_token_type_ids`` is accepted and not needed).
        """
        input_ids, pixel_values, attention_mask, image_sizes = unpack_inputs(
            inputs, input_ids, pixel_values, attention_mask, image_sizes
        )
        return greedy_generate(
            self,
            input_ids,
            pixel_values,
            attention_mask,
            max_new_tokens=max_new_tokens,
            fwd_hooks=fwd_hooks,
            eos_token_id=self.vlm_cfg.eos_token_id if eos_token_id is None else eos_token_id,
            pad_token_id=self.vlm_cfg.pad_token_id if pad_token_id is None else pad_token_id,
            prune=prune,
            image_sizes=image_sizes,
            image_inputs=extra_image_inputs(inputs, qformer_input_ids, qformer_attention_mask, image_grid_thw),
            rerank_every_step=rerank_every_step,
        )


    def merge(
        self,
        input_ids: Int[Tensor, "batch pos"],
        pixel_values: Tensor | None,
        *,
        image_sizes: Tensor | None = None,
        decoding: bool = False,
        qformer_input_ids: Int[Tensor, "batch q_pos"] | None = None,
        qformer_attention_mask: Tensor | None = None,
        image_grid_thw: Int[Tensor, "n_img 3"] | None = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        """Token embeddings with image embeddings written into the image-placeholder slots.

        ``decoding`` marks tokens generated after a prefill: the placeholder id is then an
        ordinary token (as in Hugging Face), not a slot that needs an image.
        """
        embeds = self.hook_embed(self.embed(input_ids))
        slots = input_ids == self.vlm_cfg.image_token_index
        n_slots = int(slots.sum())
        if pixel_values is None:
            if n_slots and not decoding:
                raise ImageTokenMismatchError(
                    f"the prompt has {n_slots} image tokens but no pixel_values were given: pass the "
                    "images (model.prepare(images, text) does both)."
                )
            return self.hook_merged_embed(embeds)
        images = self.embed_images(
            pixel_values, image_sizes, qformer_input_ids=qformer_input_ids, qformer_attention_mask=qformer_attention_mask,
            image_grid_thw=image_grid_thw,
        )
        counts = [len(e) for e in images]
        if n_slots != sum(counts):
            raise ImageTokenMismatchError(
                f"the prompt has {n_slots} image tokens but the {len(images)} image(s) give {sum(counts)} "
                f"features ({counts} per image): each image needs exactly that many image tokens "
                f"(id {self.vlm_cfg.image_token_index}); build prompts with model.prepare() or the "
                "checkpoint's processor."
            )
        merged = embeds.masked_scatter(slots[..., None].to(embeds.device), torch.cat(images).to(embeds.device, embeds.dtype))
        return self.hook_merged_embed(merged)

    def forward(
        self,
        inputs: MMInputs | Tensor | None = None,
        pixel_values: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        input_ids: Tensor | None = None,
        position_ids: Int[Tensor, "*three batch pos"] | None = None,
        cache: KVCache | None = None,
        prune: Any = None,
        image_sizes: Tensor | None = None,
        stop_at_layer: int | None = None,
        vision_stage: str | None = None,
        qformer_input_ids: Int[Tensor, "batch q_pos"] | None = None,
        qformer_attention_mask: Tensor | None = None,
        image_grid_thw: Int[Tensor, "n_img 3"] | None = None,
        mm_token_type_ids: Tensor | None = None,
        pixel_values_videos: Tensor | None = None,
        video_grid_thw: Tensor | None = None,
    ) -> Float[Tensor, "batch kept_pos d_out"] | Float[Tensor, "n_views n_patch d_out"]:
        """Logits ``[batch, pos, d_vocab]``.

        Accepts ``model(inputs)`` with :class:`~mmlens.inputs.MMInputs` from :meth:`prepare`, or
        ``model(input_ids=..., pixel_values=..., attention_mask=...)``; InstructBLIP also takes
        ``qformer_input_ids`` / ``qformer_attention_mask`` (the instruction in the Q-Former's vocabulary);
        Qwen2-VL ``image_grid_thw`` (its processor's ``mm_token_type_ids`` is accepted and not needed:
        image positions are the image tokens). M-RoPE positions (``[3, batch, pos]``) follow
        Hugging Face's ``get_rope_index`` unless ``position_ids`` are given.

        ``prune`` takes a policy from :mod:`mmlens.pruning` (``Truncate``, ``FastV``, ``HiMAP``)
        or a plan made by its ``plan(n_layers)``, applied once at prefill. In ``drop`` mode the
        logits cover only the positions that remain; keep the plan to see which:
        ``plan = FastV(2, 0.5).plan(model.cfg.n_layers); model(inputs, prune=plan); plan.kept``
        maps each prune layer to the original indices kept.

        ``stop_at_layer=k`` (as TransformerLens; negative counts from the end) stops before
        decoder block ``k`` and returns the residual stream entering it, ``[batch, pos, d_model]``.

        ``vision_stage`` runs no decoder and needs only ``pixel_values`` (and anyres
        ``image_sizes``): ``"features"`` returns ``vision_encoder.hook_features``,
        ``"image_embed"`` the projector's ``hook_image_embed`` (:meth:`encode_images`).
        ``run_with_cache`` picks it when its ``names_filter`` selects only vision-tower (and
        projector) hooks.

        Raises:
            MMLensError: an unknown ``vision_stage``, one without ``pixel_values``, or
                ``stop_at_layer`` out of range.
            UnsupportedArchitectureError: videos (Qwen2-VL's ``pixel_values_videos``): only images
                are implemented.
        """
        refuse_videos(pixel_values_videos, video_grid_thw)
        image_inputs = extra_image_inputs(inputs, qformer_input_ids, qformer_attention_mask, image_grid_thw)
        if vision_stage is not None:
            return self._vision_only(inputs, pixel_values, image_sizes, vision_stage, image_inputs)
        input_ids, pixel_values, attention_mask, image_sizes = unpack_inputs(
            inputs, input_ids, pixel_values, attention_mask, image_sizes
        )
        check_token_ids(input_ids, self.cfg.d_vocab)
        decoding = cache is not None and cache.has_past
        # Hooks built from token groups check them against the prompt (not against decoding steps).
        with nullcontext() if decoding else running_on(input_ids):
            resid = self.merge(input_ids, pixel_values, image_sizes=image_sizes, decoding=decoding, **image_inputs)
            if position_ids is None and not decoding:
                position_ids = multimodal_positions(self.vlm_cfg, input_ids, attention_mask, image_inputs["image_grid_thw"])
            plan = None if decoding else as_plan(prune, self.cfg.n_layers)
            image = input_ids == self.vlm_cfg.image_token_index
            newline = None if plan is None else self.newline_slots(input_ids, image_sizes)
            return self.decode_blocks(resid, attention_mask, position_ids, cache, plan=plan, image=image,
                                      newline=newline, stop_at_layer=stop_at_layer)

    def run_with_cache(self, *model_args: Any, return_cache_object: bool = True, **kwargs: Any):
        """TransformerLens' ``run_with_cache``; a vision-only ``names_filter`` runs no decoder.

        When ``names_filter`` selects only ``vision_encoder.*`` hooks the vision tower alone runs
        (output: ``vision_encoder.hook_features``); with ``vision_projector.*`` or
        ``hook_image_embed`` also the projector (output: ``hook_image_embed``). ``pixel_values``
        alone are then enough: ``model.run_with_cache(pixel_values=px, names_filter=lambda n:
        n.startswith("vision_encoder."))``. ``device="cpu"`` gathers the cache of a model
        spread over devices on one.
        """
        stage = self.vision_stage_for(kwargs.get("names_filter"))
        if stage is not None and "vision_stage" not in kwargs:
            kwargs["vision_stage"] = stage
        return super().run_with_cache(*model_args, return_cache_object=return_cache_object, **kwargs)

    def rotary_positions(self, inputs: MMInputs) -> Int[Tensor, "*three batch pos"]:
        """The rotary positions a forward on ``inputs`` uses: ``[batch, pos]`` counting from each
        row's first real token, or for M-RoPE decoders (Qwen2-VL) ``[3, batch, pos]`` (temporal,
        height, width; :func:`~mmlens.components.mrope.mrope_positions`). Code that reruns part of
        a forward (knockout sweeps, patching) slices these along the last axis."""
        mrope = multimodal_positions(self.vlm_cfg, inputs.input_ids, inputs.attention_mask, inputs.image_grid_thw)
        return positions_from_mask(inputs.attention_mask) if mrope is None else mrope
