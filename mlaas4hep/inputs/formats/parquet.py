"""Parquet files with pyarrow, local or over ``http(s)://`` (fsspec): :class:`ParquetTable`.

A Parquet file is read by row groups and only the columns asked for: the row
groups are the table's blocks, as a ROOT file's clusters, so the reader reads
each once per epoch. Columns of lists of numbers are jagged branches, and a
column of lists of records (``Muon``: ``list<struct<pt, eta>>``) a jagged
branch per field (``Muon_pt``, ``Muon_eta``), each read alone. CSV, JSON
lines and Avro files are read through a Parquet copy of theirs (see
:mod:`mlaas4hep.inputs.formats.convert`).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import awkward as ak
import numpy as np

from ...errors import BranchError, FileAccessError
from ..remote import open_options
from .arrow import branch_infos, columns_with_nulls, record_fields, split_records, to_awkward
from .extras import require
from .table import DEFAULT_TIMEOUT, BranchInfo, Table, check_local, check_ranges, step_rows

if TYPE_CHECKING:
    from ..sources import FileSource

__all__ = ["ParquetTable"]

_REMOTE_SCHEMES = ("http", "https")


def _open_remote(source: FileSource, timeout: float) -> Any:
    """A file object over HTTP(S) that fetches the byte ranges asked for, each wait bounded by ``timeout``."""
    scheme = source.path.split("://", 1)[0].lower()
    if scheme not in _REMOTE_SCHEMES:
        msg = (
            f"cannot read {source.path!r}: Parquet files are read from local paths and http(s):// URLs; "
            "copy the file here, or serve it over HTTP"
        )
        raise FileAccessError(msg)
    open_options(source.path, timeout)  # says what to install when aiohttp is missing
    fsspec = importlib.import_module("fsspec")
    aiohttp = importlib.import_module("aiohttp")
    seconds = float(timeout)
    client = {"timeout": aiohttp.ClientTimeout(total=None, sock_connect=seconds, sock_read=seconds)}
    try:
        return fsspec.filesystem(scheme, client_kwargs=client).open(source.path, "rb")
    except FileNotFoundError as err:
        msg = f"Parquet file {source.path!r} does not exist ({err})"
        raise FileAccessError(msg) from err
    except Exception as err:  # aiohttp raises its own errors, and TimeoutError
        check_ranges(source, timeout)
        msg = f"cannot open {source.path!r}: {type(err).__name__}: {err}"
        raise FileAccessError(msg) from err


class ParquetTable(Table):
    """A Parquet file read with pyarrow (see :class:`~mlaas4hep.inputs.formats.table.Table`).

    ``file`` is the :class:`pyarrow.parquet.ParquetFile`. :meth:`blocks` are
    the row groups; :meth:`arrays` reads the row groups that hold the entries
    asked for, and only the columns asked for. A column holding a missing
    value (null) raises :class:`~mlaas4hep.errors.BranchError` naming the
    file, the entry and its row group when it is read: every event needs a
    value.
    """

    def __init__(self, source: FileSource, file: Any, handle: Any = None) -> None:
        super().__init__(source)
        self.file = file
        self._handle = handle
        meta = file.metadata
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        self._offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
        self._records = record_fields(file.schema_arrow)
        self._leaves = [file.schema.column(i).path for i in range(len(file.schema))]

    @classmethod
    def open(cls, source: FileSource, timeout: float = DEFAULT_TIMEOUT, path: Path | None = None) -> ParquetTable:
        """Open ``source`` (or, given, the Parquet file ``path`` made from it), reading only its footer.

        Raises
        ------
        FileAccessError
            pyarrow is missing (the message says what to install), the file is
            missing, a directory or not Parquet, or its server did not answer.
        """
        pq = require("pyarrow.parquet", source.format)
        handle = None
        if path is not None:
            target: Any = str(path)
        elif source.is_remote:
            target = handle = _open_remote(source, timeout)
        else:
            target = str(check_local(source))
        try:
            file = pq.ParquetFile(target, pre_buffer=handle is not None)
        except Exception as err:  # pyarrow raises ArrowInvalid for bytes that are not Parquet
            if handle is not None:
                handle.close()
            check_ranges(source, timeout)
            msg = f"{source.path!r} is not a readable Parquet file: {type(err).__name__}: {err}"
            raise FileAccessError(msg) from err
        return cls(source, file, handle)

    @property
    def entries(self) -> int:
        return int(self._offsets[-1])

    def branches(self) -> list[BranchInfo]:
        """The columns as branches, but the index pandas stored beside the data (``df.to_parquet()``)."""
        schema = self.file.schema_arrow
        index = {name for name in (schema.pandas_metadata or {}).get("index_columns", []) if isinstance(name, str)}
        return [branch for branch in branch_infos(schema) if branch.name not in index]

    def blocks(self, names: Sequence[str]) -> np.ndarray | None:
        return self._offsets

    def arrays(self, names: Sequence[str], start: int, stop: int, executor: Any = None) -> ak.Array:
        first = int(np.searchsorted(self._offsets, start, side="right")) - 1
        last = max(int(np.searchsorted(self._offsets, stop, side="left")), first + 1)
        try:
            table = self.file.read_row_groups(list(range(first, last)), columns=self._columns(names), use_threads=True)
        except Exception as err:
            where = f"row groups {first}-{last - 1} (entries {self._offsets[first]}-{self._offsets[last]})"
            msg = f"cannot read {where} of {self.source.path!r}: {type(err).__name__}: {err}"
            raise FileAccessError(msg) from err
        table = table.slice(start - int(self._offsets[first]), stop - start)
        return self._events(split_records(table, names, self._records), start)

    def iterate(self, names: Sequence[str], step_size: int | str) -> Iterator[ak.Array]:
        pa = require("pyarrow", self.source.format)
        rows = step_rows(step_size, self._row_bytes(names))
        position = 0
        batches = self.file.iter_batches(batch_size=rows, columns=self._columns(names), use_threads=True)
        while True:
            try:
                batch = next(batches, None)
            except Exception as err:
                group = int(np.searchsorted(self._offsets, position, side="right")) - 1
                msg = f"cannot read row group {group} (from entry {position}) of {self.source.path!r}: {err}"
                raise FileAccessError(msg) from err
            if batch is None:
                return
            yield self._events(split_records(pa.Table.from_batches([batch]), names, self._records), position)
            position += batch.num_rows

    def _columns(self, names: Sequence[str]) -> list[str]:
        """The Parquet columns to read for the branches ``names``: a record field's own leaf, not its whole column."""
        columns: list[str] = []
        for name in names:
            path = name
            if name in self._records:
                column, inner = self._records[name]
                leaves = [p for p in self._leaves if p.startswith(f"{column}.") and p.rsplit(".", 1)[-1] == inner]
                path = min(leaves, key=len) if leaves else column  # the field's own, not one of a nested record
            if path not in columns:
                columns.append(path)
        return columns

    def _events(self, table: Any, start: int) -> ak.Array:
        """``table`` (entries from ``start`` on) as awkward arrays, refusing missing values."""
        nulls = columns_with_nulls(table)
        if nulls:
            name, row = min(nulls.items(), key=lambda item: item[1])
            entry = start + row
            group = int(np.searchsorted(self._offsets, entry, side="right")) - 1
            msg = (
                f"column {name!r} of {self.source.path!r} has a missing value (null) at entry {entry} "
                f"(row group {group}): every event needs a value; fill or drop the missing values"
            )
            raise BranchError(msg)
        return to_awkward(table)

    def _row_bytes(self, names: Sequence[str]) -> float:
        """Uncompressed bytes per row of the columns ``names`` (for steps given in bytes)."""
        meta, wanted = self.file.metadata, self._columns(names)
        total = 0
        for i in range(meta.num_row_groups):
            group = meta.row_group(i)
            for j in range(group.num_columns):
                column = group.column(j)
                if any(column.path_in_schema == w or column.path_in_schema.startswith(f"{w}.") for w in wanted):
                    total += column.total_uncompressed_size
        return total / max(self.entries, 1)

    def close(self) -> None:
        self.file.close()
        if self._handle is not None:
            self._handle.close()
