"""Input formats: every file opens as a :class:`~mlaas4hep.inputs.formats.table.Table` of events, whatever its format.

==========  ==========================================  ============================  ===================
format      file names                                  read with                     extra to install
==========  ==========================================  ============================  ===================
ROOT        anything else (``.root``)                   uproot, by cluster            (always)
Parquet     ``.parquet``, ``.parq``, ``.pq``            pyarrow, by row group         ``mlaas4hep[parquet]``
CSV         ``.csv``                                    pyarrow, via a Parquet copy   ``mlaas4hep[formats]``
JSON lines  ``.jsonl``, ``.ndjson``, ``.json``          pyarrow, via a Parquet copy   ``mlaas4hep[formats]``
Avro        ``.avro``                                   fastavro, via a Parquet copy  ``mlaas4hep[avro]``
==========  ==========================================  ============================  ===================

A :class:`~mlaas4hep.inputs.sources.FileSource` knows its format from its file name,
or from ``format=``. The modules: :mod:`~mlaas4hep.inputs.formats.table` (the
contract), :mod:`~mlaas4hep.inputs.formats.root`, :mod:`~mlaas4hep.inputs.formats.parquet`
(and :mod:`~mlaas4hep.inputs.formats.arrow`, Arrow to awkward), and
:mod:`~mlaas4hep.inputs.formats.convert` with one module per format it converts
(:mod:`~mlaas4hep.inputs.formats.csv`, :mod:`~mlaas4hep.inputs.formats.jsonl`,
:mod:`~mlaas4hep.inputs.formats.avro`). Optional packages are imported in
:mod:`~mlaas4hep.inputs.formats.extras` only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .convert import CONVERTED, converted
from .parquet import ParquetTable
from .root import RootTable
from .table import DEFAULT_TIMEOUT, BranchInfo, Table

if TYPE_CHECKING:
    from ..sources import FileSource

__all__ = ["DEFAULT_TIMEOUT", "BranchInfo", "ParquetTable", "RootTable", "Table", "open_table"]


def open_table(source: FileSource, timeout: float = DEFAULT_TIMEOUT) -> Table:
    """Open ``source`` as a table of events, reading no data (a CSV, JSON lines or Avro file's first use converts it).

    Parameters
    ----------
    source : FileSource
        The file, its tree (ROOT) and its format.
    timeout : float
        Seconds to wait for a remote server, to connect and for each read.

    Raises
    ------
    FileAccessError
        The file is missing, unreadable, not of its format, or needs a package
        that is not installed (the message says what to ``pip install``).
    TreeError
        A ROOT file has no tree of that name.
    BranchError
        A CSV, JSON lines or Avro file has a missing value, or a field whose
        type differs between lines (naming the line).

    Examples
    --------
    >>> from mlaas4hep import FileSource
    >>> with open_table(FileSource("events.parquet")) as table:  # doctest: +SKIP
    ...     table.entries, [b.kind for b in table.branches()]
    (1000, ['flat', 'jagged'])
    """
    if source.format == "root":
        return RootTable.open(source, timeout)
    if source.format in CONVERTED:
        return ParquetTable.open(source, timeout, path=converted(source))
    return ParquetTable.open(source, timeout)
