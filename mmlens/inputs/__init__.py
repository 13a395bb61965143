"""Model inputs: images and prompts → tensors with token groups and patch geometry.

``prepare`` renders a chat template, runs the checkpoint's processor and returns
:class:`MMInputs` (tensors, :class:`TokenGroups`, :class:`ImageGrid`); ``sample_inputs`` does the
same for a dataset :class:`~mmlens.data.sample.Sample`, adding the groups the studies use. Nothing
here imports the models: the functions that run one only duck-type it.
"""

from mmlens.inputs.mm_inputs import ImageGrid, MMInputs, prepare
from mmlens.inputs.pixels import Pixels, expand2square, process_images
from mmlens.inputs.samples import answer_without_image, greedy_answer, is_correct, sample_inputs, score
from mmlens.inputs.templates import LLAMA3_SYSTEM, LLAVA_SYSTEM, Template, get_template
from mmlens.inputs.tokens import STANDARD_GROUPS, TokenGroups, span_mask, standard_groups
from mmlens.prompts import PromptText

__all__ = [
    "LLAMA3_SYSTEM",
    "LLAVA_SYSTEM",
    "STANDARD_GROUPS",
    "ImageGrid",
    "MMInputs",
    "Pixels",
    "PromptText",
    "Template",
    "TokenGroups",
    "answer_without_image",
    "expand2square",
    "greedy_answer",
    "is_correct",
    "prepare",
    "process_images",
    "sample_inputs",
    "score",
    "span_mask",
    "standard_groups",
]
