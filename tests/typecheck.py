"""The runtime type checker the test suite runs mmlens under (``--jaxtyping-packages`` in pyproject).

beartype with PEP 484's numeric tower, so an ``int`` satisfies a ``float`` annotation as the
annotations intend; jaxtyping checks tensor dtypes and named dimensions through it.
"""

from beartype import BeartypeConf, beartype

typecheck = beartype(conf=BeartypeConf(is_pep484_tower=True))
