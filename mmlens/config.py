"""Frozen architecture configs, with TransformerLens field names.

Configs describe computation only: no training knobs, no file paths. Adapters build them from
Hugging Face configs; anything a config cannot express makes the adapter raise.
"""

from __future__ import annotations

from dataclasses import dataclass

from mmlens.errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class TowerConfig:
    """A transformer tower: the decoder or the vision encoder.

    Attributes:
        d_model: Residual width.
        n_layers: Number of blocks that are run.
        n_heads: Query heads.
        d_head: Width of one head.
        d_mlp: MLP hidden width.
        act_fn: Name of the MLP activation (see ``components.activations``).
        n_key_value_heads: Key/value heads (grouped-query attention); ``n_heads`` when equal.
        normalization_type: ``"RMS"`` or ``"LN"``.
        eps: Norm epsilon.
        gated_mlp: SwiGLU-style ``down(act(gate(x)) * up(x))`` instead of ``fc2(act(fc1(x)))``.
        qkv_bias: q/k/v projections carry a bias.
        o_bias: The attention output projection carries a bias.
        mlp_bias: MLP projections carry biases.
        positional_embedding_type: ``"rotary"`` or ``"none"`` (learned absolute embeddings live
            in the vision embedding, not in the blocks).
        sliding_window: Keys further back than this many positions are invisible (Mistral).
        attn_scale: Multiplier of ``q·k``; ``d_head ** -0.5`` by default.
        qk_norm: RMSNorm over the whole query and key projections (all heads together), before
            the heads are split (InternViT's ``use_qk_norm``).
        qk_norm_eps: Epsilon of those norms.
    """

    d_model: int
    n_layers: int
    n_heads: int
    d_head: int
    d_mlp: int
    act_fn: str
    n_key_value_heads: int | None = None
    normalization_type: str = "RMS"
    eps: float = 1e-6
    gated_mlp: bool = True
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    positional_embedding_type: str = "rotary"
    sliding_window: int | None = None
    attn_scale: float | None = None
    qk_norm: bool = False
    qk_norm_eps: float = 1e-6

    @property
    def n_kv_heads(self) -> int:
        return self.n_key_value_heads or self.n_heads

    @property
    def scale(self) -> float:
        return self.attn_scale if self.attn_scale is not None else self.d_head**-0.5

    # ActivationCache helpers read these TransformerLens fields.
    @property
    def attn_only(self) -> bool:
        return False

    @property
    def layers_block_type(self) -> None:
        return None


@dataclass(frozen=True)
class DecoderConfig(TowerConfig):
    """The language decoder: a tower plus embeddings, rotary frequencies and unembedding.

    Attributes:
        mrope_section: Qwen2-VL's multimodal rotary (M-RoPE): how many of the ``d_head / 2``
            frequencies rotate by the temporal, height and width position (positions
            ``[3, batch, pos]``); None: 1-D rotary.
    """

    d_vocab: int = 0
    n_ctx: int = 4096
    tie_word_embeddings: bool = False
    rotary_inv_freq: tuple[float, ...] = ()
    rotary_attention_scaling: float = 1.0
    family: str = "llama"
    mrope_section: tuple[int, ...] | None = None


@dataclass(frozen=True)
class VisionConfig(TowerConfig):
    """The vision tower (CLIP or SigLIP style ViT).

    Attributes:
        image_size: Input resolution (square).
        patch_size: Patch side in pixels.
        has_cls: A CLS token is prepended (CLIP) or not (SigLIP).
        ln_pre: A LayerNorm follows the embeddings (CLIP's ``pre_layrnorm``).
        patch_bias: The patch convolution carries a bias.
        n_layers_total: Blocks in the checkpoint; only ``n_layers`` are needed for the features.
        family: ``"clip"`` or ``"siglip"``.
        ln_post: A LayerNorm follows the last block (BLIP's ``post_layernorm``, which InstructBLIP
            reads); applied to the last hidden state only.
        packed: Qwen2-VL's tower: images of any size, cut into patches by the processor and packed
            into one sequence (``pixel_values [n_patches, 3·temporal_patch_size·patch_size²]`` with
            ``image_grid_thw``); 2-D rotary positions, attention only within an image (or a window).
            ``image_size`` is then the smallest image (one image token).
        temporal_patch_size: Frames per patch (an image is repeated to fill them).
        merge_size: Side of the square of patches one image token covers (``spatial_merge_size``).
        rotary_theta: Base of the 2-D rotary frequencies of a packed tower.
        window: Qwen2.5-VL's window attention: side of a window in image tokens; None: no windows.
        full_attention_layers: Blocks that attend over the whole image when ``window`` is set
            (``fullatt_block_indexes``).
    """

    image_size: int = 336
    patch_size: int = 14
    has_cls: bool = True
    ln_pre: bool = True
    patch_bias: bool = False
    n_layers_total: int = 0
    family: str = "clip"
    ln_post: bool = False
    packed: bool = False
    temporal_patch_size: int = 1
    merge_size: int = 1
    rotary_theta: float = 10000.0
    window: int | None = None
    full_attention_layers: tuple[int, ...] = ()

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def n_patches(self) -> int:
        return self.grid**2


@dataclass(frozen=True)
class QFormerConfig(TowerConfig):
    """InstructBLIP's Q-Former: a BERT-style (post-norm) tower over learned query tokens and the
    instruction's tokens, whose query positions cross-attend to the vision features.

    Attributes:
        n_queries: Learned query tokens (= image tokens in the decoder).
        d_vocab: Q-Former (BERT) vocabulary size of the instruction tokens.
        n_ctx: Learned absolute positions of the instruction tokens.
        d_encoder: Width of the vision features the cross-attention reads.
        cross_attention_frequency: Layers ``l`` with ``l % frequency == 0`` cross-attend.
    """

    n_queries: int = 32
    d_vocab: int = 30522
    n_ctx: int = 512
    d_encoder: int = 1408
    cross_attention_frequency: int = 2

    def has_cross_attention(self, layer: int) -> bool:
        return layer % self.cross_attention_frequency == 0


@dataclass(frozen=True)
class ProjectorConfig:
    """The multimodal projector: ``linear_2(act(linear_1(x)))``, or ``linear_1(x)`` alone.

    Attributes:
        kind: ``"mlp"`` (two linears around ``act_fn``: LLaVA-1.5's ``mlp2x_gelu``),
            ``"linear"`` (one linear: LLaVA-v0, LLaVA-1 and Shikra, ``mm_projector_type="linear"``),
            ``"pixel_shuffle_mlp"`` (InternVL: pixel shuffle, LayerNorm, then the two linears)
            or ``"patch_merger"`` (Qwen2-VL: norm, ``pixel_shuffle²`` patches concatenated, two linears).
        pixel_shuffle: Side of the square of patches one image token covers (InternVL's
            ``downsample_ratio=0.5`` → 2); 1 keeps one token per patch.
        ln_eps: Epsilon of the LayerNorm of a ``"pixel_shuffle_mlp"`` projector.
        ln_type: ``"LN"`` or ``"RMS"``: the norm of a ``"patch_merger"`` projector (Qwen2-VL's
            ``merger``: norm each patch, concatenate ``pixel_shuffle²`` neighbours, two linears;
            LayerNorm in Qwen2-VL, RMSNorm in Qwen2.5-VL).
    """

    d_in: int
    d_out: int
    act_fn: str = "gelu"
    bias: bool = True
    kind: str = "mlp"
    pixel_shuffle: int = 1
    ln_eps: float = 1e-5
    ln_type: str = "LN"


@dataclass(frozen=True)
class VLMConfig:
    """A whole LLaVA-style model: towers, projector and how features are joined.

    Attributes:
        vision_feature_layer: Hidden-state index (or indices, concatenated) of the vision tower
            whose output feeds the projector, Hugging Face convention (0 = embeddings).
        vision_feature_select_strategy: ``"default"`` drops the CLS position, ``"full"`` keeps it.
        image_token_index: Token id of the image placeholder.
        architecture: Name of the Hugging Face class it was converted from.
        eos_token_id: End-of-sequence token that stops generation (from the checkpoint).
        pad_token_id: Token that fills finished rows during batched generation.
        image_grid_pinpoints: LLaVA-NeXT's candidate resolutions ``(height, width)``; None for
            single-view models (LLaVA-1.5).
        anyres_max_patches: LLaVA-OneVision's ``vision_aspect_ratio="anyres_max_N"``: the
            un-padded tile grid is shrunk (bilinear) to about N views' worth of patches when it
            holds more than 1.1² times that; None (LLaVA-NeXT) never shrinks it.
        qformer: InstructBLIP's Q-Former between the vision tower and the projector (None: the
            projector reads the vision features directly).
        tiled_views: InternVL's dynamic tiling: the processor cuts each image into a grid of
            tiles plus a thumbnail (last) and the image's tokens are the views' tokens, one view
            after another; the model needs no layout, only the geometry does.
        template: The prompt template (:mod:`mmlens.inputs.templates`) its checkpoints were
            trained with, which ``prepare`` uses unless given another; each family's adapter sets it.
    """

    decoder: DecoderConfig
    vision: VisionConfig
    projector: ProjectorConfig
    vision_feature_layer: tuple[int, ...] = (-2,)
    vision_feature_select_strategy: str = "default"
    image_token_index: int = 32000
    architecture: str = "LlavaForConditionalGeneration"
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    image_grid_pinpoints: tuple[tuple[int, int], ...] | None = None
    anyres_max_patches: int | None = None
    tiled_views: bool = False
    qformer: QFormerConfig | None = None
    template: str = "vicuna_v1"

    @property
    def image_seq_length(self) -> int:
        """Image positions per image (per view for tiled and anyres models) fed to the decoder.

        Raises:
            UnsupportedArchitectureError: a packed tower (Qwen2-VL), whose images have no fixed count.
        """
        if self.vision.packed:
            raise UnsupportedArchitectureError(
                "Qwen2-VL / Qwen2.5-VL images have no fixed number of image tokens: each image gets "
                "t·h·w / merge_size² of them for its patch grid (image_grid_thw, from the processor); "
                "the memory planner counts one image of a given size (mmlens plan --image-size WxH)."
            )
        if self.qformer is not None:
            return self.qformer.n_queries
        n_tokens = self.vision.n_patches + int(self.vision.has_cls)
        # "default" drops the first position: CLS for CLIP, the first patch for SigLIP (as HF does).
        n_tokens -= int(self.vision_feature_select_strategy == "default")
        return n_tokens // self.projector.pixel_shuffle**2

    @property
    def token_grid(self) -> int:
        """Image tokens per side of one view: the patch grid over the pixel-shuffle factor."""
        return self.vision.grid // self.projector.pixel_shuffle


def feature_indices(layers: tuple[int, ...], n_layers_total: int) -> tuple[int, ...]:
    """Hugging Face hidden-state indices (0 = embeddings, ``i`` = output of block ``i-1``,
    negatives from the end) as non-negative indices (``VLMConfig.vision_feature_layer``)."""
    return tuple(i if i >= 0 else n_layers_total + 1 + i for i in layers)
