"""Loading a checkpoint's processor, including when optional dependencies are missing.

``transformers.AutoProcessor`` builds every sub-processor a processor class declares. The
LLaVA-OneVision processor declares a video processor, which needs torchvision; without it,
``AutoProcessor`` quietly returns the bare tokenizer, which cannot prepare images. mmlens only
feeds images, so for such classes it builds the processor from its tokenizer and image
processor alone (:data:`IMAGES_ONLY`), with the processor settings saved in the checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, no_type_check

import transformers
from transformers.processing_utils import ProcessorMixin

from mmlens.errors import ProcessorUnavailableError
from mmlens.zoo.internvl_processor import InternVLImagesProcessor
from mmlens.zoo.tiny_qwen_vl import Qwen2VLImagesProcessor


class LlavaOnevisionImagesProcessor(transformers.LlavaOnevisionProcessor):
    """``LlavaOnevisionProcessor`` without its video processor: images and text only.

    Its outputs for images and text equal the full processor's; ``videos=`` is not accepted.
    Built by :func:`load_processor` when torchvision (which the video processor needs) is absent.
    """

    # transformers reads the accepted settings off ``__init__.__code__``, which a runtime
    # type-checking wrapper (the test suite's) would hide: keep this function unwrapped.
    @no_type_check
    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        num_image_tokens: int | None = None,
        vision_feature_select_strategy: str | None = None,
        chat_template: str | None = None,
        image_token: str = "<image>",
        video_token: str = "<video>",
        vision_aspect_ratio: str = "anyres_max_9",
        **kwargs: Any,
    ):
        # The parent passes video_processor=None on; without the attribute in this signature,
        # transformers neither loads nor checks a video processor.
        super().__init__(image_processor, tokenizer, None, num_image_tokens, vision_feature_select_strategy,
                         chat_template, image_token, video_token, vision_aspect_ratio, **kwargs)


# Processor class name → a class that needs only a tokenizer and an image processor.
IMAGES_ONLY: dict[str, type[ProcessorMixin]] = {
    "LlavaOnevisionProcessor": LlavaOnevisionImagesProcessor,
    "InternVLProcessor": InternVLImagesProcessor,
    # Qwen2.5-VL's processor treats images and text exactly as Qwen2-VL's.
    "Qwen2VLProcessor": Qwen2VLImagesProcessor,
    "Qwen2_5_VLProcessor": Qwen2VLImagesProcessor,
}


def load_processor(path: str) -> Any:
    """The processor saved with a local checkpoint, or None when it has none.

    Args:
        path: A local Hugging Face checkpoint directory.

    Returns:
        A ``transformers`` processor (for a class in :data:`IMAGES_ONLY` whose full build fails,
        its images-only variant); whatever ``AutoProcessor`` finds (e.g. a bare tokenizer) when
        the directory holds no image processor; None when it holds neither.

    Raises:
        ProcessorUnavailableError: the checkpoint's processor class can be built neither in full
            nor without its video part.
    """
    try:
        processor = transformers.AutoProcessor.from_pretrained(path, local_files_only=True)
    except ImportError:
        processor = None  # a sub-processor's backend is missing: try the images-only build below
    except (OSError, ValueError, TypeError, KeyError):
        if _processor_class(path) not in IMAGES_ONLY:
            return None
        processor = None  # e.g. InternVL's video processor is missing (no torchvision): images-only below
    if isinstance(processor, ProcessorMixin):
        return processor
    name = _processor_class(path)
    if name not in IMAGES_ONLY:
        return processor
    try:
        return IMAGES_ONLY[name].from_pretrained(path, local_files_only=True)
    except OSError:
        return processor  # no image processor saved: nothing more to build from
    except (ImportError, ValueError, TypeError, KeyError, AttributeError) as err:
        raise ProcessorUnavailableError(
            f"cannot build the checkpoint's {name} from {path} ({type(err).__name__}: {err}). Its video "
            "processor needs torchvision: `pip install torchvision`, or pass processor=... to "
            "HookedVLM.from_pretrained."
        ) from err


def _processor_class(path: str) -> str | None:
    """The processor class a checkpoint names (``processor_config.json``, else its model type's)."""
    saved = Path(path) / "processor_config.json"
    if saved.is_file():
        name = json.loads(saved.read_text()).get("processor_class")
        if name:
            return name
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    model_type = transformers.AutoConfig.from_pretrained(path, local_files_only=True).model_type
    return PROCESSOR_MAPPING_NAMES.get(model_type)
