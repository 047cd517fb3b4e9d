"""Input files: naming them, opening them, and telling what their branches hold.

A :class:`FileSource` is a path or URL plus the name of the tree inside it. It
holds no open file, so objects that keep sources stay picklable (Keras worker
processes receive copies of them).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import awkward as ak
import uproot

from ._remote import open_options, serves_ranges
from .errors import FileAccessError, TreeError

__all__ = [
    "DEFAULT_TREE",
    "BranchInfo",
    "FileInfo",
    "FileSource",
    "describe_branches",
    "describe_file",
    "inspect_file",
    "open_file",
    "open_tree",
    "opened_tree",
    "parse_sources",
]

log = logging.getLogger(__name__)

DEFAULT_TREE = "Events"
"""Tree read when a file does not name one (CMS NanoAOD's tree)."""

_REMOTE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_WITH_TREE = re.compile(r"^(?P<path>.+\.root):(?P<tree>[^:]+)$")  # the tree may be in a directory: dir/Events

DEFAULT_TIMEOUT = 30.0
"""Seconds to wait for a remote server, to connect and for each read."""


@dataclass(frozen=True)
class FileSource:
    """One input file and the tree (TTree or RNTuple) to read from it.

    Parameters
    ----------
    path : str
        Local path or URL (``root://``, ``http(s)://``), passed to :func:`uproot.open`.
    tree : str
        Name of the TTree or RNTuple inside the file.
    """

    path: str
    tree: str = DEFAULT_TREE

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

    def __str__(self) -> str:
        return f"{self.path}:{self.tree}"


@dataclass(frozen=True)
class BranchInfo:
    """What a branch holds, as far as turning it into features goes.

    ``kind`` is ``"flat"`` (one number per event), ``"jagged"`` (a variable-length
    list of numbers per event), or why it cannot be used: ``"string"``,
    ``"doubly-jagged"``, ``"object"`` or ``"fixed-size array"``.
    """

    name: str
    kind: str
    dtype: str


def parse_sources(
    files: str | os.PathLike[str] | Iterable[str | os.PathLike[str] | FileSource],
    tree: str = DEFAULT_TREE,
    redirector: str = "",
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
        sources.append(FileSource(path, name))
    return sources


def _check_local(source: FileSource) -> None:
    if source.is_remote:
        return
    path = Path(source.path.removeprefix("file://"))
    if path.is_dir():
        msg = f"{source.path!r} is a directory, not a ROOT file"
        raise FileAccessError(msg)
    if not path.exists():
        msg = f"ROOT file {source.path!r} does not exist"
        raise FileAccessError(msg)


def open_file(source: FileSource, timeout: float = DEFAULT_TIMEOUT) -> Any:
    """Open ``source``'s file with uproot, raising :class:`FileAccessError` with its name.

    A remote file waits at most ``timeout`` seconds for its server, to connect and for each read.
    """
    _check_local(source)
    options = open_options(source.path, timeout) if source.is_remote else {}
    try:
        file = uproot.open(source.path, **options)
    except FileNotFoundError as err:
        msg = f"ROOT file {source.path!r} does not exist ({err})"
        raise FileAccessError(msg) from err
    except OSError as err:
        msg = f"cannot open {source.path!r}: {err}"
        raise FileAccessError(msg) from err
    except Exception as err:  # uproot raises ValueError and others for non-ROOT bytes
        _check_ranges(source, timeout)
        msg = f"{source.path!r} is not a readable ROOT file: {type(err).__name__}: {err}"
        raise FileAccessError(msg) from err
    if not source.is_remote:  # a cut file still opens: its header says where it should end
        size = os.path.getsize(source.path.removeprefix("file://"))
        end = int(getattr(file.file, "fEND", 0) or 0)
        if end > size:
            file.close()
            msg = f"ROOT file {source.path!r} is truncated: {size} bytes, its header says {end}"
            raise FileAccessError(msg)
    return file


def open_tree(source: FileSource, timeout: float = DEFAULT_TIMEOUT) -> tuple[Any, Any]:
    """Open a source and return ``(file, tree)``; the caller closes ``file``.

    Raises
    ------
    FileAccessError
        The file is missing, a directory, or not ROOT; a remote server did not
        answer within ``timeout`` seconds, or does not serve byte ranges.
    TreeError
        The file has no TTree or RNTuple of that name.
    """
    file = open_file(source, timeout)
    try:
        classes = file.classnames()
    except Exception as err:
        file.close()
        msg = f"{source.path!r} is not a readable ROOT file: {type(err).__name__}: {err}"
        raise FileAccessError(msg) from err
    known = {key.split(";")[0]: cls for key, cls in classes.items()}
    cls = known.get(source.tree)
    if cls is None:
        file.close()
        if not known:  # garbage where a ROOT directory should be: a web server that ignores byte ranges?
            _check_ranges(source, timeout)
        trees = sorted(k for k, c in known.items() if c in ("TTree", "ROOT::RNTuple", "ROOT::Experimental::RNTuple"))
        msg = f"no tree {source.tree!r} in {source.path!r}; trees there: {trees or 'none'}"
        raise TreeError(msg)
    if cls not in ("TTree", "ROOT::RNTuple", "ROOT::Experimental::RNTuple"):
        file.close()
        msg = f"{source.tree!r} in {source.path!r} is a {cls}, not a TTree or RNTuple"
        raise TreeError(msg)
    try:
        obj = file[source.tree]
    except Exception as err:
        file.close()
        msg = f"cannot read tree {source.tree!r} from {source.path!r}: {type(err).__name__}: {err}"
        raise FileAccessError(msg) from err
    return file, obj


def _check_ranges(source: FileSource, timeout: float) -> None:
    """Raise a clear error if ``source`` is on a web server that does not serve byte ranges."""
    if source.is_remote and source.path.split("://", 1)[0].lower() in ("http", "https"):
        if serves_ranges(source.path, timeout) is False:
            msg = (
                f"the web server of {source.path!r} does not serve byte ranges (HTTP Range requests), which "
                "reading part of a ROOT file needs; serve the file from a server that does (nginx, Apache, "
                "XRootD's HTTP), or copy it here"
            )
            raise FileAccessError(msg)


@contextlib.contextmanager
def opened_tree(source: FileSource, timeout: float = DEFAULT_TIMEOUT) -> Iterator[Any]:
    """``with opened_tree(source) as tree:``: the tree of :func:`open_tree`, its file closed on leaving."""
    file, tree = open_tree(source, timeout)
    try:
        yield tree
    finally:
        file.close()


def file_uuid(file: Any) -> str | None:
    """The ROOT file's UUID as a string, or None if uproot cannot tell."""
    try:
        return str(file.file.uuid)
    except Exception:  # noqa: BLE001 - a UUID is a bonus, not a requirement
        return None


def _kind_of_form(form: ak.forms.Form) -> tuple[str, str]:
    """Classify an awkward form into (kind, dtype)."""
    params = form.parameters or {}
    if params.get("__array__") in ("string", "bytestring"):
        return "string", "string"
    if isinstance(form, ak.forms.NumpyForm):
        if form.inner_shape:
            return "fixed-size array", form.primitive
        return "flat", form.primitive
    if isinstance(form, (ak.forms.ListOffsetForm, ak.forms.ListForm)):
        content = form.content
        if (content.parameters or {}).get("__array__") in ("char", "byte"):
            return "string", "string"
        if isinstance(content, ak.forms.NumpyForm) and not content.inner_shape:
            return "jagged", content.primitive
        if isinstance(content, (ak.forms.ListOffsetForm, ak.forms.ListForm, ak.forms.RegularForm)):
            return "doubly-jagged", "object"
        return "object", "object"
    if isinstance(form, ak.forms.RegularForm):
        return "fixed-size array", "object"
    return "object", "object"


def describe_branches(obj: Any) -> list[BranchInfo]:
    """List the top-level branches (TTree) or fields (RNTuple) of ``obj`` with their kinds."""
    infos = []
    if isinstance(obj, uproot.TTree):
        for name, branch in obj.items(recursive=False):
            if len(branch.branches) > 0:
                infos.append(BranchInfo(name, "object", "object"))
                continue
            try:
                form = branch.interpretation.awkward_form(branch.file)
            except Exception:  # noqa: BLE001 - an uninterpretable branch is an object
                infos.append(BranchInfo(name, "object", "object"))
                continue
            kind, dtype = _kind_of_form(form)
            infos.append(BranchInfo(name, kind, dtype))
        return infos
    form = obj.to_akform()
    if isinstance(form, tuple):  # uproot >= 5.7 returns (form, extra)
        form = form[0]
    for name in form.fields:
        kind, dtype = _kind_of_form(form.content(name))
        infos.append(BranchInfo(name, kind, dtype))
    return infos


@dataclass(frozen=True)
class FileInfo:
    """What opening a file (reading no data) tells: its entries, branches and fingerprint.

    ``size`` and ``mtime`` (bytes, seconds since the epoch) and ``identity``
    (device and inode: the same file under two names has one) are None for
    remote files, ``uuid`` when uproot cannot tell the file's ROOT UUID.
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


def describe_file(source: FileSource, file: Any, tree: Any) -> FileInfo:
    """The :class:`FileInfo` of ``source``, opened by :func:`open_tree` as ``(file, tree)``."""
    size = mtime = identity = None
    if not source.is_remote:
        stat = os.stat(source.location)
        size, mtime, identity = stat.st_size, stat.st_mtime, (stat.st_dev, stat.st_ino)
    branches = tuple(describe_branches(tree))
    return FileInfo(source, int(tree.num_entries), branches, size, mtime, file_uuid(file), identity)


def inspect_file(source: FileSource, timeout: float = DEFAULT_TIMEOUT) -> FileInfo:
    """Open ``source`` once, reading no data, and describe it (see :class:`FileInfo`)."""
    file, tree = open_tree(source, timeout)
    try:
        return describe_file(source, file, tree)
    finally:
        file.close()
