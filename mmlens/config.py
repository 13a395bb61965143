"""Frozen architecture configs, with TransformerLens field names.

Configs describe computation only: no training knobs, no file paths. Adapters build them from
Hugging Face configs; anything a config cannot express makes the adapter raise.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
        causal: Causal self-attention (decoder) or bidirectional (vision).
        qkv_bias: q/k/v projections carry a bias.
        o_bias: The attention output projection carries a bias.
        mlp_bias: MLP projections carry biases.
        positional_embedding_type: ``"rotary"`` or ``"none"`` (learned absolute embeddings live
            in the vision embedding, not in the blocks).
        sliding_window: Keys further back than this many positions are invisible (Mistral).
        attn_scale: Multiplier of ``q·k``; ``d_head ** -0.5`` by default.
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
    causal: bool = True
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    positional_embedding_type: str = "rotary"
    sliding_window: int | None = None
    attn_scale: float | None = None

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
    """The language decoder: a tower plus embeddings, rotary frequencies and unembedding."""

    d_vocab: int = 0
    n_ctx: int = 4096
    tie_word_embeddings: bool = False
    rotary_inv_freq: tuple[float, ...] = ()
    rotary_attention_scaling: float = 1.0
    family: str = "llama"


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
    """

    image_size: int = 336
    patch_size: int = 14
    has_cls: bool = True
    ln_pre: bool = True
    patch_bias: bool = False
    n_layers_total: int = 0
    family: str = "clip"

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def n_patches(self) -> int:
        return self.grid**2


@dataclass(frozen=True)
class ProjectorConfig:
    """The multimodal projector ``linear_2(act(linear_1(x)))``."""

    d_in: int
    d_out: int
    act_fn: str = "gelu"
    bias: bool = True


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
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def image_seq_length(self) -> int:
        """Image positions per image fed to the decoder."""
        n_tokens = self.vision.n_patches + int(self.vision.has_cls)
        # "default" drops the first position: CLS for CLIP, the first patch for SigLIP (as HF does).
        return n_tokens - int(self.vision_feature_select_strategy == "default")
