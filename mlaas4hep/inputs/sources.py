"""Input files: naming them, and telling what their branches hold.

A :class:`FileSource` is a path or URL, its format (ROOT, Parquet, CSV, JSON
lines or Avro: from its name, or given) and, for ROOT, the name of the tree
inside it. It holds no open file, so objects that keep sources stay
picklable (Keras worker processes receive copies of them). Opening and
reading are :mod:`mlaas4hep.inputs.formats`' work; what a file holds,
:mod:`mlaas4hep.inputs.contents`'.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import ParameterError

__all__ = ["DEFAULT_TREE", "FORMATS", "KINDS", "FileSource", "format_of", "names_data", "parse_sources"]

DEFAULT_TREE = "Events"
"""Tree read when a file does not name one (CMS NanoAOD's tree)."""

_REMOTE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_WITH_TREE = re.compile(r"^(?P<path>.+\.root):(?P<tree>[^:]+)$")  # the tree may be in a directory: dir/Events

KINDS = {"root": "ROOT", "parquet": "Parquet", "csv": "CSV", "jsonl": "JSON lines", "avro": "Avro"}
"""Each format's name in messages."""

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


def names_data(path: str) -> bool:
    """Whether the name says a data file (``.root``, ``.parquet``, ``.csv``, ...), not a list of files.

    Examples
    --------
    >>> names_data("events.parquet"), names_data("files.txt")
    (True, False)
    """
    return PurePosixPath(path).suffix.lower() in (*_EXTENSIONS, ".root")


_UNREAD = {".tsv": "tab-separated", ".gz": "gzip-compressed", ".bz2": "bzip2-compressed", ".xz": "xz-compressed"}


def format_of(path: str) -> str:
    """The format a file's name says: ``"parquet"`` for ``x.parquet``...; ``"root"`` for any other name.

    Raises
    ------
    ParameterError
        For a name that says a format no reader reads (``x.tsv``, ``x.csv.gz``).

    Examples
    --------
    >>> format_of("events.csv"), format_of("nano.root")
    ('csv', 'root')
    """
    name = path.split("?", 1)[0].split("#", 1)[0] if _REMOTE.match(path) else path
    suffixes = [s.lower() for s in PurePosixPath(name).suffixes[-2:]]
    unread = _UNREAD.get(suffixes[-1]) if suffixes else None
    if unread and (suffixes[-1] == ".tsv" or any(s in _EXTENSIONS for s in suffixes[:-1])):
        msg = (
            f"{path!r} is a {unread} file, which mlaas4hep does not read: give a ROOT, Parquet, CSV, JSON lines "
            "or Avro file (decompress it, or convert it), or name its format with FileSource(path, format=...)"
        )
        raise ParameterError(msg)
    return _EXTENSIONS.get(suffixes[-1] if suffixes else "", "root")


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
    if isinstance(files, (str, bytes, os.PathLike, FileSource)):
        files = [files]
    sources = []
    for item in files:
        if isinstance(item, FileSource):
            sources.append(item)
            continue
        text = os.fsdecode(item)  # bytes paths too
        match = _WITH_TREE.match(text)
        path, name = (match["path"], match["tree"]) if match else (text, tree)
        if redirector and not _REMOTE.match(path) and not os.path.isabs(path) and not os.path.exists(path):
            path = redirector.rstrip("/") + "/" + path
        sources.append(FileSource(path, name, format))
    return sources
