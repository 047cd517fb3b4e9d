"""What an input file holds, read without reading its data: entries, branches and fingerprint."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import FileAccessError
from .formats import DEFAULT_TIMEOUT, BranchInfo, Table, open_table
from .sources import FileSource

__all__ = ["FileInfo", "check_unchanged", "describe_file", "inspect_file"]


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
    """The :class:`FileInfo` of ``source``, opened by :func:`~mlaas4hep.inputs.formats.open_table` as ``table``."""
    size = mtime = identity = None
    if not source.is_remote:
        stat = os.stat(source.local_path)
        size, mtime, identity = stat.st_size, stat.st_mtime, (stat.st_dev, stat.st_ino)
    return FileInfo(source, table.entries, tuple(table.branches()), size, mtime, table.uuid, identity)


def inspect_file(source: FileSource, timeout: float = DEFAULT_TIMEOUT) -> FileInfo:
    """Open ``source`` once, reading no data, and describe it (see :class:`FileInfo`).

    The first time a CSV, JSON lines or Avro file is inspected, it is read
    once to be converted (see :mod:`mlaas4hep.inputs.formats.convert`).
    """
    with open_table(source, timeout) as table:
        return describe_file(source, table)


def check_unchanged(before: FileInfo) -> None:
    """Raise :class:`~mlaas4hep.errors.FileAccessError` if the local file ``before`` describes is gone or changed.

    Changed: another size or modification time. A remote file is not checked here.
    """
    source = before.source
    if source.is_remote:
        return
    try:
        stat = os.stat(source.local_path)  # at every read: not location's Path.resolve, an lstat per part
    except FileNotFoundError as err:
        msg = f"{source} was removed or moved after the sequence was made; make the sequence again"
        raise FileAccessError(msg) from err
    except OSError as err:
        msg = f"cannot read {source}: {err}"
        raise FileAccessError(msg) from err
    if (stat.st_size, stat.st_mtime) != (before.size, before.mtime):
        msg = f"{source} was modified after the sequence was made; make the sequence again"
        raise FileAccessError(msg)
