"""Text files of one record per line (CSV, JSON lines): blocks of whole lines of bounded size, and big integers.

:func:`line_blocks` cuts a file into blocks that pyarrow parses one at a
time; :func:`exact_integers` parses again, as uint64, the columns of
integers that pyarrow parsed as float64 because int64 cannot hold them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ...errors import BranchError
from .extras import require

__all__ = ["BLOCK_BYTES", "exact_integers", "line_blocks"]

BLOCK_BYTES = 8 * 2**20
"""Bytes of text parsed at a time (8 MiB): with its Arrow table, what converting a text file holds in memory."""


def line_blocks(path: Path, size: int | None = None) -> Iterator[bytes]:
    """The bytes of ``path`` in blocks of about ``size`` bytes (default :data:`BLOCK_BYTES`), each ending a line.

    A line longer than ``size`` makes a longer block. The last block may lack
    its final newline. Empty blocks are never yielded.
    """
    size = size or BLOCK_BYTES
    rest = b""
    with path.open("rb") as f:
        while True:
            data = f.read(size)
            if not data:
                break
            data = rest + data if rest else data
            cut = data.rfind(b"\n") + 1
            if cut == 0:  # no end of line yet: a line longer than a block
                rest = data
                continue
            rest = data[cut:]
            yield data[:cut]
    if rest:
        yield rest


def _beyond_int64(pa: Any, compute: Any, column: Any) -> bool:
    """Whether a column of float64 (or of lists of them) holds a value beyond int64: pyarrow's type for big integers."""
    t = column.type
    if pa.types.is_list(t):
        column, t = compute.list_flatten(column), t.value_type
    if not pa.types.is_float64(t) or len(column) == 0:
        return False
    extremes = compute.min_max(column)
    low, high = extremes["min"].as_py(), extremes["max"].as_py()
    return low is not None and high is not None and (low < -(2**63) or high >= 2**63)


def _typed(pa: Any, like: Any, inner: Any) -> Any:
    """``inner``, or lists of it where ``like`` is a list type."""
    return pa.list_(inner) if pa.types.is_list(like) else inner


def exact_integers(table: Any, reparse: Callable[[dict[str, Any]], Any], name: str) -> Any:
    """``table`` with its columns of integers that int64 cannot hold parsed again, as uint64: every value exact.

    pyarrow parses a column of integers as int64, and as float64 when one of
    them does not fit (above 2**63 - 1), which would round them to 53 bits:
    2**63 + 1 and 2**63 + 2 become one value. Such a column (float64 with a
    value beyond int64) is parsed again as uint64; where that fails and every
    value is still a whole number, float64 must hold them all exactly.
    Columns holding any number that is not whole stay float64, as floats.
    ``reparse(types)`` parses the same block again with the columns of
    ``types`` of those types (and raises :class:`pyarrow.ArrowException` if
    a value does not fit).

    Raises
    ------
    BranchError
        A column holds whole numbers only, some of them beyond what int64 and
        uint64 hold (above 2**64 - 1, or negative beside others above
        2**63 - 1), and float64 does not hold them all exactly.
    """
    pa = require("pyarrow", "csv")
    compute = require("pyarrow.compute", "csv")
    for column in [c for c in table.column_names if _beyond_int64(pa, compute, table.column(c))]:
        like = table.schema.field(column).type
        try:
            exact = reparse({column: _typed(pa, like, pa.uint64())}).column(column)
        except pa.ArrowException:
            _check_whole(pa, compute, reparse, column, like, name)
            continue
        table = table.set_column(table.column_names.index(column), column, exact)
    return table


def _check_whole(
    pa: Any, compute: Any, reparse: Callable[[dict[str, Any]], Any], column: str, like: Any, name: str
) -> None:
    """Raise :class:`BranchError` if ``column`` holds whole numbers only, and float64 rounds some of them."""
    decimal = pa.decimal128(38, 0)
    try:  # fails for a number that is not whole (1.5), or of more than 38 digits
        whole = reparse({column: _typed(pa, like, decimal)}).column(column)
    except pa.ArrowException:
        return
    if pa.types.is_list(like):
        whole = compute.list_flatten(whole)
    rounded = compute.cast(compute.cast(whole, pa.float64()), decimal, safe=False)
    if compute.all(compute.equal(rounded, whole)).as_py() is not False:
        return
    extremes = compute.min_max(whole)
    low, high = extremes["min"].as_py(), extremes["max"].as_py()
    msg = (
        f"column {column!r} of {name!r} holds integers from {low} to {high}, which neither int64 nor uint64 "
        "holds, and float64 would round them (to 53 bits) into fewer values: keep the integers within "
        f"0 to {2**64 - 1} (or within {-(2**63)} to {2**63 - 1}), or write them with a decimal point as floats"
    )
    raise BranchError(msg)
