"""What TransformerLens' analysis code reads from a model, on the hooked models.

``transformer_lens.patching`` (``get_act_patch_resid_pre`` and the other ``get_act_patch_*``)
and similar helpers read ``model.cfg.device``, ``model.cfg.n_heads`` / ``n_layers`` /
``n_key_value_heads``, ``model.tokenizer`` and ``model.to_tokens`` / ``to_str_tokens``, call
``model.run_with_hooks(tokens, ...)`` and read ``tokens.shape``. A vision-language prompt is not
a tensor of ids, so here the "tokens" are an :class:`~mmlens.inputs.MMInputs`: it carries the
images with the ids, its ``shape`` is the ids' ``[batch, pos]``, and the model runs on it.

Example:
    >>> from transformer_lens import patching  # doctest: +SKIP
    >>> clean, corrupt = model.to_tokens(text, image), model.to_tokens(text, other_image)  # doctest: +SKIP
    >>> _, cache = model.run_with_cache(clean)  # doctest: +SKIP
    >>> patching.get_act_patch_resid_pre(model, corrupt, cache, metric)  # [layer, pos]  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mmlens.config import DecoderConfig
from mmlens.errors import MMLensError
from mmlens.inputs import MMInputs


@dataclass(frozen=True)
class RunConfig(DecoderConfig):
    """A :class:`~mmlens.config.DecoderConfig` plus the run-time field TransformerLens reads.

    Attributes:
        device: Where the model's parameters are (``"cpu"``, ``"cuda:0"``); kept current by
            :class:`TransformerLensCompat` as the model moves.
    """

    device: str = "cpu"


def with_device(cfg: DecoderConfig, device: str) -> RunConfig:
    """``cfg`` as a :class:`RunConfig` on ``device`` (the same object when nothing changes)."""
    if isinstance(cfg, RunConfig) and cfg.device == device:
        return cfg
    fields = {k: v for k, v in vars(cfg).items() if k != "device"}
    return RunConfig(**fields, device=device)


class TransformerLensCompat:
    """Mixin of :class:`~mmlens.models.decoder.HookedDecoder`: TransformerLens' model attributes.

    ``cfg`` is the decoder's config with ``device`` (the device of the first parameter);
    ``tokenizer`` is the processor's; ``to_tokens`` makes the "tokens" that
    ``run_with_hooks`` / ``run_with_cache`` and ``transformer_lens.patching`` take: token ids for
    text alone, :class:`~mmlens.inputs.MMInputs` when there is an image.
    """

    @property
    def cfg(self) -> RunConfig:
        cfg = self.__dict__["_run_cfg"]
        param = next(self.parameters(), None)  # type: ignore[attr-defined]
        device = str(param.device) if param is not None else "cpu"
        if cfg.device != device:
            cfg = with_device(cfg, device)
            self.__dict__["_run_cfg"] = cfg
        return cfg

    @cfg.setter
    def cfg(self, value: DecoderConfig) -> None:
        self.__dict__["_run_cfg"] = with_device(value, getattr(value, "device", "cpu"))

    @property
    def tokenizer(self) -> Any:
        """The processor's tokenizer (None without a processor)."""
        processor = getattr(self, "processor", None)
        return getattr(processor, "tokenizer", processor if hasattr(processor, "convert_ids_to_tokens") else None)

    def _require_tokenizer(self) -> Any:
        tok = self.tokenizer
        if tok is None:
            raise MMLensError(
                "this model has no tokenizer: load it from a directory that holds the processor, or set "
                "model.processor (e.g. AutoProcessor.from_pretrained(...)); or pass token ids / MMInputs directly."
            )
        return tok

    def to_tokens(self, input: Any, image: Any = None, *, template: str = "auto") -> MMInputs | Tensor:
        """The "tokens" of a prompt, as TransformerLens' ``to_tokens``.

        Args:
            input: Text (or a list of texts), an :class:`~mmlens.inputs.MMInputs` (returned as
                is) or a dataset :class:`~mmlens.data.sample.Sample` (prepared with ``template``).
            image: The image(s) of the text; with one, the result is ``model.prepare(image, input)``.
            template: Prompt template for images and samples; ``"auto"``: the model family's.

        Returns:
            :class:`~mmlens.inputs.MMInputs` (an image, a sample) or ``[batch, pos]`` token ids
            (text alone, the tokenizer's special tokens included).

        Raises:
            MMLensError: text without a tokenizer.
        """
        from mmlens.data.sample import Sample
        from mmlens.inputs import sample_inputs

        if isinstance(input, MMInputs):
            return input
        if isinstance(input, Sample):
            return sample_inputs(self, input, template)
        if image is not None:
            return self.prepare(image, input, template=template)  # type: ignore[attr-defined]
        tok = self._require_tokenizer()
        texts = [input] if isinstance(input, str) else list(input)
        return tok(texts, return_tensors="pt", padding=True)["input_ids"]

    def to_str_tokens(self, input: Any, image: Any = None, *, template: str = "auto") -> list[str] | list[list[str]]:
        """Token strings of a prompt (image tokens appear as the image placeholder token).

        Args:
            input: As :meth:`to_tokens`, or token ids ``[pos]`` / ``[batch, pos]``.
            image: As :meth:`to_tokens`.
            template: As :meth:`to_tokens`.

        Returns:
            One list of strings, or one per row for a batch of several prompts.
        """
        ids = input if isinstance(input, Tensor) else self.to_tokens(input, image, template=template)
        ids = ids.input_ids if isinstance(ids, MMInputs) else ids
        tok = self._require_tokenizer()
        rows = [tok.convert_ids_to_tokens(r.tolist()) for r in torch.atleast_2d(ids)]
        return rows[0] if len(rows) == 1 else rows

    def to_string(self, tokens: Any) -> str | list[str]:
        """Decoded text of token ids (``[pos]`` → a string, ``[batch, pos]`` → one per row)."""
        ids = tokens.input_ids if isinstance(tokens, MMInputs) else torch.as_tensor(tokens)
        tok = self._require_tokenizer()
        if ids.dim() == 1:
            return tok.decode(ids.tolist())
        return [tok.decode(r.tolist()) for r in ids]

