"""CSV files with pyarrow: flat columns, one event per line, the first line naming the columns.

:func:`blocks` parses a file in blocks of whole lines (see
:mod:`mlaas4hep.inputs.formats.lines`); each column is a flat branch of numbers
(integers, floats, ``nan``/``inf``, or ``true``/``false``), or a string
branch. Integers beyond int64 are read as uint64, exactly (see
:func:`~mlaas4hep.inputs.formats.lines.exact_integers`). An empty field is a
missing value, which no event may have; a column whose every field is empty
is an ``"empty"`` branch, which the first pass skips (with a warning) unless
it is excluded. :func:`explain` finds the line at fault when a block cannot be used.
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

from ...errors import BranchError, FileAccessError
from .extras import require
from .lines import exact_integers, line_blocks

__all__ = ["blocks", "explain"]

_TRUE = ["true", "True", "TRUE"]
_FALSE = ["false", "False", "FALSE"]


def _options(pc: Any, types: dict[str, Any] | None = None) -> Any:
    """Only an empty field is missing: ``nan`` is a number, as Python and ROOT read it (``types``: of some columns)."""
    return pc.ConvertOptions(
        column_types=types,
        null_values=[""],
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
        true_values=_TRUE,
        false_values=_FALSE,
    )


def _parse(pa: Any, pc: Any, data: bytes, read: Any, types: dict[str, Any] | None = None) -> Any:
    """The block ``data`` as an Arrow table, the columns of ``types`` of those types."""
    return pc.read_csv(pa.BufferReader(data), read_options=read, convert_options=_options(pc, types))


def blocks(path: Path, name: str) -> Iterator[Any]:
    """The events of the CSV file ``path`` (named ``name`` in messages) as Arrow tables, a block at a time.

    Raises
    ------
    FileAccessError
        The file is empty (no header), or a line is not a CSV record of the header's fields.
    BranchError
        A column has no value on a line, or holds values of different types (naming the line).
    """
    pa = require("pyarrow", "csv")
    pc = require("pyarrow.csv", "csv")
    header: list[str] | None = None
    for data in line_blocks(path):
        read = pc.ReadOptions() if header is None else pc.ReadOptions(column_names=header)
        try:
            table = _parse(pa, pc, data, read)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
            explain(path, name, str(err))
        if header is None:
            header = list(table.column_names)
            twice = sorted({column for column in header if header.count(column) > 1})
            if twice:
                msg = f"the header line of {name!r} names the column {twice[0]!r} twice: each column needs its own name"
                raise BranchError(msg)
        mixed = _mixed(pa, table)
        if mixed:
            explain(path, name, f"the column {mixed!r} holds numbers and other values")
        yield exact_integers(table, functools.partial(_parse, pa, pc, data, read), name)
    if header is None:
        msg = f"CSV file {name!r} is empty: its first line should name the columns"
        raise FileAccessError(msg)


_NUMBER = r"^[-+]?((\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|nan|inf|infinity)$"


def _mixed(pa: Any, table: Any) -> str | None:
    """A column of strings that holds numbers (or booleans) on some lines: the values' type differs between lines."""
    compute = require("pyarrow.compute", "csv")
    for name in table.column_names:
        column = table.column(name)
        if pa.types.is_string(column.type) and len(column):
            numbers = compute.match_substring_regex(column, _NUMBER, ignore_case=True)
            booleans = compute.is_in(column, value_set=pa.array(_TRUE + _FALSE))
            typed = compute.sum(compute.or_(numbers, booleans).cast(pa.int64())).as_py() or 0
            if typed:
                return str(name)
    return None


def _kind(value: str) -> str:
    """What a field holds, as the parser sees it: ``"a number"``, ``"a boolean"``, ``"a string"`` or ``""``."""
    if value == "":
        return ""
    if value in _TRUE or value in _FALSE:
        return "a boolean"
    try:
        float(value)
    except ValueError:
        return "a string"
    return "a number"


def explain(path: Path, name: str, reason: str) -> NoReturn:
    """Raise the error that says which line of ``path`` is at fault (``reason``: what the parser said).

    Reads the file line by line: only called once a block has failed. A
    column empty on every line is no fault (an ``"empty"`` branch); one
    empty on some lines is, named at its first empty line.
    """
    with path.open(newline="", encoding="utf-8", errors="replace") as f:
        rows = csv.reader(f)
        header = next(rows, [])
        first: dict[str, tuple[str, int]] = {}
        empty: dict[str, int] = {}  # the first line of each column that has been empty so far
        for row in rows:
            line = rows.line_num
            if not row:
                continue
            if len(row) != len(header):
                fields = f"{len(row)} field{'' if len(row) == 1 else 's'}"
                msg = f"line {line} of {name!r} has {fields}, its header line {len(header)}: {','.join(row)!r}"
                raise FileAccessError(msg)
            for column, value in zip(header, row, strict=True):
                kind = _kind(value)
                if not kind and column not in first:
                    empty.setdefault(column, line)
                    continue
                if not kind or column in empty:
                    msg = (
                        f"column {column!r} has no value on line {empty.get(column, line)} of {name!r}: "
                        "every event needs one"
                    )
                    raise BranchError(msg)
                seen, where = first.setdefault(column, (kind, line))
                if seen != kind:
                    msg = (
                        f"column {column!r} of {name!r} holds {kind} on line {line} ({value!r}) and {seen} on line "
                        f"{where}: a column holds values of one type"
                    )
                    raise BranchError(msg)
    msg = f"cannot read the CSV file {name!r}: {reason}"
    raise FileAccessError(msg)
