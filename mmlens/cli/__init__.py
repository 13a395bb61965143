"""The ``mmlens`` command line: ``mmlens flow`` runs the information-flow study; ``mmlens demo``
checks a checkpoint against Hugging Face.

:mod:`mmlens.cli.parser` reads the command line; the command bodies live in
:mod:`mmlens.cli.studies`, :mod:`mmlens.cli.evaluate` and :mod:`mmlens.cli.tools`.
``python -m mmlens.cli`` runs :func:`main` (as ``torchrun ... -m mmlens.cli`` does).
"""

from mmlens.cli.parser import UsageError, main
from mmlens.cli.tools import load_samples

__all__ = ["UsageError", "load_samples", "main"]
