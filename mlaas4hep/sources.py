"""Input files: naming them, and telling what their branches hold.

A :class:`FileSource` is a path or URL, its format (ROOT, Parquet, CSV, JSON
lines or Avro: from its name, or given) and, for ROOT, the name of the tree
inside it. It holds no open file, so objects that keep sources stay
picklable (Keras worker processes receive copies of them). Opening and
reading are :mod:`mlaas4hep.formats`' work.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import ParameterError
from .formats import DEFAULT_TIMEOUT, KINDS, BranchInfo, Table, open_table
from .formats.root import describe_branches, file_uuid, open_file, open_tree, opened_tree

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEFAULT_TREE",
    "FORMATS",
    "BranchInfo",
    "FileInfo",
    "FileSource",
    "describe_branches",
    "describe_file",
    "file_uuid",
    "format_of",
    "inspect_file",
    "open_file",
    "open_tree",
    "opened_tree",
    "parse_sources",
]

DEFAULT_TREE = "Events"
"""Tree read when a file does not name one (CMS NanoAOD's tree)."""

_REMOTE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_WITH_TREE = re.compile(r"^(?P<path>.+\.root):(?P<tree>[^:]+)$")  # the tree may be in a directory: dir/Events

FORMATS = tuple(KINDS)
"""The formats read: ``"root"``, ``"parquet"``, ``"csv"``, ``"jsonl"`` (JSON lines) and ``"avro"``."""

_EXTENSIONS = {
    ".parquet": "parquet",
    ".parq": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".avro": "avro",
}
_ALIASES = {"json": "jsonl", "ndjson": "jsonl", "parq": "parquet", "pq": "parquet"}


def format_of(path: str) -> str:
    """The format a file's name says: ``"parquet"`` for ``x.parquet``...; ``"root"`` for any other name."""
    name = path.split("?", 1)[0].split("#", 1)[0] if _REMOTE.match(path) else path
    return _EXTENSIONS.get(PurePosixPath(name).suffix.lower(), "root")


@dataclass(frozen=True)
class FileSource:
    """One input file, its format, and (ROOT) the tree (TTree or RNTuple) to read from it.

    Parameters
    ----------
    path : str
        Local path or URL (``root://``, ``http(s)://``; Parquet files over ``http(s)://`` too).
    tree : str
        Name of the TTree or RNTuple inside a ROOT file (unused by other formats).
    format : str
        ``"root"``, ``"parquet"``, ``"csv"``, ``"jsonl"`` (JSON lines, one record per
        line) or ``"avro"``; by default the file name's extension tells it
        (``.parquet``, ``.csv``, ``.jsonl``/``.json``, ``.avro``; any other name is ROOT).

    Examples
    --------
    >>> FileSource("events.parquet").format
    'parquet'
    >>> FileSource("events.dat", format="csv").format
    'csv'
    """

    path: str
    tree: str = DEFAULT_TREE
    format: str = ""

    def __post_init__(self) -> None:
        given = self.format.lower()
        fmt = _ALIASES.get(given, given) if given else format_of(self.path)
        if fmt not in FORMATS:
            msg = f"format {self.format!r} of {self.path!r} is none of {list(FORMATS)}"
            raise ParameterError(msg)
        object.__setattr__(self, "format", fmt)

    @property
    def is_remote(self) -> bool:
        """Whether the path is a URL rather than a local file."""
        return bool(_REMOTE.match(self.path)) and not self.path.startswith("file://")

    @property
    def location(self) -> str:
        """The URL, or the absolute path of a local file (how specs record it)."""
        if self.is_remote:
            return self.path
        return str(Path(self.path.removeprefix("file://")).resolve())

    @property
    def what(self) -> str:
        """The file in words, for messages: ``tree 'Events' in 'f.root'``, ``'f.parquet'``."""
        return f"tree {self.tree!r} in {self.path!r}" if self.format == "root" else repr(self.path)

    def __str__(self) -> str:
        return f"{self.path}:{self.tree}" if self.format == "root" else self.path


def parse_sources(
    files: str | os.PathLike[str] | Iterable[str | os.PathLike[str] | FileSource],
    tree: str = DEFAULT_TREE,
    redirector: str = "",
    format: str = "",
) -> list[FileSource]:
    """Turn the user's file list into :class:`FileSource` objects.

    Parameters
    ----------
    files : path, URL, or sequence of them
        ``"file.root"`` reads ``tree``; ``"file.root:name"`` reads the tree
        ``name`` from that file (as :func:`uproot.open` understands it;
        ``"file.root:dir/Events"`` for a tree in a directory).
    tree : str
        Default tree name, ``"Events"`` unless given.
    redirector : str
        Prefix for names that are neither absolute paths nor URLs, as the
        original MLaaS4HEP's ``redirector`` (e.g. ``"root://eos.cms.cern.ch/"``).
        Relative local paths that exist are kept as they are.
    format : str
        The format of every file given by name (see :class:`FileSource`); by
        default each file's extension tells it. A :class:`FileSource` keeps its own.

    Returns
    -------
    list of FileSource
    """
    if isinstance(files, (str, os.PathLike, FileSource)):
        files = [files]
    sources = []
    for item in files:
        if isinstance(item, FileSource):
            sources.append(item)
            continue
        text = os.fspath(item)
        match = _WITH_TREE.match(text)
        path, name = (match["path"], match["tree"]) if match else (text, tree)
        if redirector and not _REMOTE.match(path) and not os.path.isabs(path) and not os.path.exists(path):
            path = redirector.rstrip("/") + "/" + path
        sources.append(FileSource(path, name, format))
    return sources


@dataclass(frozen=True)
class FileInfo:
    """What opening a file (reading no data) tells: its entries, branches and fingerprint.

    ``size`` and ``mtime`` (bytes, seconds since the epoch) and ``identity``
    (device and inode: the same file under two names has one) are None for
    remote files, ``uuid`` when the file records none (ROOT files record one).
    """

    source: FileSource
    entries: int
    branches: tuple[BranchInfo, ...]
    size: int | None = None
    mtime: float | None = None
    uuid: str | None = None
    identity: tuple[int, int] | None = None

    @property
    def kinds(self) -> dict[str, str]:
        """Each branch's kind, by name."""
        return {b.name: b.kind for b in self.branches}


def describe_file(source: FileSource, table: Table) -> FileInfo:
    """The :class:`FileInfo` of ``source``, opened by :func:`~mlaas4hep.formats.open_table` as ``table``."""
    size = mtime = identity = None
    if not source.is_remote:
        stat = os.stat(source.location)
        size, mtime, identity = stat.st_size, stat.st_mtime, (stat.st_dev, stat.st_ino)
    return FileInfo(source, table.entries, tuple(table.branches()), size, mtime, table.uuid, identity)


def inspect_file(source: FileSource, timeout: float = DEFAULT_TIMEOUT) -> FileInfo:
    """Open ``source`` once, reading no data, and describe it (see :class:`FileInfo`).

    The first time a CSV, JSON lines or Avro file is inspected, it is read
    once to be converted (see :mod:`mlaas4hep.formats.convert`).
    """
    with open_table(source, timeout) as table:
        return describe_file(source, table)
