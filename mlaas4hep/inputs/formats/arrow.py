"""Arrow tables as the data path sees them: each column's kind, and events as awkward arrays.

Parquet files are read into Arrow tables (and CSV, JSON lines and Avro
files are converted to Parquet through them): this module says what kind of
branch each Arrow column is (a list of numbers is ``"jagged"``, exactly as a
jagged ROOT branch) and turns a table into the awkward record array that
uproot would give for the same events. Nothing here opens a file.
"""

from __future__ import annotations

from typing import Any

import awkward as ak
import numpy as np

from .extras import require
from .table import BranchInfo, no_branches

__all__ = ["branch_infos", "columns_with_nulls", "kind_of_type", "required", "to_awkward"]


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
        return "fixed-size array", "object"
    return "object", "object"


def branch_infos(schema: Any) -> list[BranchInfo]:
    """The columns of an Arrow schema as branches, with their kinds."""
    return [BranchInfo(field.name, *kind_of_type(field.type)) for field in schema]


def required(field: Any) -> Any:
    """``field`` declared without missing values, at every level of lists (no data changes)."""
    pa = _pa()
    t = field.type
    if pa.types.is_list(t):
        t = pa.list_(required(t.value_field))
    elif pa.types.is_large_list(t):
        t = pa.large_list(required(t.value_field))
    return field.with_type(t).with_nullable(False)


def columns_with_nulls(table: Any) -> dict[str, int]:
    """The columns of ``table`` that hold missing values (or lists holding them): the index of the first row."""
    pa = _pa()
    compute = require("pyarrow.compute", "parquet")
    found = {}
    for name in table.column_names:
        column = table.column(name)
        missing = compute.is_null(column) if column.null_count else None
        if missing is None and _is_list(pa, column.type):
            inner = compute.list_flatten(column)
            if inner.null_count:  # the rows whose lists hold a missing value
                rows = compute.list_parent_indices(column)
                missing = compute.filter(rows, compute.is_null(inner))
                found[name] = int(compute.min(missing).as_py())
                continue
        if missing is not None:
            found[name] = int(compute.index(missing, True).as_py())
    return found


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
