"""Tiny random checkpoints in the original LLaVA repository layout (LLaVA-1.x, Shikra).

The layout the papers' own code loads: ``config.json`` with the Llama fields plus ``mm_*``
fields, one safetensors file with ``model.embed_tokens``, ``model.layers.*``, ``model.norm``,
``lm_head`` and ``model.mm_projector`` (``.0`` / ``.2`` for ``mlp2x_gelu``), and the CLIP tower
as a separate ``CLIPModel`` checkpoint (text tower included, as ``openai/clip-vit-*`` ship), with
its image processor. Built without downloading anything, for tests of the original-layout loader.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors.torch import save_file
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from mmlens.zoo.tiny_parts import decoder_config, randomise
from mmlens.zoo.tokenizer import CLIP_MEAN, CLIP_STD, build_tokenizer

# Shikra's tokens, added after the vocabulary in this order by its released code.
SHIKRA_TOKENS = ("<im_patch>", "<im_start>", "<im_end>")

# The name real checkpoints give their tower; tests pass the tiny tower with vision_tower=.
CLIP_NAME = "openai/clip-vit-large-patch14-336"


def original_config(text: transformers.LlamaConfig, architecture: str, **mm_fields: Any) -> dict[str, Any]:
    """A ``config.json`` as the LLaVA repository writes it (legacy rope fields, training flags)."""
    model_type = {"ShikraLlamaForCausalLM": "shikra"}.get(architecture, "llava")
    return {
        "architectures": [architecture],
        "model_type": model_type,
        "vocab_size": text.vocab_size,
        "hidden_size": text.hidden_size,
        "intermediate_size": text.intermediate_size,
        "num_hidden_layers": text.num_hidden_layers,
        "num_attention_heads": text.num_attention_heads,
        "num_key_value_heads": text.num_key_value_heads,
        "hidden_act": text.hidden_act,
        "max_position_embeddings": text.max_position_embeddings,
        "rms_norm_eps": text.rms_norm_eps,
        "rope_theta": text.rope_parameters["rope_theta"],
        "rope_scaling": None,
        "tie_word_embeddings": text.tie_word_embeddings,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "use_cache": True,
        "torch_dtype": "float32",
        "transformers_version": "4.31.0",
        "freeze_mm_mlp_adapter": False,
        "tune_mm_mlp_adapter": False,
        "use_mm_proj": True,
        **mm_fields,
    }


def save_clip_tower(vision: torch.nn.Module, directory: str | Path) -> Path:
    """Save a ``CLIPVisionModel``'s weights as a full ``CLIPModel`` checkpoint plus image processor."""
    directory = Path(directory)
    vc = vision.config
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=64,
                bos_token_id=0, eos_token_id=1, pad_token_id=1)
    clip = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vc.to_dict(), projection_dim=16))
    clip.vision_model.load_state_dict(vision.state_dict())
    clip.save_pretrained(directory)
    CLIPImageProcessorPil(
        size={"shortest_edge": vc.image_size},
        crop_size={"height": vc.image_size, "width": vc.image_size},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    ).save_pretrained(directory)
    return directory


def save_original_llava(
    hf_model: transformers.LlavaForConditionalGeneration | transformers.LlavaNextForConditionalGeneration,
    directory: str | Path,
    clip_directory: str | Path,
    *,
    tokenizer: Any = None,
    tower_in_checkpoint: bool = False,
    **mm_fields: Any,
) -> tuple[Path, Path]:
    """Write a Hugging Face LLaVA model's weights in the original layout (``mlp2x_gelu`` projector).

    A LLaVA-NeXT model is written as LLaVA-1.6 writes it: ``image_aspect_ratio="anyres"``,
    ``mm_patch_merge_type="spatial_unpad"``, pinpoints as (width, height) and ``model.image_newline``.

    Args:
        hf_model: A (tiny) ``LlavaForConditionalGeneration`` or ``LlavaNextForConditionalGeneration``.
        directory: The LLaVA checkpoint directory to write.
        clip_directory: Where its CLIP tower goes.
        tokenizer: Saved beside the weights when given.
        tower_in_checkpoint: Also store the tower under ``model.vision_tower.vision_tower.*``
            (LLaVA runs that tuned it save it so).
        mm_fields: Config fields overriding the LLaVA-1.5 ones derived from ``hf_model``.

    Returns:
        ``(directory, clip_directory)``.
    """
    directory = Path(directory)
    cfg = hf_model.config
    state = {k: v.contiguous() for k, v in hf_model.state_dict().items()}
    layers = cfg.vision_feature_layer
    fields = {
        "mm_vision_tower": CLIP_NAME,
        "mm_hidden_size": cfg.vision_config.hidden_size,
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": layers if isinstance(layers, int) else layers[0],
        "mm_vision_select_feature": {"default": "patch", "full": "cls_patch"}[cfg.vision_feature_select_strategy],
        "image_aspect_ratio": "pad",
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "mm_patch_merge_type": "flat",
    }
    if isinstance(hf_model, transformers.LlavaNextForConditionalGeneration):
        fields |= {"image_aspect_ratio": "anyres", "mm_patch_merge_type": "spatial_unpad",
                   "image_grid_pinpoints": [[w, h] for h, w in cfg.image_grid_pinpoints]}
    fields |= mm_fields
    out = {f"model.{k[len('model.language_model.'):]}": v for k, v in state.items() if k.startswith("model.language_model.")}
    for key in ("lm_head.weight", "model.image_newline"):
        if key in state:
            out[key] = state[key]
    for i, index in ((1, 0), (2, 2)):
        for p in ("weight", "bias"):
            out[f"model.mm_projector.{index}.{p}"] = state[f"model.multi_modal_projector.linear_{i}.{p}"]
    if tower_in_checkpoint:
        out |= {f"model.vision_tower.vision_tower.vision_model.{k[len('model.vision_tower.'):]}": v
                for k, v in state.items() if k.startswith("model.vision_tower.")}
    _write(directory, original_config(cfg.text_config, "LlavaLlamaForCausalLM", **fields), out, tokenizer)
    return directory, save_clip_tower(hf_model.model.vision_tower, clip_directory)


def save_tiny_linear(
    directory: str | Path,
    clip_directory: str | Path,
    *,
    architecture: str = "ShikraLlamaForCausalLM",
    seed: int = 0,
    image_size: int = 32,
    patch_size: int = 2,
    d_model: int = 64,
    n_layers: int = 2,
    vision_d_model: int = 32,
    vision_layers: int = 2,
    im_start_end: bool | None = None,
) -> tuple[Path, Path]:
    """A random checkpoint with a linear projector: Shikra (LLaVA-v0 style) or LLaVA-1.

    Shikra gets the zoo's word-level tokenizer plus ``<im_patch>``, ``<im_start>`` and
    ``<im_end>`` after it (``mm_use_im_start_end``; 256 image tokens at the default 32-px image
    with 2-px patches, as the real one has at 224 px with 14-px patches). LLaVA-1 gets the zoo
    tokenizer alone (its ``<image>`` token is the placeholder) and the ``vicuna_v1`` layout;
    ``im_start_end=True`` adds ``<im_start>`` and ``<im_end>`` to it (``mm_use_im_start_end``).

    Returns:
        ``(directory, clip_directory)``.
    """
    from mmlens.data.shapes import VOCAB_WORDS

    shikra = architecture == "ShikraLlamaForCausalLM"
    im_start_end = shikra if im_start_end is None else im_start_end
    tokenizer = build_tokenizer(VOCAB_WORDS)
    if shikra:
        tokenizer.add_tokens(list(SHIKRA_TOKENS), special_tokens=True)
    elif im_start_end:
        tokenizer.add_tokens(list(SHIKRA_TOKENS[1:]), special_tokens=True)
    torch.manual_seed(seed)
    text = decoder_config("llama", vocab_size=len(tokenizer), d_model=d_model, n_layers=n_layers, n_heads=4,
                          n_kv_heads=2, d_mlp=2 * d_model, max_position_embeddings=1024)
    vision = transformers.CLIPVisionConfig(
        hidden_size=vision_d_model, intermediate_size=2 * vision_d_model, num_hidden_layers=vision_layers,
        num_attention_heads=4, image_size=image_size, patch_size=patch_size,
    )
    lm = randomise(transformers.LlamaForCausalLM(text).eval())
    tower = randomise(transformers.CLIPVisionModel(vision).eval())
    proj = randomise(torch.nn.Linear(vision_d_model, d_model))
    state = {k: v.contiguous() for k, v in lm.state_dict().items()}
    state |= {f"model.mm_projector.{k}": v for k, v in proj.state_dict().items()}
    fields = {
        "mm_vision_tower": "openai/clip-vit-large-patch14" if shikra else CLIP_NAME,
        "mm_hidden_size": vision_d_model,
        "mm_vision_select_layer": -2,
        "mm_use_im_start_end": im_start_end,
    }
    if shikra:
        fields["sep_image_conv_front"] = False
    else:
        fields |= {"mm_projector_type": "linear", "mm_vision_select_feature": "patch", "image_aspect_ratio": "square"}
    _write(Path(directory), original_config(text, architecture, **fields), state, tokenizer)
    return Path(directory), save_clip_tower(tower, clip_directory)


def _write(directory: Path, config: dict[str, Any], state: dict[str, torch.Tensor], tokenizer: Any) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
