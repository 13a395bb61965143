"""The saliency flow metrics of "Unraveling the Shift" over a dataset."""

from __future__ import annotations

from collections.abc import Sequence

from tqdm.auto import tqdm

from mmlens.analysis.lens import first_token
from mmlens.analysis.saliency import SaliencyResult, saliency
from mmlens.conventions import resolve
from mmlens.data.sample import Sample
from mmlens.errors import MMLensError
from mmlens.inputs import sample_inputs

TARGETS = ("prediction", "gold")


def saliency_study(
    model,
    samples: Sequence[Sample],
    variant: str | None = None,
    *,
    target: str | None = None,
    vision_flows: str | None = None,
    template: str = "auto",
    progress: bool = True,
    convention: str = "paper",
) -> SaliencyResult:
    """:func:`~mmlens.analysis.saliency` on every sample; row ``i`` of the result is ``samples[i]``.

    Args:
        model: A :class:`~mmlens.HookedVLM`.
        samples: Dataset samples.
        variant: ``"paper"`` or ``"released_code"`` I_l (None: from ``convention``).
        target: ``"prediction"`` (the model's own prediction at ``last``) or ``"gold"`` (the first
            sub-token of the gold answer as it follows the prompt, e.g. ``▁B``; the released code
            scored the gold answer, as the bare piece ``B``, a bug not reproduced). None: from
            ``convention``.
        vision_flows: ``"mean"`` or ``"sum"`` S_vv/S_vt (None: from ``convention``).
        template: Prompt template.
        progress: Show a progress bar.
        convention: ``"paper"`` or ``"released_code"`` (docs/conventions.md); explicit options
            win. Both aggregations are returned; the convention's is
            ``resolve("saliency", convention)["aggregate"]``.

    Raises:
        MMLensError: no samples, or an unknown target.

    References: "Unraveling the Shift" §2.2, §3.1.
    """
    opts = resolve("saliency", convention, variant=variant, target=target, vision_flows=vision_flows)
    if opts["target"] not in TARGETS:
        raise MMLensError(f"target must be one of {TARGETS}, not {opts['target']!r}.")
    if not samples:
        raise MMLensError("saliency_study needs at least one sample.")
    tok = model.processor.tokenizer
    runs = []
    for s in tqdm(samples, desc="saliency", disable=not progress):
        gold = first_token(tok, s.answer) if opts["target"] == "gold" else None
        runs.append(saliency(model, sample_inputs(model, s, template), gold, opts["variant"], vision_flows=opts["vision_flows"]))
    return SaliencyResult.concat(runs)
