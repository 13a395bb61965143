"""Dataset-level studies: loops of an analysis over ``Sequence[Sample]`` returning the same kind
of result (``(model, samples, ...) -> Result``), resumable run folders and reports."""

from mmlens.studies.cam import CamHitResult, cam_hit_rate
from mmlens.studies.cliff import CliffResult, cliff_layer
from mmlens.studies.disruption import disruption_study
from mmlens.studies.evaluate import EvalResult, evaluate
from mmlens.studies.flow import FlowStudyResult, run_flow_study
from mmlens.studies.knockout import knockout_study
from mmlens.studies.patching import PatchingStudyResult, patching_study
from mmlens.studies.report import image_attention_example, write_report
from mmlens.studies.saliency import saliency_study

__all__ = [
    "CamHitResult",
    "CliffResult",
    "EvalResult",
    "FlowStudyResult",
    "PatchingStudyResult",
    "cam_hit_rate",
    "cliff_layer",
    "disruption_study",
    "evaluate",
    "image_attention_example",
    "knockout_study",
    "patching_study",
    "run_flow_study",
    "saliency_study",
    "write_report",
]
