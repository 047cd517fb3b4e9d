"""Arrow tables as the data path sees them: each column's kind, and events as awkward arrays.

Parquet files are read into Arrow tables (and CSV, JSON lines and Avro
files are converted to Parquet through them): this module says what kind of
branch each Arrow column is (a list of numbers is ``"jagged"``, exactly as a
jagged ROOT branch; a column with no values at all, of Arrow type ``null``,
is ``"empty"``) and turns a table into the awkward record array that uproot
would give for the same events. A column of lists of records (``Muon`` of
type ``list<struct<pt, eta>>``, as ``ak.to_parquet`` writes ``ak.zip``-ped
jagged records) is one jagged branch per field of the records, named as
NanoAOD names them (``Muon_pt``, ``Muon_eta``): see :func:`record_fields`
and :func:`split_records`. Nothing here opens a file.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import awkward as ak
import numpy as np

from .extras import require
from .table import BranchInfo, fixed_kind, no_branches

__all__ = [
    "branch_infos",
    "columns_with_nulls",
    "kind_of_type",
    "record_fields",
    "required",
    "split_records",
    "to_awkward",
]


def _pa() -> Any:
    return require("pyarrow", "parquet")


def _is_list(pa: Any, t: Any) -> bool:
    return bool(pa.types.is_list(t) or pa.types.is_large_list(t))


def _is_number(pa: Any, t: Any) -> bool:
    return bool(pa.types.is_boolean(t) or pa.types.is_integer(t) or pa.types.is_floating(t))


def _dtype(t: Any) -> str:
    return str(np.dtype(t.to_pandas_dtype()).name)


def kind_of_type(t: Any) -> tuple[str, str]:
    """Classify an Arrow type into (kind, dtype), as :func:`.root.kind_of_form` does a ROOT branch."""
    pa = _pa()
    if _is_number(pa, t):
        return "flat", _dtype(t)
    if pa.types.is_null(t):  # no value on any line: a column of a CSV file whose every field is empty
        return "empty", "null"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "string", "string"
    if pa.types.is_dictionary(t):  # categories: strings, or objects
        return ("string", "string") if kind_of_type(t.value_type)[0] == "string" else ("object", "object")
    if _is_list(pa, t):
        inner = t.value_type
        if _is_number(pa, inner):
            return "jagged", _dtype(inner)
        if _is_list(pa, inner) or pa.types.is_fixed_size_list(inner):
            return "doubly-jagged", "object"
        return "object", "object"
    if pa.types.is_fixed_size_list(t):
        return _fixed_kind(pa, t)
    return "object", "object"


def _fixed_kind(pa: Any, t: Any) -> tuple[str, str]:
    """``("fixed[3]", dtype)`` for a fixed-size list of 3 numbers (nested: ``"fixed[2][3]"``), as ROOT's double[3]."""
    shape = []
    while pa.types.is_fixed_size_list(t):
        shape.append(int(t.list_size))
        t = t.value_type
    if not _is_number(pa, t) or 0 in shape:
        return "fixed-size array", "object"
    return fixed_kind(shape), _dtype(t)


def _records(pa: Any, t: Any) -> Any:
    """The struct type of the records of a column of lists of records (None for any other column)."""
    if _is_list(pa, t) and pa.types.is_struct(t.value_type) and t.value_type.num_fields:
        return t.value_type
    return None


def record_fields(schema: Any) -> dict[str, tuple[str, str]]:
    """The branches that the columns of lists of records of ``schema`` make: name -> (column, field).

    A column ``Muon`` of type ``list<struct<pt, eta>>`` makes the jagged
    branches ``Muon_pt`` and ``Muon_eta``, as NanoAOD names a collection's
    branches. A column whose branches would take a name that another column
    or branch has stays one branch, of kind ``"object"``.
    """
    pa = _pa()
    made: list[tuple[str, tuple[str, str]]] = []
    for field in schema:
        records = _records(pa, field.type)
        if records is not None:
            made.extend((f"{field.name}_{inner.name}", (field.name, inner.name)) for inner in records)
    names = Counter([*schema.names, *(name for name, _ in made)])
    clash = {column for name, (column, _) in made if names[name] > 1}
    return {name: where for name, where in made if where[0] not in clash}


def branch_infos(schema: Any) -> list[BranchInfo]:
    """The columns of an Arrow schema as branches, with their kinds, in the schema's order.

    A column of lists of records is a branch per field of the records (see
    :func:`record_fields`): ``"jagged"`` for a field of numbers, the kind of
    a list of its values for any other field.
    """
    pa = _pa()
    records = record_fields(schema)
    by_column: dict[str, list[BranchInfo]] = {}
    for name, (column, inner) in records.items():
        t = pa.list_(schema.field(column).type.value_type.field(inner).type)
        by_column.setdefault(column, []).append(BranchInfo(name, *kind_of_type(t)))
    infos = []
    for field in schema:
        infos.extend(by_column.get(field.name, [BranchInfo(field.name, *kind_of_type(field.type))]))
    return infos


def required(field: Any) -> Any:
    """``field`` declared without missing values, at every level of lists (no data changes)."""
    pa = _pa()
    t = field.type
    if pa.types.is_list(t):
        t = pa.list_(required(t.value_field))
    elif pa.types.is_large_list(t):
        t = pa.large_list(required(t.value_field))
    elif pa.types.is_fixed_size_list(t):
        t = pa.list_(required(t.value_field), t.list_size)
    return field.with_type(t).with_nullable(False)


def columns_with_nulls(table: Any) -> dict[str, int]:
    """The columns of ``table`` that hold missing values (or lists holding them): the index of the first row."""
    pa = _pa()
    compute = require("pyarrow.compute", "parquet")
    found = {}
    for name in table.column_names:
        column = table.column(name)
        missing = compute.is_null(column) if column.null_count else None
        if missing is None and (_is_list(pa, column.type) or pa.types.is_fixed_size_list(column.type)):
            inner = compute.list_flatten(column)
            if inner.null_count:  # the rows whose lists hold a missing value
                rows = compute.list_parent_indices(column)
                missing = compute.filter(rows, compute.is_null(inner))
                found[name] = int(compute.min(missing).as_py())
                continue
        if missing is not None:
            found[name] = int(compute.index(missing, True).as_py())
    return found


def _field_lists(pa: Any, column: Any, inner: str) -> Any:
    """The lists of field ``inner`` of a chunked column of lists of records, a chunk at a time (no event loop)."""
    compute = require("pyarrow.compute", "parquet")
    chunks = []
    for chunk in column.chunks:
        offsets = chunk.offsets  # of this slice of the chunk, into all of its values
        start, stop = int(offsets[0].as_py()), int(offsets[-1].as_py())
        values = compute.struct_field(chunk.values.slice(start, stop - start), inner)  # null where its record is null
        rebased = compute.subtract(offsets, pa.scalar(start, offsets.type))
        mask = chunk.is_null() if chunk.null_count else None
        chunks.append(type(chunk).from_arrays(rebased, values, mask=mask))
    if not chunks:
        t = column.type
        return pa.chunked_array(
            [], (pa.large_list if pa.types.is_large_list(t) else pa.list_)(t.value_type.field(inner).type)
        )
    return pa.chunked_array(chunks)


def split_records(table: Any, names: Sequence[str], records: Mapping[str, tuple[str, str]]) -> Any:
    """The columns ``names`` of ``table``, those of ``records`` (see :func:`record_fields`) taken from its records.

    ``table`` holds the plain columns of ``names`` and the columns of lists of
    records their fields come from (read with only those fields, or all).
    Each field's lists share the offsets (and missing lists) of its column.
    """
    if not any(name in records for name in names):
        return table
    pa = _pa()
    columns = [
        _field_lists(pa, table.column(records[name][0]), records[name][1]) if name in records else table.column(name)
        for name in names
    ]
    return pa.Table.from_arrays(columns, names=list(names))


def to_awkward(table: Any) -> ak.Array:
    """The events of an Arrow table without missing values as an awkward record array, as uproot would give them.

    Numbers stay numbers and lists of numbers lists of numbers, not option
    types (Arrow columns may hold missing values; these hold none: see
    :func:`columns_with_nulls`).
    """
    if not table.column_names:
        return no_branches(table.num_rows)
    pa = _pa()
    table = table.cast(pa.schema([required(field) for field in table.schema]))
    return ak.from_arrow(table)
