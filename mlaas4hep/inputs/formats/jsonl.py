"""JSON lines files with pyarrow: one record (an event) per line, its fields the branches.

A field holding a number (or ``true``/``false``) is a flat branch; a field
holding a list of numbers is a jagged branch, exactly as a jagged ROOT
branch; strings, records and lists of lists are branches that cannot become
features. Every line must hold the same fields, each with a value (not
``null``) of one type; a field that is ``null`` on every line is an
``"empty"`` branch, which the first pass skips (with a warning) unless it is
excluded. Integers beyond int64 are read as uint64, exactly (see
:func:`~mlaas4hep.inputs.formats.lines.exact_integers`). :func:`blocks`
parses a file in blocks of whole lines; :func:`explain` finds the line at
fault when a block cannot be used.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

from ...errors import BranchError, FileAccessError
from .extras import require
from .lines import exact_integers, line_blocks

__all__ = ["blocks", "explain"]


def blocks(path: Path, name: str) -> Iterator[Any]:
    """The events of the JSON lines file ``path`` (named ``name`` in messages) as Arrow tables, a block at a time.

    Raises
    ------
    FileAccessError
        A line is not a JSON record (naming the line).
    BranchError
        A line lacks a field, has one the others lack, or a field's type differs between lines (naming the line).
    """
    pa = require("pyarrow", "jsonl")
    pj = require("pyarrow.json", "jsonl")
    for data in line_blocks(path):
        if not data.strip():
            continue
        try:
            table = _parse(pa, pj, data)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
            explain(path, name, str(err))
        yield exact_integers(table, functools.partial(_parse, pa, pj, data), name)


def _parse(pa: Any, pj: Any, data: bytes, types: dict[str, Any] | None = None) -> Any:
    """The block ``data`` as an Arrow table, the fields of ``types`` of those types (the others as they come)."""
    options = pj.ParseOptions(explicit_schema=pa.schema(list(types.items()))) if types else None
    return pj.read_json(pa.BufferReader(data), parse_options=options)


def _kind(value: Any) -> str:
    """What a JSON value is: ``"a number"``, ``"a list of numbers"``, ``"a list"`` (empty)..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a record"
    inner = {_kind(v) for v in value}
    if not inner:
        return "a list"
    if len(inner) > 1 or "null" in inner:
        return f"a list holding {' and '.join(sorted(inner))}"
    return "a list of " + {"a number": "numbers", "a boolean": "booleans", "a string": "strings"}.get(
        inner.pop(), "lists or records"
    )


def _same(a: str, b: str) -> bool:
    """Whether values of kinds ``a`` and ``b`` fit one column (an empty list fits any list)."""
    return a == b or (a == "a list" and b.startswith("a list of")) or (b == "a list" and a.startswith("a list of"))


def _record(line: str, number: int, name: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except ValueError as err:
        msg = f"line {number} of {name!r} is not JSON ({err}); a JSON lines file holds one record per line"
        raise FileAccessError(msg) from err
    if not isinstance(record, dict):
        msg = f"line {number} of {name!r} is {_kind(record)}, not a record ({{...}}): a JSON lines file holds records"
        raise FileAccessError(msg)
    return record


def explain(path: Path, name: str, reason: str) -> NoReturn:
    """Raise the error that says which line of ``path`` is at fault (``reason``: what the parser said).

    Reads the file line by line: only called once a block has failed. A
    field ``null`` on every line is no fault (an ``"empty"`` branch); one
    ``null`` on some lines is, named at its first ``null``.
    """
    first: dict[str, tuple[str, int]] = {}
    nulls: dict[str, int] = {}  # the first line of each field that has been null so far
    fields: tuple[set[str], int] | None = None
    with path.open(encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            record = _record(line, number, name)
            if fields is None:
                fields = (set(record), number)
            elif set(record) != fields[0]:
                lacks, extra = sorted(fields[0] - set(record)), sorted(set(record) - fields[0])
                what = f"lacks the fields {lacks}" if lacks else f"has the fields {extra}"
                msg = f"line {number} of {name!r} {what}, unlike line {fields[1]}: every line holds the same fields"
                raise BranchError(msg)
            for key, value in record.items():
                kind = _kind(value)
                if kind == "null" and key not in first:
                    nulls.setdefault(key, number)
                    continue
                if "null" in kind or key in nulls:
                    at = nulls.get(key, number)
                    msg = f"field {key!r} is {'null' if key in nulls else kind} on line {at} of {name!r}: "
                    raise BranchError(msg + "every event needs a value")
                seen, where = first.setdefault(key, (kind, number))
                if not _same(seen, kind):
                    msg = (
                        f"field {key!r} of {name!r} is {kind} on line {number} and {seen} on line {where}: "
                        "a field holds values of one type on every line"
                    )
                    raise BranchError(msg)
                if seen == "a list" and kind != seen:
                    first[key] = (kind, number)
    msg = f"cannot read the JSON lines file {name!r}: {reason}"
    raise FileAccessError(msg)
