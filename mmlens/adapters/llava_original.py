"""Checkpoints in the original LLaVA repository layout (LLaVA-1.x, Shikra) → mmlens.

This is the format the papers' own code loads (``LlavaLlamaForCausalLM``,
``ShikraLlamaForCausalLM``): a Llama checkpoint with ``mm_*`` config fields and a
``model.mm_projector``, whose CLIP tower is a separate checkpoint named by ``mm_vision_tower``.
It is translated in memory into the Hugging Face ``LlavaConfig`` (``LlavaNextConfig`` for
LLaVA-1.6's ``image_aspect_ratio="anyres"`` with ``mm_patch_merge_type="spatial_unpad"``) and
state-dict layout, then converted by the LLaVA (NeXT) adapter, so both formats run the same code.

Image placeholders: LLaVA-1.x code marks the image with a sentinel id (-200) the tokenizer never
produces, but mmlens fills image slots of a token id. The tokenizer's ``<image>`` token is used
when it has one; otherwise ``<image>`` is added after the vocabulary (as the Hugging Face
conversion does) with an embedding row the merge always overwrites and a zero unembedding row,
so that token's logit is 0 and every other logit is the original model's. LLaVA-v0-style models
(Shikra) fill ``<im_patch>`` tokens, which are in their vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import transformers
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

from mmlens.adapters.original_files import clip_tower_weights, read_config, read_state_dict, resolve_vision_tower
from mmlens.adapters.registry import VLM_ADAPTERS, StateDict, lookup, reject
from mmlens.config import VLMConfig
from mmlens.errors import MMLensError, UnsupportedArchitectureError

# Architecture → how the image enters the prompt: "v1" (LLaVA-1.x: <image> sentinel expanded by the
# model) or "v0" (LLaVA-v0 / Shikra: the prompt holds one <im_patch> token per patch).
ARCHITECTURES = {"LlavaLlamaForCausalLM": "v1", "ShikraLlamaForCausalLM": "v0"}
# Architecture → the prompt template its checkpoints use (mmlens.inputs.templates); LLaVA-1.x
# checkpoints with mm_use_im_start_end wrap the image in <im_start>/<im_end> (IM_START_END_TEMPLATE).
TEMPLATES = {"LlavaLlamaForCausalLM": "vicuna_v1", "ShikraLlamaForCausalLM": "shikra"}
IM_START_END_TEMPLATE = "vicuna_v1_im_start_end"

# Config fields this module translates or checks (the Llama fields go to a LlamaConfig).
TRANSLATED = frozenset({
    "mm_vision_tower", "mm_projector_type", "mm_vision_select_layer", "mm_vision_select_feature",
    "image_aspect_ratio", "mm_use_im_start_end", "mm_patch_merge_type", "mm_hidden_size",
    "im_patch_token", "im_start_token", "im_end_token", "sep_image_conv_front", "mm_resampler_type",
    "image_grid_pinpoints", "mm_use_im_patch_token",
})
# Fields of training runs and bookkeeping; none changes an inference forward.
INERT = frozenset({
    "torch_dtype", "max_length", "max_sequence_length", "freeze_mm_mlp_adapter", "freeze_mm_vision_resampler",
    "tune_mm_mlp_adapter", "tune_mm_vision_resampler", "unfreeze_mm_vision_tower", "use_mm_proj",
    "mm_projector_lr", "mm_vision_tower_lr", "tokenizer_model_max_length", "tokenizer_padding_side",
    # Read only by image_aspect_ratio modes ("highres", "crop_split") that are refused.
    "image_crop_resolution", "image_split_resolution",
})
# Legacy rope fields LlamaConfig still accepts (turned into rope_parameters).
LEGACY_LLAMA = frozenset({"rope_theta", "rope_scaling"})

PROJECTOR_KINDS = {"linear": "linear", "mlp2x_gelu": "mlp"}
SELECT_FEATURES = {"patch": "default", "cls_patch": "full"}


@dataclass(frozen=True)
class Translated:
    """An original-layout checkpoint in Hugging Face LLaVA terms.

    Attributes:
        hf_config: The equivalent ``LlavaConfig`` or ``LlavaNextConfig`` (vocabulary grown by the
            added placeholder).
        hf_state: Weights under ``LlavaForConditionalGeneration`` (``LlavaNext…``) names.
        projector_kind: ``"mlp"`` or ``"linear"`` (which ``LlavaConfig`` cannot express).
        architecture: The original class name.
        template: The prompt template its checkpoints use (``TEMPLATES``).
        processor: Tokenizer and CLIP image processor (a bare tokenizer without the latter;
            None without a tokenizer).
    """

    hf_config: transformers.LlavaConfig | transformers.LlavaNextConfig
    hf_state: StateDict
    projector_kind: str
    architecture: str
    template: str
    processor: Any


def original_architecture(path: str | Path) -> str | None:
    """The original class a checkpoint directory names, or None for any other directory.

    Raises:
        UnsupportedArchitectureError: an original-layout class mmlens does not implement
            (e.g. ``LlavaMistralForCausalLM``, ``LlavaMptForCausalLM``).
    """
    config = Path(path) / "config.json"
    if not config.is_file():
        return None
    arch = (read_config(path).get("architectures") or [None])[0]
    if arch in ARCHITECTURES:
        return arch
    if isinstance(arch, str) and arch.startswith(("Llava", "Shikra")) and arch.endswith("ForCausalLM"):
        raise UnsupportedArchitectureError(
            f"{path}: {arch} (original LLaVA repository layout) is not supported; supported original "
            f"architectures: {sorted(ARCHITECTURES)}. Load its llava-hf conversion instead."
        )
    return None


def translate(path: str | Path, vision_tower: str | Path | None = None) -> Translated:
    """Read an original-layout checkpoint and its CLIP tower into Hugging Face LLaVA terms.

    Args:
        path: The checkpoint directory (``config.json``, weights, usually a tokenizer).
        vision_tower: Local directory of the CLIP checkpoint; by default ``mm_vision_tower``
            resolved on disk (see :func:`~mmlens.adapters.original_files.resolve_vision_tower`).

    Raises:
        UnsupportedArchitectureError: a config field or weight mmlens does not implement
            (anyres other than LLaVA-1.6's ``spatial_unpad``, resamplers, other projectors).
        UnknownNameError: the CLIP checkpoint is not on disk.
    """
    path = Path(path)
    raw = read_config(path)
    arch = raw["architectures"][0]
    _check_fields(raw, arch)
    clip_dir = resolve_vision_tower(raw.get("mm_vision_tower"), vision_tower, path)
    vision = transformers.CLIPVisionConfig.from_pretrained(clip_dir, local_files_only=True)
    if raw.get("mm_hidden_size", vision.hidden_size) != vision.hidden_size:
        raise UnsupportedArchitectureError(
            f"{arch}: mm_hidden_size={raw['mm_hidden_size']} but the vision tower in {clip_dir} is "
            f"{vision.hidden_size} wide: pass the CLIP checkpoint the model was trained with (vision_tower=...)."
        )
    tokenizer = _tokenizer(path)
    image_token, image_id = _placeholder(raw, ARCHITECTURES[arch], tokenizer)
    vocab = raw["vocab_size"]
    if image_id > vocab:
        raise MMLensError(
            f"{path}: the tokenizer gives {image_token} id {image_id}, beyond the {vocab}-row embedding; "
            "the tokenizer does not belong to this checkpoint."
        )
    n_added = int(image_id == vocab)
    text = _text_config(raw, vocab + n_added, tokenizer)
    select = SELECT_FEATURES[raw.get("mm_vision_select_feature", "patch")]
    n_patches = (vision.image_size // vision.patch_size) ** 2
    common = dict(
        vision_config=vision,
        text_config=text,
        image_token_index=image_id,
        image_seq_length=n_patches + int(select == "full"),
        projector_hidden_act="gelu",
        vision_feature_select_strategy=select,
        vision_feature_layer=raw.get("mm_vision_select_layer", -1),
        tie_word_embeddings=text.tie_word_embeddings,
    )
    anyres = raw.get("image_aspect_ratio") == "anyres"
    if anyres:
        # The LLaVA code reads each pinpoint as (width, height), Hugging Face as (height, width).
        pinpoints = [[int(h), int(w)] for w, h in raw["image_grid_pinpoints"]]
        hf_config = transformers.LlavaNextConfig(image_grid_pinpoints=pinpoints, **common)
    else:
        hf_config = transformers.LlavaConfig(**common)
    kind = PROJECTOR_KINDS[raw.get("mm_projector_type", "linear")]
    tower = clip_tower_weights(read_state_dict(clip_dir))
    state = _hf_state(read_state_dict(path), kind, tower, n_added, arch, anyres)
    processor = _processor(tokenizer, clip_dir, image_token, vision, select, hf_config)
    template = TEMPLATES[arch]
    if template == "vicuna_v1" and raw.get("mm_use_im_start_end"):
        template = IM_START_END_TEMPLATE
    return Translated(hf_config, state, kind, arch, template, processor)


def load_original(
    path: str | Path, *, vision_tower: str | Path | None, dtype: torch.dtype, with_processor: bool
) -> tuple[VLMConfig, StateDict, Any]:
    """``(config, state_dict, processor_or_None)`` of an original-layout checkpoint (see :func:`translate`)."""
    t = translate(path, vision_tower)
    adapter = lookup(VLM_ADAPTERS, _hf_class(t.hf_config).__name__, "architecture")
    cfg = adapter.config(t.hf_config)
    cfg = replace(cfg, projector=replace(cfg.projector, kind=t.projector_kind), architecture=t.architecture,
                  template=t.template)
    state = {k: v.detach().to(dtype) for k, v in adapter.weights(t.hf_state, cfg).items()}
    return cfg, state, t.processor if with_processor else None


def _check_fields(raw: dict[str, Any], arch: str) -> None:
    """Refuse unknown fields and values of known ones that mmlens does not implement."""
    llama = set(transformers.LlamaConfig().to_dict()) | LEGACY_LLAMA
    unknown = sorted(set(raw) - llama - TRANSLATED - INERT)
    if unknown:
        raise UnsupportedArchitectureError(
            f"{arch}: config field(s) {unknown} are not known to mmlens' original-LLaVA loader, which cannot "
            "tell whether they change the computation; convert the checkpoint to the Hugging Face LLaVA "
            "format or add the field in mmlens/adapters/llava_original.py with a parity test."
        )
    aspect, merge = raw.get("image_aspect_ratio"), raw.get("mm_patch_merge_type", "flat")
    if aspect == "anyres" and (merge != "spatial_unpad" or not isinstance(raw.get("image_grid_pinpoints"), list)):
        raise UnsupportedArchitectureError(
            f"{arch}: image_aspect_ratio='anyres' is supported with mm_patch_merge_type='spatial_unpad' and a "
            f"list of image_grid_pinpoints (LLaVA-1.6), not mm_patch_merge_type={merge!r} with "
            f"image_grid_pinpoints={raw.get('image_grid_pinpoints')!r}; load the llava-hf conversion instead."
        )
    reject(SimpleNamespace(**raw), {
        "mm_projector_type": lambda v: v in PROJECTOR_KINDS,
        "mm_vision_select_feature": lambda v: v in SELECT_FEATURES,
        "image_aspect_ratio": lambda v: v in ("pad", "square", "anyres"),
        # A single view (pad, square) is left as it is by both merge types.
        "mm_patch_merge_type": lambda v: v in ("flat", "spatial_unpad"),
        "sep_image_conv_front": lambda v: not v,
        "mm_resampler_type": lambda v: False,
        "mm_use_im_start_end": lambda v: isinstance(v, bool),
    }, arch)


def _tokenizer(path: Path) -> Any:
    """The checkpoint's tokenizer (pad token = unk when unset, as the LLaVA and Shikra code set it)."""
    if not any((path / f).is_file() for f in ("tokenizer_config.json", "tokenizer.json", "tokenizer.model")):
        return None
    # A Llama config stands in for config.json, which names a class transformers does not know.
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, config=transformers.LlamaConfig(), local_files_only=True)
    if tokenizer.pad_token is None and tokenizer.unk_token is not None:
        tokenizer.pad_token = tokenizer.unk_token
    return tokenizer


def _placeholder(raw: dict[str, Any], version: str, tokenizer: Any) -> tuple[str, int]:
    """The image placeholder token and its id (see the module docstring)."""
    vocab = raw["vocab_size"]
    if version == "v0":
        token = "<im_patch>"
        if tokenizer is not None:
            if token not in tokenizer.get_vocab():
                raise MMLensError(f"the tokenizer of this {raw['architectures'][0]} checkpoint has no {token} token.")
            return token, tokenizer.convert_tokens_to_ids(token)
        # The released code adds <im_patch> (then <im_start>, <im_end>) after the vocabulary.
        return token, raw.get("im_patch_token", vocab - (3 if raw.get("mm_use_im_start_end") else 1))
    token = "<image>"
    if tokenizer is None:
        return token, vocab
    if token not in tokenizer.get_vocab():
        tokenizer.add_tokens([token], special_tokens=True)
    return token, tokenizer.convert_tokens_to_ids(token)


def _text_config(raw: dict[str, Any], vocab_size: int, tokenizer: Any) -> transformers.LlamaConfig:
    """The decoder's LlamaConfig; end and padding tokens from the tokenizer when there is one."""
    llama = set(transformers.LlamaConfig().to_dict()) | LEGACY_LLAMA
    kwargs = {k: v for k, v in raw.items() if k in llama and k not in ("architectures", "model_type", "_name_or_path")}
    kwargs["vocab_size"] = vocab_size
    scaling = kwargs.pop("rope_scaling", None)  # legacy {"type", "factor"} → rope_parameters
    params = {"rope_type": "default", "rope_theta": kwargs.pop("rope_theta", 10000.0)}
    if scaling:
        params |= {k: v for k, v in scaling.items() if k != "type"} | {"rope_type": scaling.get("type", "default")}
    kwargs.setdefault("rope_parameters", params)
    if tokenizer is not None:
        kwargs["eos_token_id"], kwargs["pad_token_id"] = tokenizer.eos_token_id, tokenizer.pad_token_id
    if (kwargs.get("pad_token_id") or 0) < 0:  # Shikra's config says -1: no padding token
        kwargs["pad_token_id"] = None
    return transformers.LlamaConfig(**kwargs)


# Decoder tensors under "model." that the LLaVA adapter reads; rotary buffers of old saves are ignored.
_DECODER_PARTS = ("embed_tokens.", "layers.", "norm.")


def _hf_state(raw: StateDict, kind: str, clip: StateDict, n_added: int, arch: str, anyres: bool) -> StateDict:
    """Original names → ``LlavaForConditionalGeneration`` names (plus ``model.image_newline`` for anyres).

    Tower weights saved in the checkpoint (``model.vision_tower.vision_tower.*``: LLaVA runs that
    tuned the tower) replace the CLIP checkpoint's, as the LLaVA code's loading order does.
    """
    out: StateDict = {}
    tower = dict(clip)
    for key, value in raw.items():
        if key.startswith("model.mm_projector."):
            out[f"model.multi_modal_projector.{_projector_key(key[len('model.mm_projector.'):], kind)}"] = value
        elif key.startswith("model.vision_tower.vision_tower."):
            tower |= clip_tower_weights({key[len("model.vision_tower.vision_tower."):]: value})
        elif key.startswith("model.") and key[len("model."):].startswith(_DECODER_PARTS):
            if not key.endswith("rotary_emb.inv_freq"):
                out[f"model.language_model.{key[len('model.'):]}"] = value
        elif key == "lm_head.weight" or (anyres and key == "model.image_newline"):
            out[key] = value
        elif not key.endswith("rotary_emb.inv_freq"):
            raise UnsupportedArchitectureError(
                f"{arch}: checkpoint tensor {key!r} belongs to a module mmlens does not implement "
                "(e.g. a resampler, or LLaVA-1.6's image_newline without anyres); load a checkpoint without it."
            )
    out |= {f"model.vision_tower.{k}": v for k, v in tower.items()}
    for key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        if n_added and key in out:
            out[key] = torch.cat([out[key], out[key].new_zeros(n_added, out[key].shape[1])])
    return out


def _projector_key(rest: str, kind: str) -> str:
    """``0.weight`` → ``linear_1.weight`` (``nn.Sequential`` indices of mlp2x_gelu); ``weight`` of a linear."""
    if kind == "linear":
        return f"linear_1.{rest}"
    index, param = rest.split(".", 1)
    return f"{_MLP_LAYERS[index]}.{param}"


_MLP_LAYERS = {"0": "linear_1", "2": "linear_2"}  # nn.Sequential(Linear, GELU, Linear)


def _processor(tokenizer: Any, clip_dir: Path, image_token: str, vision: Any, select: str, hf_config: Any) -> Any:
    """A ``LlavaProcessor`` over the checkpoint's tokenizer and the CLIP directory's image processor.

    For anyres a ``LlavaNextProcessor`` whose image processor keeps the CLIP one's resolution and
    normalisation and tiles over the checkpoint's pinpoints, as LLaVA-1.6's ``process_anyres_image`` does.
    """
    if tokenizer is None or not (clip_dir / "preprocessor_config.json").is_file():
        return tokenizer
    image_processor = transformers.AutoImageProcessor.from_pretrained(clip_dir, local_files_only=True)
    processor_class = transformers.LlavaProcessor
    if isinstance(hf_config, transformers.LlavaNextConfig):
        image_processor = LlavaNextImageProcessorPil(
            size=dict(image_processor.size), crop_size=dict(image_processor.crop_size),
            image_mean=list(image_processor.image_mean), image_std=list(image_processor.image_std),
            image_grid_pinpoints=hf_config.image_grid_pinpoints,
        )
        processor_class = transformers.LlavaNextProcessor
    processor = processor_class(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=vision.patch_size,
        vision_feature_select_strategy=select,
        image_token=image_token,
        num_additional_image_tokens=1,
    )
    # LlavaProcessor prefers a tokenizer's own image_token attribute; the placeholder is ours.
    processor.image_token, processor.image_token_id = image_token, tokenizer.convert_tokens_to_ids(image_token)
    return processor


def save_hugging_face(path: str | Path, out: str | Path, *, vision_tower: str | Path | None = None) -> Path:
    """Write an original-layout checkpoint as a Hugging Face ``LlavaForConditionalGeneration`` directory.

    The weights are the translated ones :func:`translate` gives (and ``HookedVLM`` loads), so the
    written directory runs in ``transformers`` and in mmlens with the same logits; the processor
    (tokenizer with its ``<image>`` token, CLIP image processor) is saved beside them.

    Args:
        path: The original-layout checkpoint directory.
        out: The directory to write.
        vision_tower: Local CLIP directory (see :func:`translate`).

    Returns:
        ``out`` as a path.

    Raises:
        UnsupportedArchitectureError: a linear projector, which no Hugging Face LLaVA class has
            (``HookedVLM.from_pretrained`` loads such checkpoints directly).
    """
    t = translate(path, vision_tower)
    if t.projector_kind != "mlp":
        raise UnsupportedArchitectureError(
            f"{t.architecture} with a linear projector has no Hugging Face LLaVA equivalent (its projector is "
            "two linears); load the checkpoint directly with HookedVLM.from_pretrained(path, vision_tower=...)."
        )
    with torch.device("meta"):
        model = _hf_class(t.hf_config)(t.hf_config)
    model.load_state_dict(t.hf_state, strict=True, assign=True)
    model.save_pretrained(out)
    if t.processor is not None:
        t.processor.save_pretrained(out)
    return Path(out)


def _hf_class(hf_config: Any) -> type:
    """``LlavaForConditionalGeneration`` or ``LlavaNextForConditionalGeneration`` for a translated config."""
    if isinstance(hf_config, transformers.LlavaNextConfig):
        return transformers.LlavaNextForConditionalGeneration
    return transformers.LlavaForConditionalGeneration
