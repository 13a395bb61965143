"""HookedVLM: vision encoder → projector → merge into the prompt → hooked decoder."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from mmlens.components.projector import Projector
from mmlens.config import VLMConfig
from mmlens.errors import ImageTokenMismatchError, MMLensError, ProcessorUnavailableError
from mmlens.hooks import HookPoint
from mmlens.models.anyres import n_views, pack_image
from mmlens.models.decoder import HookedDecoder, KVCache
from mmlens.models.vision_encoder import HookedVisionEncoder
from mmlens.typing import PixelValues, TokenMask

if TYPE_CHECKING:
    from mmlens.inputs import MMInputs


class HookedVLM(HookedDecoder):
    """A LLaVA-style vision-language model with TransformerLens hooks on all three towers.

    Decoder hooks carry TransformerLens' names verbatim (``blocks.3.attn.hook_pattern``); the
    vision tower's are prefixed ``vision_encoder.``, the projector's ``vision_projector.``; the
    joins are ``vision_encoder.hook_features``, ``hook_image_embed`` and ``hook_merged_embed``.

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
        self.vision_encoder = HookedVisionEncoder(
            cfg.vision, cfg.vision_feature_layer, cfg.vision_feature_select_strategy
        )
        self.vision_projector = Projector(cfg.projector)
        self.image_newline = nn.Parameter(torch.zeros(cfg.decoder.d_model)) if cfg.image_grid_pinpoints else None
        self.hook_image_embed = HookPoint()  # [n_img (NeXT: n_views), n_patch, d_model]
        self.hook_merged_embed = HookPoint()  # [batch, pos, d_model]
        self.setup()

    @classmethod
    def from_pretrained(
        cls,
        path_or_model: Any,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        processor: Any = None,
    ) -> HookedVLM:
        """Load a checkpoint in Hugging Face format.

        Args:
            path_or_model: A registered name (``"shapes-llava"``), a local directory in Hugging
                Face format, or an already-loaded ``transformers`` model.
            dtype: Parameter dtype (fp32, bf16 or fp16).
            device: Where the model lives.
            processor: The processor to use for :meth:`prepare`; loaded from the directory when
                omitted and present there.

        Raises:
            UnsupportedArchitectureError: no adapter handles the checkpoint's architecture or
                config options.
            ProcessorUnavailableError: the directory's processor cannot be built here and none
                was passed (LLaVA-OneVision's without torchvision falls back to images only).
        """
        from mmlens.adapters import load_checkpoint

        cfg, state_dict, found_processor = load_checkpoint(path_or_model, dtype=dtype, with_processor=processor is None)
        with torch.device("meta"):
            model = cls(cfg)
        model.load_state_dict(state_dict, strict=True, assign=True)
        model.rotary.inv_freq = torch.tensor(cfg.decoder.rotary_inv_freq, dtype=torch.float32)
        model.processor = processor if processor is not None else found_processor
        return model.to(device).eval()

    def prepare(self, images: Any, text: Any, *, template: Any = "vicuna_v1", mark: Any = None) -> MMInputs:
        """Images and questions → :class:`~mmlens.inputs.MMInputs` (tensors, ``groups``, ``image_grid``).

        Uses the checkpoint's own processor and tokenizer. Templates: ``"vicuna_v1"`` (LLaVA-1.5
        with its system sentence, images padded to square with the processor's mean colour) and
        ``"llava_hf"`` (short prompt, centre crop); ``template=None`` takes full prompts. Anyres
        models (LLaVA-NeXT, LLaVA-OneVision) tile images with their processor; ``image_grid``
        then tells base-view patches, tile patches and newline slots apart.
        """
        from mmlens.inputs import prepare

        if self.processor is None or getattr(self.processor, "image_processor", None) is None:
            what = "no processor" if self.processor is None else f"a {type(self.processor).__name__} without an image processor"
            raise ProcessorUnavailableError(
                f"this model has {what}, so it cannot prepare images: load it from a directory that holds a "
                "saved processor (processor.save_pretrained), or pass processor=AutoProcessor.from_pretrained(...) "
                "to HookedVLM.from_pretrained."
            )
        return prepare(self.processor, self.vlm_cfg, images, text, template=template, mark=mark)

    def generate(
        self,
        inputs: MMInputs | Int[Tensor, "batch pos"] | None = None,
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
    ) -> Int[Tensor, "batch pos_plus_new"]:
        """Greedy decoding with a KV cache; returns the prompt followed by the new tokens.

        ``prune`` (a :mod:`mmlens.pruning` policy) prunes image tokens once at prefill; decoding
        then runs on a cache whose length differs by layer.

        Equal token for token to Hugging Face's greedy ``generate`` on the same checkpoint.
        ``fwd_hooks`` are active during prefill and every decoding step. ``eos_token_id`` and
        ``pad_token_id`` default to the checkpoint's.
        """
        from mmlens.models.generate import greedy_generate

        if inputs is not None and not isinstance(inputs, Tensor):
            input_ids, pixel_values, attention_mask = inputs.input_ids, inputs.pixel_values, inputs.attention_mask
            image_sizes = getattr(inputs, "image_sizes", None)
        elif inputs is not None:
            input_ids = inputs
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
        )

    def embed_images(
        self, pixel_values: Tensor, image_sizes: Tensor | None = None
    ) -> list[Float[Tensor, "n_tokens d_model"]]:
        """Vision encoder and projector: per image, the embeddings that replace its placeholders.

        Single-view models take ``pixel_values`` ``[n_img, 3, H, W]``. Anyres models (LLaVA-NeXT,
        LLaVA-OneVision) take ``[n_img, max_views, 3, H, W]`` (or the views stacked,
        ``[n_views, 3, H, W]``) with ``image_sizes`` ``[n_img, 2]`` as (height, width);
        ``hook_image_embed`` then holds the projected features of every view, before tiles are
        un-padded (and, for OneVision, shrunk) and newline slots added.
        """
        pinpoints = self.vlm_cfg.image_grid_pinpoints
        if pinpoints is None:
            return list(self.hook_image_embed(self.vision_projector(self.vision_encoder(pixel_values))))
        if image_sizes is None:
            raise MMLensError(
                "anyres models (LLaVA-NeXT, LLaVA-OneVision) need image_sizes (height, width) for each "
                "image: use model.prepare, or pass the processor's image_sizes."
            )
        tile = self.vlm_cfg.vision.image_size
        sizes = [tuple(s) for s in torch.as_tensor(image_sizes).tolist()]
        counts = [n_views(size, pinpoints, tile) for size in sizes]
        if pixel_values.dim() == 5:
            pixel_values = torch.cat([pv[:c] for pv, c in zip(pixel_values, counts)])
        views = self.hook_image_embed(self.vision_projector(self.vision_encoder(pixel_values)))
        max_patches = self.vlm_cfg.anyres_max_patches
        return [
            pack_image(v, size, pinpoints, tile, self.image_newline, max_patches)
            for v, size in zip(views.split(counts), sizes)
        ]

    def merge(
        self,
        input_ids: Int[Tensor, "batch pos"],
        pixel_values: Tensor | None,
        *,
        image_sizes: Tensor | None = None,
        decoding: bool = False,
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
        images = self.embed_images(pixel_values, image_sizes)
        counts = [len(e) for e in images]
        if n_slots != sum(counts):
            raise ImageTokenMismatchError(
                f"the prompt has {n_slots} image tokens but the {len(images)} image(s) give {sum(counts)} "
                f"features ({counts} per image): each image needs exactly that many image tokens "
                f"(id {self.vlm_cfg.image_token_index}); build prompts with model.prepare() or the "
                "checkpoint's processor."
            )
        merged = embeds.masked_scatter(slots[..., None], torch.cat(images).to(embeds.dtype))
        return self.hook_merged_embed(merged)

    def forward(
        self,
        inputs: MMInputs | Int[Tensor, "batch pos"] | None = None,
        pixel_values: PixelValues | None = None,
        attention_mask: TokenMask | None = None,
        *,
        input_ids: Int[Tensor, "batch pos"] | None = None,
        position_ids: Int[Tensor, "batch pos"] | None = None,
        cache: KVCache | None = None,
        prune: Any = None,
        image_sizes: Tensor | None = None,
    ) -> Float[Tensor, "batch kept_pos d_vocab"]:
        """Logits ``[batch, pos, d_vocab]``.

        Accepts ``model(inputs)`` with :class:`~mmlens.inputs.MMInputs` from :meth:`prepare`, or
        ``model(input_ids=..., pixel_values=..., attention_mask=...)``.

        ``prune`` takes a policy from :mod:`mmlens.pruning` (``Truncate``, ``FastV``, ``HiMAP``),
        applied once at prefill. In ``drop`` mode the logits cover only the positions that
        remain; ``model.last_prune.kept`` maps each prune layer to the original indices kept.
        """
        if inputs is not None and not isinstance(inputs, Tensor):
            input_ids, pixel_values, attention_mask = inputs.input_ids, inputs.pixel_values, inputs.attention_mask
            image_sizes = getattr(inputs, "image_sizes", None)
        elif inputs is not None:
            input_ids = inputs
        decoding = cache is not None and cache.has_past
        resid = self.merge(input_ids, pixel_values, image_sizes=image_sizes, decoding=decoding)
        plan = None if prune is None or decoding else prune.plan(self.cfg.n_layers)
        self.last_prune = plan
        image = input_ids == self.vlm_cfg.image_token_index
        newline = None if plan is None else self.newline_slots(input_ids, image_sizes)
        return self.decode_blocks(resid, attention_mask, position_ids, cache, plan=plan, image=image, newline=newline)

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
