"""Avro files with fastavro: records (events) of the schema the file holds, read in blocks of records.

The schema's fields are the branches: ``int``, ``long``, ``float``,
``double`` and ``boolean`` fields are flat, arrays of those jagged, exactly
as ROOT branches; strings, bytes, records, maps and enums cannot become
features. A field may be a union with ``null``, but no event may hold null.
Decoding Avro is record by record (fastavro builds a Python dict per
record), which is why a file is converted once (see :mod:`mlaas4hep.inputs.formats.convert`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

from ...errors import BranchError, FileAccessError
from .extras import require

__all__ = ["BLOCK_RECORDS", "arrow_schema", "blocks", "explain"]

BLOCK_RECORDS = 5_000
"""Records decoded at a time: with their Arrow table, what converting an Avro file holds in memory."""

_PRIMITIVES = {
    "boolean": "bool_",
    "int": "int32",
    "long": "int64",
    "float": "float32",
    "double": "float64",
    "string": "string",
    "bytes": "binary",
}
_LOGICAL: dict[str, Callable[[Any, dict[str, Any]], Any]] = {
    "timestamp-millis": lambda pa, t: pa.timestamp("ms", tz="UTC"),
    "timestamp-micros": lambda pa, t: pa.timestamp("us", tz="UTC"),
    "date": lambda pa, t: pa.date32(),
    "time-millis": lambda pa, t: pa.time32("ms"),
    "time-micros": lambda pa, t: pa.time64("us"),
    "decimal": lambda pa, t: pa.decimal128(int(t.get("precision", 38)), int(t.get("scale", 0))),
}


def _arrow_type(pa: Any, t: Any, named: dict[str, Any], where: str) -> Any:
    """The Arrow type of Avro type ``t`` (``named``: the named types defined so far; ``where``: the field)."""
    if isinstance(t, str):
        if t in _PRIMITIVES:
            return getattr(pa, _PRIMITIVES[t])()
        if t in named:
            return named[t]
        msg = f"field {where!r} has the Avro type {t!r}, which the schema does not define"
        raise FileAccessError(msg)
    if isinstance(t, list):  # a union: of one type and null, or it cannot be a column
        kinds = [k for k in t if k != "null"]
        if len(kinds) != 1:
            msg = f"field {where!r} is a union of {t}: each field must hold one type (or that type and null)"
            raise BranchError(msg)
        return _arrow_type(pa, kinds[0], named, where)
    kind, logical = t["type"], t.get("logicalType")
    if logical in _LOGICAL:
        return _LOGICAL[logical](pa, t)
    if kind == "array":
        out = pa.list_(_arrow_type(pa, t["items"], named, where))
    elif kind == "map":
        out = pa.map_(pa.string(), _arrow_type(pa, t["values"], named, where))
    elif kind == "record":
        fields = [(f["name"], _arrow_type(pa, f["type"], named, f"{where}.{f['name']}")) for f in t["fields"]]
        out = pa.struct(fields)
    elif kind == "enum":
        out = pa.string()
    elif kind == "fixed":
        out = pa.binary(int(t["size"]))
    else:
        return _arrow_type(pa, kind, named, where)
    if "name" in t:  # later fields may refer to it by its name, or its full name
        named[t["name"]] = out
        if t.get("namespace"):
            named[f"{t['namespace']}.{t['name']}"] = out
    return out


def arrow_schema(schema: Any, name: str) -> Any:
    """The Arrow schema of an Avro file's schema (a record: its fields are the columns)."""
    pa = require("pyarrow", "avro")
    if not isinstance(schema, dict) or schema.get("type") != "record":
        msg = f"the Avro schema of {name!r} is not a record (its events' fields), but {schema!r}"
        raise FileAccessError(msg)
    named: dict[str, Any] = {}
    return pa.schema([(f["name"], _arrow_type(pa, f["type"], named, f["name"])) for f in schema["fields"]])


def _reader(f: Any, name: str) -> Any:
    fastavro = require("fastavro", "avro")
    try:
        return fastavro.reader(f)
    except Exception as err:  # fastavro raises ValueError and others for what is not Avro
        msg = f"{name!r} is not a readable Avro file: {type(err).__name__}: {err}"
        raise FileAccessError(msg) from err


def blocks(path: Path, name: str) -> Iterator[Any]:
    """The events of the Avro file ``path`` (named ``name`` in messages) as Arrow tables, a block at a time.

    Raises
    ------
    FileAccessError
        fastavro is missing, the file is not Avro, or it is damaged (naming the records read before).
    BranchError
        A field is a union of several types.
    """
    pa = require("pyarrow", "avro")
    with path.open("rb") as f:
        reader = _reader(f, name)
        schema = arrow_schema(reader.writer_schema, name)
        records = iter(reader)
        done = 0
        while True:
            try:
                batch = list(itertools.islice(records, BLOCK_RECORDS))
            except Exception as err:
                msg = f"cannot read {name!r} after record {done}: {type(err).__name__}: {err}"
                raise FileAccessError(msg) from err
            if not batch:
                break
            try:
                table = pa.Table.from_pylist(batch, schema=schema)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
                msg = f"cannot convert records {done + 1}-{done + len(batch)} of {name!r}: {err}"
                raise FileAccessError(msg) from err
            done += len(batch)
            yield table
        if not done:
            yield schema.empty_table()


def explain(path: Path, name: str, reason: str) -> NoReturn:
    """Raise the error that names the record of ``path`` at fault (``reason``: what was found).

    Reads the file record by record: only called once a block has failed.
    """
    with path.open("rb") as f:
        for number, record in enumerate(_reader(f, name), 1):
            for key, value in record.items():
                if value is None or (isinstance(value, list) and any(v is None for v in value)):
                    msg = f"field {key!r} is null in record {number} of {name!r}: every event needs a value"
                    raise BranchError(msg)
    msg = f"cannot read the Avro file {name!r}: {reason}"
    raise FileAccessError(msg)
