"""A table of events: what the data path needs of an input file, whatever its format.

A :class:`Table` is one opened file: its entries and branches (known without
reading data), its events in steps of bounded size (the first pass), any
entry range of some of its branches (the chunks), and the natural blocks to
read whole (ROOT clusters, Parquet row groups), so that the reader
decompresses each block once per epoch. :mod:`mlaas4hep.inputs.formats` opens one
for a :class:`~mlaas4hep.inputs.sources.FileSource` of any format.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import awkward as ak
import numpy as np

from ...errors import FileAccessError
from ..remote import serves_ranges
from ..sources import KINDS

if TYPE_CHECKING:
    from types import TracebackType

    from ..sources import FileSource

__all__ = [
    "DEFAULT_TIMEOUT",
    "BranchInfo",
    "Table",
    "check_local",
    "check_ranges",
    "fixed_kind",
    "no_branches",
    "step_rows",
]

DEFAULT_TIMEOUT = 30.0
"""Seconds to wait for a remote server, to connect and for each read."""

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40})
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([a-zA-Z]*)\s*$")


@dataclass(frozen=True)
class BranchInfo:
    """What a branch holds, as far as turning it into features goes.

    ``kind`` is ``"flat"`` (one number per event), ``"jagged"`` (a variable-length
    list of numbers per event), or why it cannot be used: ``"string"``,
    ``"doubly-jagged"``, ``"object"``, ``"fixed-size array"``, or ``"empty"``
    (a column with no value at all: a CSV column whose every field is empty).
    A column of a Parquet, CSV, JSON lines or Avro file is a branch too: a
    list field is jagged, as a jagged ROOT branch, and each field of a column
    of lists of records is a branch of its own (``Muon_pt``).
    """

    name: str
    kind: str
    dtype: str


class Table(abc.ABC):
    """One input file opened for reading: its events as a table of named branches (columns).

    Every implementation reads no data to tell :attr:`entries` and
    :meth:`branches`, and returns events as awkward record arrays whose fields
    are the branches asked for (flat branches as numbers, jagged ones as lists
    of numbers), exactly as uproot reads a ROOT file. A table is used by one
    thread at a time; :meth:`close` (or leaving a ``with`` block) closes it.

    Examples
    --------
    >>> from mlaas4hep.inputs.formats import open_table
    >>> with open_table(FileSource("events.parquet")) as table:  # doctest: +SKIP
    ...     first = table.arrays(["MET_pt", "Jet_pt"], 0, 100)
    """

    def __init__(self, source: FileSource) -> None:
        self.source = source

    @property
    @abc.abstractmethod
    def entries(self) -> int:
        """Number of events (rows) in the file."""

    @abc.abstractmethod
    def branches(self) -> list[BranchInfo]:
        """The top-level branches (columns) with their kinds, in the file's order."""

    @property
    def uuid(self) -> str | None:
        """A unique identifier the file records (a ROOT file's UUID), or None."""
        return None

    @abc.abstractmethod
    def iterate(self, names: Sequence[str], step_size: int | str) -> Iterator[ak.Array]:
        """Every entry of ``names``, in order, in steps of ``step_size`` events or bytes (``"100 MB"``)."""

    @abc.abstractmethod
    def arrays(self, names: Sequence[str], start: int, stop: int, executor: Any = None) -> ak.Array:
        """Entries ``[start, stop)`` of the branches ``names``, as one record array.

        ``executor`` is what :meth:`make_executor` made (None if it makes nothing).
        """

    def blocks(self, names: Sequence[str]) -> np.ndarray | None:
        """Entry numbers where every branch of ``names`` starts a new block to read whole (None: no such blocks).

        The first is 0 and the last :attr:`entries`. Reading from one block
        boundary to another decompresses nothing twice.
        """
        return None

    def make_executor(self) -> Any:
        """An executor that :meth:`arrays` decompresses on, shared by the tables of one reader (None: none)."""
        return None

    @property
    def decompressed_seconds(self) -> float:
        """Seconds this table spent decompressing in its own thread so far (not on :meth:`make_executor`'s)."""
        return 0.0

    @abc.abstractmethod
    def close(self) -> None:
        """Close the file."""

    def __enter__(self) -> Table:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def fixed_kind(shape: Sequence[int]) -> str:
    """The kind of a fixed-size array of numbers of ``shape`` (ROOT's ``double[2][3]``, nested Arrow fixed-size lists).

    Examples
    --------
    >>> fixed_kind((2, 3))
    'fixed[2][3]'
    """
    return "fixed" + "".join(f"[{int(n)}]" for n in shape)


def step_rows(step_size: int | str, bytes_per_row: float) -> int:
    """Events per step: ``step_size`` itself, or a size such as ``"100 MB"`` over ``bytes_per_row``."""
    if isinstance(step_size, (int, np.integer)) and not isinstance(step_size, bool):
        return max(1, int(step_size))
    match = _SIZE.match(str(step_size))
    unit = match[2].lower() if match else ""
    if match is None or unit not in _UNITS:
        msg = f"step_size must be a number of events or a size such as '100 MB', got {step_size!r}"
        raise ValueError(msg)
    return max(1, int(float(match[1]) * _UNITS[unit] / max(bytes_per_row, 1.0)))


def no_branches(n: int) -> ak.Array:
    """A record array of ``n`` events and no fields (what reading no branch gives)."""
    return ak.Array(ak.contents.RecordArray([], [], length=n))


def check_local(source: FileSource) -> Path:
    """The path of a local ``source``, raising :class:`FileAccessError` if it is missing or a directory."""
    kind = KINDS.get(source.format, source.format)
    path = Path(source.local_path)
    if path.is_dir():
        msg = f"{source.path!r} is a directory, not a {kind} file"
        raise FileAccessError(msg)
    if not path.exists():
        msg = f"{kind} file {source.path!r} does not exist"
        raise FileAccessError(msg)
    return path


def check_ranges(source: FileSource, timeout: float) -> None:
    """Raise a clear error if ``source`` is on a web server that does not serve byte ranges."""
    if source.is_remote and source.path.split("://", 1)[0].lower() in ("http", "https"):
        if serves_ranges(source.path, timeout) is False:
            msg = (
                f"the web server of {source.path!r} does not serve byte ranges (HTTP Range requests), which "
                f"reading part of a {KINDS.get(source.format, source.format)} file needs; serve the file from a "
                "server that does (nginx, Apache, XRootD's HTTP), or copy it here"
            )
            raise FileAccessError(msg)
