"""The optional packages that formats other than ROOT need, imported in this one place.

Each is imported when a file first needs it (``import mlaas4hep`` stays light);
a missing one raises :class:`~mlaas4hep.errors.FileAccessError` that says the
exact ``pip install`` to run:

============  ==========================  ====================================
format        needs                       install
============  ==========================  ====================================
Parquet       pyarrow                     ``pip install 'mlaas4hep[parquet]'``
CSV           pyarrow                     ``pip install 'mlaas4hep[formats]'``
JSON lines    pyarrow                     ``pip install 'mlaas4hep[formats]'``
Avro          fastavro (and pyarrow)      ``pip install 'mlaas4hep[avro]'``
============  ==========================  ====================================

``pip install 'mlaas4hep[formats]'`` installs everything every format needs.
"""

from __future__ import annotations

import importlib
from typing import Any

from ...errors import FileAccessError

__all__ = ["EXTRAS", "require"]

EXTRAS = {"parquet": "parquet", "csv": "formats", "jsonl": "formats", "avro": "avro"}
"""The extra of ``mlaas4hep`` to install for each format."""

_WHAT = {"parquet": "Parquet files", "csv": "CSV files", "jsonl": "JSON lines files", "avro": "Avro files"}


def require(module: str, fmt: str) -> Any:
    """Import ``module`` (e.g. ``"pyarrow.parquet"``) for files of format ``fmt``, or say what to install.

    Raises
    ------
    FileAccessError
        ``module`` is not installed: ``reading Parquet files needs pyarrow: pip install 'mlaas4hep[parquet]'``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        package = module.split(".", 1)[0]
        msg = f"reading {_WHAT.get(fmt, fmt)} needs {package}: pip install 'mlaas4hep[{EXTRAS.get(fmt, 'formats')}]'"
        raise FileAccessError(msg) from err
