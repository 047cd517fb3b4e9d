"""Input files: naming them, and telling what their branches hold.

A :class:`FileSource` is a path or URL, its format (ROOT, Parquet, CSV, JSON
lines or Avro: from its name, or given) and, for ROOT, the name of the tree
inside it. It holds no open file, so objects that keep sources stay
picklable (Keras worker processes receive copies of them). Opening and
reading are :mod:`mlaas4hep.inputs.formats`' work; what a file holds,
:mod:`mlaas4hep.inputs.contents`'.

:func:`expand_sources` turns what the user wrote into files: each entry of
the list names one file, or, with wildcards (``"data/sig_*.root:events"``),
every file that matches, sorted; :func:`per_entry` repeats what was given
once per entry (a label, a file weight) for each file the entry names.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import numpy as np

from ..errors import FileAccessError, ParameterError

__all__ = [
    "DEFAULT_TREE",
    "FORMATS",
    "KINDS",
    "FileSource",
    "expand_sources",
    "format_of",
    "names_data",
    "names_trees",
    "parse_sources",
    "per_entry",
]

T = TypeVar("T")

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
    def local_path(self) -> str:
        """The path of a local file as given (``file://`` dropped), for the OS to open or stat; for a URL, the URL."""
        return self.path if self.is_remote else self.path.removeprefix("file://")

    @property
    def location(self) -> str:
        """The URL, or the absolute path of a local file (how specs record it)."""
        if self.is_remote:
            return self.path
        return str(Path(self.local_path).resolve())

    @property
    def what(self) -> str:
        """The file in words, for messages: ``tree 'Events' in 'f.root'``, ``'f.parquet'``."""
        return f"tree {self.tree!r} in {self.path!r}" if self.format == "root" else repr(self.path)

    def __str__(self) -> str:
        return f"{self.path}:{self.tree}" if self.format == "root" else self.path


Files = str | os.PathLike[str] | Iterable[str | os.PathLike[str] | FileSource] | Mapping[str | os.PathLike[str], object]
"""What the faces take as ``files``: a path, a sequence of them, or a mapping of file to tree (or to label)."""

_REMOTE_TIMEOUT = 30.0  # seconds, as mlaas4hep.inputs.formats.DEFAULT_TIMEOUT (which imports this module)
_URL_MAGIC = re.compile(r"[*[]")  # in a URL, "?" begins the query: "*" and "[...]" are its wildcards


def names_trees(files: Mapping[Any, object]) -> bool:
    """Whether a mapping is uproot's ``{file: tree}`` (True) or mlaas4hep's ``{file: label}`` (False).

    Told by the values: strings (or None, the default tree) name trees;
    numbers (or True/False) are labels.

    Raises
    ------
    ParameterError
        For values of both kinds, or of neither.

    Examples
    --------
    >>> names_trees({"a.root": "events"}), names_trees({"a.root": 1, "b.root": 0})
    (True, False)
    """
    values = list(files.values())
    trees = [v is None or isinstance(v, str) for v in values]
    labels = [isinstance(v, (bool, int, float, np.number, np.bool_)) for v in values]
    if all(trees):
        return True
    if all(labels):
        return False
    kind = "trees and labels" if all(t or n for t, n in zip(trees, labels, strict=True)) else "neither"
    odd = next(v for v, t, n in zip(values, trees, labels, strict=True) if not (t or n) or (kind != "neither" and n))
    msg = (
        f"files is a mapping whose values are {kind} (e.g. {odd!r}): give {{file: tree}} with tree names "
        "(strings) as uproot does, or {file: label} with numbers, not both; with trees, give labels in labels"
    )
    raise ParameterError(msg)


def per_entry(values: Sequence[T], sizes: Sequence[int], what: str, alternative: str = "") -> list[T]:
    """``values``, one per entry of the files, repeated for each file its entry names.

    Parameters
    ----------
    values : sequence
        One value (a label, a file weight) per entry the user gave.
    sizes : sequence of int
        How many files each entry names (:func:`expand_sources`: one, or the files a pattern matches).
    what : str
        The values' name, for the message.
    alternative : str
        What else the user may give instead, for the message (``" or a branch name"``).

    Raises
    ------
    ParameterError
        When there is not one value per entry.

    Examples
    --------
    >>> per_entry([1, 0], [3, 1], "labels")
    [1, 1, 1, 0]
    """
    if len(values) != len(sizes):
        if all(n == 1 for n in sizes):
            msg = f"got {len(values)} {what} for {len(sizes)} files; give one per file{alternative}"
        else:
            msg = (
                f"got {len(values)} {what} for {len(sizes)} entries of files, which name {sum(sizes)} files; "
                f"give one per entry (a pattern's goes to every file it matches){alternative}"
            )
        raise ParameterError(msg)
    return [v for v, n in zip(values, sizes, strict=True) for _ in range(n)]


def parse_sources(
    files: Files,
    tree: str = DEFAULT_TREE,
    redirector: str = "",
    format: str = "",
    timeout: float = _REMOTE_TIMEOUT,
) -> list[FileSource]:
    """Turn the user's file list into :class:`FileSource` objects, patterns expanded.

    The files of :func:`expand_sources`, one after the other.

    Examples
    --------
    >>> [str(s) for s in parse_sources(["a.root:events", "b.parquet"])]
    ['a.root:events', 'b.parquet']
    """
    return [source for group in expand_sources(files, tree, redirector, format, timeout) for source in group]


def expand_sources(
    files: Files,
    tree: str = DEFAULT_TREE,
    redirector: str = "",
    format: str = "",
    timeout: float = _REMOTE_TIMEOUT,
) -> list[list[FileSource]]:
    """The files that each entry of the user's file list names: one, or those a pattern matches.

    Parameters
    ----------
    files : path, URL, sequence of them, or mapping
        ``"file.root"`` reads ``tree``; ``"file.root:name"`` reads the tree
        ``name`` from that file (as :func:`uproot.open` understands it;
        ``"file.root:dir/Events"`` for a tree in a directory). A mapping of
        file to tree name is uproot's ``{"a.root": "events"}`` (None: ``tree``);
        a mapping of file to number is a ``{file: label}`` mapping, whose
        files are its keys (see :func:`names_trees`).

        **Patterns.** A local path with the wildcards of :mod:`glob` (``*``,
        ``?``, ``[...]``, and ``**`` for any depth of folders) names every
        file that matches, folders left out, sorted by path (character by
        character: ``f10`` comes before ``f2``); a path that exists as
        written is that file, brackets and all. In a ``root://`` URL, ``*``
        and ``[...]`` in the file name (``?`` begins a URL's query) are
        matched against the listing of its folder, which waits at most
        ``timeout`` seconds (needs the XRootD client). Other URLs are taken
        as written. A :class:`FileSource` is one file, never a pattern.
    tree : str
        Default tree name, ``"Events"`` unless given.
    redirector : str
        Prefix for names that are neither absolute paths nor URLs, as the
        original MLaaS4HEP's ``redirector`` (e.g. ``"root://eos.cms.cern.ch/"``).
        Relative local paths that exist (or patterns that match) are kept as they are.
    format : str
        The format of every file given by name (see :class:`FileSource`); by
        default each file's extension tells it. A :class:`FileSource` keeps its own.
    timeout : float
        Seconds to wait for a remote folder's listing.

    Returns
    -------
    list of list of FileSource
        One list per entry, in the entries' order.

    Raises
    ------
    FileAccessError
        A pattern that matches no file (named in the message), or a remote
        folder that cannot be listed.
    ParameterError
        A file that two entries name (a pattern among them), or a mapping
        whose values are neither all trees nor all labels.

    Examples
    --------
    >>> [len(group) for group in expand_sources(["a.root", "b.root:events"])]
    [1, 1]
    """
    entries = _entries(files)
    expanded = [_expand(item, given, tree, redirector, format, timeout) for item, given in entries]
    _check_overlaps([item for item, _ in entries], expanded)
    return [group for group, _ in expanded]


def _entries(files: Files) -> list[tuple[str | os.PathLike[str] | FileSource, str | None]]:
    """The entries of the file list, each with the tree its mapping gives (None: none given)."""
    if isinstance(files, (str, bytes, os.PathLike, FileSource)):
        return [(files, None)]
    if isinstance(files, Mapping):
        if not names_trees(files):
            return [(item, None) for item in files]  # {file: label}: the labels are the caller's
        for item in files:
            if isinstance(item, FileSource):
                msg = f"{item!r} names its own tree: list it, not as a key of a {{file: tree}} mapping"
                raise ParameterError(msg)
        return [(item, value if isinstance(value, str) else None) for item, value in files.items()]
    return [(item, None) for item in files]


def _expand(
    item: str | os.PathLike[str] | FileSource,
    given: str | None,
    tree: str,
    redirector: str,
    format: str,
    timeout: float,
) -> tuple[list[FileSource], bool]:
    """The files one entry names, and whether it is a pattern."""
    if isinstance(item, FileSource):
        return [item], False
    text = os.fsdecode(item)  # bytes paths too
    match = _WITH_TREE.match(text)
    path, name = (match["path"], match["tree"]) if match else (text, given or tree)
    if match and given is not None and given != name:
        msg = f"{text!r} names the tree {name!r}, and its mapping the tree {given!r}: name it once"
        raise ParameterError(msg)
    if _REMOTE.match(path) and not path.startswith("file://"):
        urls = _remote_matches(path, text, timeout)
        return [FileSource(url, name, format) for url in urls], urls != [path]
    local = path.removeprefix("file://")
    if os.path.exists(local) or not glob.has_magic(local):
        if redirector and not _REMOTE.match(path) and not os.path.isabs(path) and not os.path.exists(path):
            return _expand(redirector.rstrip("/") + "/" + text, given, tree, "", format, timeout)
        return [FileSource(path, name, format)], False
    matches = sorted(p for p in glob.glob(local, recursive=True) if os.path.isfile(p))
    if matches:
        prefix = path[: len(path) - len(local)]
        return [FileSource(prefix + p, name, format) for p in matches], True
    if redirector and not os.path.isabs(local):
        return _expand(redirector.rstrip("/") + "/" + text, given, tree, "", format, timeout)
    msg = f"the pattern {path!r} matches no file (given as {text!r}; folders are not files)"
    raise FileAccessError(msg)


def _remote_matches(url: str, text: str, timeout: float) -> list[str]:
    """The URLs that ``url`` names: itself, or for a ``root://`` URL with wildcards in its file name, the matches."""
    address, mark, query = url.partition("?")
    scheme, _, rest = address.partition("://")
    host, _, path = rest.partition("/")
    if not _URL_MAGIC.search(path):
        return [url]
    from . import remote  # uproot and XRootD load only for a remote pattern

    if scheme.lower() not in remote.XROOTD_SCHEMES:
        return [url]  # http(s): as written, as before
    folder, _, pattern = address.rpartition("/")
    if _URL_MAGIC.search(folder[len(scheme) + 3 + len(host) :]):
        msg = f"{url!r} has wildcards in a folder's name: in a URL, only the file name may be a pattern"
        raise ParameterError(msg)
    try:
        names = remote.list_xrootd(folder + "/", timeout)
    except OSError as err:  # FileAccessError (no XRootD client) included
        msg = f"cannot expand the pattern {url!r}: {err}"
        raise FileAccessError(msg) from err
    hidden = pattern.startswith(".")  # as glob: * matches no leading dot
    found = [n for n in sorted(names) if fnmatchcase(n, pattern) and (hidden or not n.startswith("."))]
    if not found:
        msg = f"the pattern {url!r} matches no file in {folder + '/'!r} (given as {text!r})"
        raise FileAccessError(msg)
    return [f"{folder}/{n}{mark}{query}" for n in found]


def _check_overlaps(
    items: Sequence[str | os.PathLike[str] | FileSource], expanded: Sequence[tuple[list[FileSource], bool]]
) -> None:
    """Refuse a file that two entries name, one a pattern (the faces refuse other repeats when they open them)."""
    seen: dict[tuple[str, str], int] = {}
    for i, (group, pattern) in enumerate(expanded):
        for source in group:
            j = seen.setdefault((source.location, source.tree), i)
            if j != i and (pattern or expanded[j][1]):
                msg = (
                    f"{str(source)!r} is named by files[{j}] {_spelled(items[j])!r} and by files[{i}] "
                    f"{_spelled(items[i])!r}: its events would be served twice per epoch; "
                    "make the patterns exclusive"
                )
                raise ParameterError(msg)


def _spelled(item: str | os.PathLike[str] | FileSource) -> str:
    return str(item) if isinstance(item, FileSource) else os.fsdecode(item)
