"""CSV, JSON lines and Avro files, which cannot be read by entry range: converted once to a Parquet copy.

A chunk needs any range of entries of a file, in any order, every epoch; a
CSV, JSON lines or Avro file can only be read from its start. So the first
time such a file is opened (when a sequence is made, to learn its entries
and branches), it is read once from start to end, in blocks of bounded size
(8 MiB of text, or 5,000 Avro records), into a Parquet file in the cache
directory; from then on it is read as that Parquet copy, by row groups
(one per block) and only the columns a chunk needs.

What this costs:

* memory: one block, its Arrow table and the row group being written, while
  converting: measured, 100 to 130 MiB of peak resident memory over the
  interpreter's, whatever the file's size (16 MiB of CSV, 27 MiB of Avro,
  192 and 575 MiB of JSON lines; see ``docs/pages/formats.md``); then what
  reading Parquet costs, as for any Parquet file;
* disk: the Parquet copy, usually smaller than the text it comes from;
* time: one pass over the file, the first time it is used. A copy is found
  again by the file's absolute path, size and modification time, so later
  sequences, worker processes and later runs reuse it, and a changed file
  is converted anew.

The cache directory is ``$MLAAS4HEP_CACHE`` if set, else
``$XDG_CACHE_HOME/mlaas4hep/tables`` (``~/.cache/mlaas4hep/tables``). Copies
are written to a temporary name, then renamed: two processes converting one
file at once both finish with the same copy. Delete the directory at any
time to reclaim the space.

Every block is checked: a line that is not a record, a missing value, a
field whose type differs between lines, raise errors that name the file and
the line (or record), which the format's ``explain`` finds. A column with no
value on any line (an empty CSV column, a JSON field ``null`` on every line)
is kept as a column of Arrow type ``null``: an ``"empty"`` branch, which
the first pass skips unless it is excluded. Integer columns of blocks widen
to int64, or to uint64 where a block holds integers beyond int64, and to
float64 beside numbers that are not whole; a value the wider type cannot
hold exactly raises :class:`~mlaas4hep.errors.BranchError` naming the column.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ...errors import BranchError, FileAccessError
from ..sources import KINDS
from . import avro, csv, jsonl
from .arrow import columns_with_nulls
from .extras import require
from .table import check_local

if TYPE_CHECKING:
    from ..sources import FileSource

__all__ = ["CACHE_ENV", "CONVERTED", "cache_dir", "converted"]

log = logging.getLogger(__name__)

CACHE_ENV = "MLAAS4HEP_CACHE"
"""The environment variable naming the directory of the Parquet copies."""

CONVERTED: dict[str, ModuleType] = {"csv": csv, "jsonl": jsonl, "avro": avro}
"""The formats read through a Parquet copy, and the module that reads each."""

_VERSION = 1  # of the conversion: a new one makes new copies
_LOCK = threading.Lock()
_CONVERTING: dict[Path, threading.Lock] = {}


def cache_dir() -> Path:
    """Where the Parquet copies go: ``$MLAAS4HEP_CACHE``, else ``$XDG_CACHE_HOME/mlaas4hep/tables``."""
    given = os.environ.get(CACHE_ENV)
    if given:
        return Path(given)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mlaas4hep" / "tables"


def converted(source: FileSource) -> Path:
    """The Parquet copy of ``source`` (a local CSV, JSON lines or Avro file), made now if there is none yet.

    Raises
    ------
    FileAccessError
        The file is remote, missing or unreadable, or a line (record) is not one.
    BranchError
        A value is missing, or a field's type differs between lines (naming the line).
    """
    if source.is_remote:
        msg = (
            f"cannot read {source.path!r}: {KINDS[source.format]} files are read from local paths only "
            "(ROOT and Parquet files also from servers); copy it here"
        )
        raise FileAccessError(msg)
    path = check_local(source)
    stat = path.stat()
    # the change time too: a rewrite that keeps the size and sets the modification time back is another file
    key = f"{_VERSION}\0{source.format}\0{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\0{stat.st_ctime_ns}"
    target = cache_dir() / f"{path.name}.{hashlib.sha256(key.encode()).hexdigest()[:20]}.parquet"
    if target.exists():
        return target
    with _LOCK:
        lock = _CONVERTING.setdefault(target, threading.Lock())
    with lock:  # one thread converts, the others wait for its copy
        if not target.exists():
            try:
                _convert(source, path, target)
            except PermissionError as err:
                msg = (
                    f"cannot write the Parquet copy of {source.path!r} into the cache {os.fspath(target.parent)!r} "
                    f"({err.strerror}): set {CACHE_ENV} to a directory you can write to"
                )
                raise FileAccessError(msg) from err
    return target


def _convert(source: FileSource, path: Path, target: Path) -> None:
    """Write ``target`` from ``path``, reading it again with wider types when a later block needs them."""
    reader = CONVERTED[source.format]
    schema = None
    for _ in range(100):  # each new try widens a column's type (integers to floats): a few at most
        try:
            rows = _write(source, reader.blocks(path, source.path), target, schema, path)
        except _Widen as widen:
            log.info("reading %s again, with the types %s", source.path, widen.schema)
            schema = widen.schema
            continue
        log.info("converted %s to %s: %d events", source.path, target, rows)
        return
    msg = f"cannot settle the column types of {source.path!r}"
    raise FileAccessError(msg)


class _Widen(Exception):
    def __init__(self, schema: Any) -> None:
        super().__init__(str(schema))
        self.schema = schema


def _write(source: FileSource, blocks: Iterator[Any], target: Path, schema: Any, path: Path) -> int:
    """Write the tables of ``blocks`` as row groups of one Parquet file, checked and cast to ``schema``."""
    pq = require("pyarrow.parquet", source.format)
    pa = require("pyarrow", source.format)
    reader, name = CONVERTED[source.format], source.path
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    writer = None
    rows = 0
    try:
        for table in blocks:
            if schema is None:
                schema = _settled(pa, table.schema)
            table = _fit(pa, table, schema, reader, path, name)
            nulls = {
                c: row for c, row in columns_with_nulls(table).items() if not pa.types.is_null(schema.field(c).type)
            }
            if nulls:  # a column empty on every line so far is of type null, all missing: no fault
                reader.explain(path, name, f"the column {min(nulls, key=nulls.__getitem__)!r} has missing values")
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)
            rows += table.num_rows
        if writer is None:  # no events at all
            writer = pq.ParquetWriter(tmp, schema if schema is not None else pa.schema([]))
        writer.close()
        writer = None
        os.replace(tmp, target)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    return rows


def _settled(pa: Any, schema: Any) -> Any:
    """``schema`` with lists that only ever were empty (lists of null) as lists of float64."""
    return pa.schema([field.with_type(_unify(pa, field.type, field.type) or field.type) for field in schema])


def _unify(pa: Any, target: Any, got: Any, inner: bool = False) -> Any:
    """The type that holds values of ``target`` and ``got`` (None: none does; numbers widen to float64).

    Integers widen to int64, or uint64 beside uint64 (integers beyond int64).
    Null (no value yet) is a column's type until a block gives it another;
    the values of lists (``inner``) that only ever were empty are float64.
    """
    if pa.types.is_list(target) and pa.types.is_list(got):
        values = _unify(pa, target.value_type, got.value_type, inner=True)
        return None if values is None else pa.list_(values)
    if pa.types.is_null(got) and pa.types.is_null(target):
        return pa.float64() if inner else target  # an empty list's values; a column empty so far
    if pa.types.is_null(got):
        return target
    if pa.types.is_null(target):
        return got
    if target == got:
        return target
    if pa.types.is_integer(target) and pa.types.is_integer(got):
        unsigned = pa.types.is_unsigned_integer(target) or pa.types.is_unsigned_integer(got)
        return pa.uint64() if unsigned else pa.int64()
    if all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in (target, got)):
        return pa.float64()
    return None


def _fit(pa: Any, table: Any, schema: Any, reader: ModuleType, path: Path, name: str) -> Any:
    """``table`` cast to ``schema``; raises :class:`_Widen` when ``schema`` must widen to hold it."""
    if table.column_names != schema.names:
        if set(table.column_names) != set(schema.names):
            differ = sorted(set(table.column_names) ^ set(schema.names))
            reader.explain(path, name, f"the columns {differ} are not on every line")
        table = table.select(schema.names)
    fields = []
    for field, column in zip(schema, table.columns, strict=True):
        wide = _unify(pa, field.type, column.type)
        if wide is None:
            reader.explain(path, name, f"the column {field.name!r} holds {column.type} and {field.type}")
        fields.append(field.with_type(wide))
    fitted = pa.schema(fields)
    if not fitted.equals(schema):
        raise _Widen(fitted)
    columns = []
    for field, column in zip(schema, table.columns, strict=True):
        try:  # a safe cast: refuses what the type cannot hold exactly
            columns.append(column.cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
            msg = (
                f"column {field.name!r} of {name!r} holds {column.type} values that {field.type}, the type its "
                f"values on other lines need, cannot hold exactly ({err}): negative integers beside integers "
                "above 2**63 - 1, or integers beyond 2**53 beside numbers that are not whole"
            )
            raise BranchError(msg) from err
    return pa.Table.from_arrays(columns, schema=schema)
