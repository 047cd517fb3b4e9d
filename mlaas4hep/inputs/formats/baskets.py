"""Numeric branches of a local TTree read basket by basket with numpy: uproot's reading, less its per-basket Python.

uproot reads a branch's baskets as objects: for each basket a model is built,
its key parsed field by field, its data interpreted and finalized through
several layers of Python, about 0.3 ms a basket whatever its size. For the
branches a training reads (numbers, flat or one jagged list of numbers a
entry, as ``Muon_pt[nMuon]``) that is most of what a
read costs besides the decompression. :class:`BasketReader` reads those
branches' baskets directly: one ``os.pread`` of the basket's bytes, its two
headers unpacked with :mod:`struct`, each ZLIB block inflated (with the library
uproot uses in this process, ISA-L by default) and the data turned into
native-endian arrays with numpy, the same arrays and awkward layouts uproot
gives (checked field by field and form by form in the tests).

Anything else is left to uproot: other interpretations (strings, objects,
fixed-size arrays, ``std::vector``, ``Double32_t``), other compression algorithms (LZMA, LZ4,
ZSTD), baskets embedded in the tree's metadata, remote files. So is any basket
whose headers do not agree with the tree's metadata: :meth:`BasketReader.read`
raises :class:`Unsupported` for it, and the caller reads that branch with
uproot, whose checks then say what is wrong with the file.

Examples
--------
>>> import uproot
>>> tree = uproot.open("../shared/data/uproot-HZZ.root")["events"]
>>> reader = BasketReader("../shared/data/uproot-HZZ.root", tree)
>>> reader.supports("Muon_Px"), reader.supports("Muon_Px[0]")
(True, False)
>>> content = reader.read("Muon_Px", 0, 3)
>>> content.offsets.data.tolist()
[0, 2, 3, 5]
>>> reader.close()
"""

from __future__ import annotations

import os
import struct
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import awkward as ak
import numpy as np
from uproot.interpretation.jagged import AsJagged
from uproot.interpretation.numerical import AsDtype

from .decompression import inflater

Inflate = Callable[[Any, int], bytes]

__all__ = ["BasketReader", "Unsupported"]

_KEY = struct.Struct(">ihiIhh")  # fNbytes, key version, fObjlen, fDatime, fKeylen, fCycle
_BASKET = struct.Struct(">Hiiii")  # fVersion, fBufferSize, fNevBufSize, fNevBuf, fLast (then one flag byte)
_BLOCK = 9  # a compressed block's header: algorithm (2 bytes), method, compressed and uncompressed sizes (3 each)
_OFFSETS = np.dtype(">i4")


class Unsupported(Exception):
    """A branch or basket that :class:`BasketReader` leaves to uproot (the message says why)."""


@dataclass(frozen=True)
class _Branch:
    """What reading one branch needs, from the tree's metadata (immutable, shared by threads)."""

    name: str
    source: np.dtype[Any]  # the dtype in the file (big-endian)
    target: np.dtype[Any]  # the native dtype uproot gives
    jagged: bool  # a C array of numbers whose size another branch gives (``x[n]``)
    entries: np.ndarray  # first entry of each basket, then the branch's number of entries
    seeks: np.ndarray  # each basket's position in the file
    sizes: np.ndarray  # each basket's bytes, key included


def _describe(branch: Any) -> _Branch | None:
    """A branch's reading plan, or None if it is not one :class:`BasketReader` reads."""
    interpretation = branch.interpretation
    jagged = type(interpretation) is AsJagged
    numbers = interpretation.content if jagged else interpretation
    if type(numbers) is not AsDtype or numbers.inner_shape != () or len(branch.branches):
        return None
    source, target = np.dtype(numbers.from_dtype), np.dtype(numbers.to_dtype)
    if source.names is not None or source.subdtype is not None or target.names is not None:  # leaf lists
        return None
    if target.kind not in "biuf" or not target.isnative or (source.kind != target.kind and target.kind != "f"):
        return None
    if jagged and interpretation.header_bytes != 0:  # std::vector: no file to check its reading against
        return None
    normal = int(branch.num_baskets) - len(branch.embedded_baskets)
    entries = np.asarray(branch.member("fBasketEntry")[: normal + 1], dtype=np.int64)
    if normal == 0 or len(branch.embedded_baskets) or int(entries[-1]) != int(branch.num_entries):
        return None
    if np.any(np.diff(entries) < 0):
        return None
    return _Branch(
        branch.name,
        source,
        target,
        jagged,
        entries,
        np.asarray(branch.member("fBasketSeek")[:normal], dtype=np.int64),
        np.asarray(branch.member("fBasketBytes")[:normal], dtype=np.int64),
    )


class BasketReader:
    """Reads numeric branches of one TTree of a local ROOT file, basket by basket.

    Parameters
    ----------
    path : str
        The file's local path, opened here, as uproot has just opened it (read
        with ``os.pread``: safe from several threads and in forked processes;
        closed by :meth:`close`, or when the reader is dropped).
    tree : uproot.TTree
        The tree, opened with uproot (its metadata says where the baskets are).

    Notes
    -----
    Thread-safe: :meth:`read` may run for several branches at once.
    """

    def __init__(self, path: str, tree: Any) -> None:
        self.path = os.path.abspath(path)
        self._tree = tree
        self._entries = int(tree.num_entries)  # uproot reads no entry past the tree's, whatever a branch says
        self._branches: dict[str, _Branch | None] = {}
        self._lock = threading.Lock()
        self._fd: int | None = os.open(self.path, os.O_RDONLY)
        self._closer = weakref.finalize(self, os.close, self._fd)
        self.inflate_seconds = 0.0  # spent inflating ZLIB blocks, in the threads that read

    def supports(self, name: str) -> bool:
        """Whether branch ``name`` is read here (a top-level numeric branch whose baskets are all in the file)."""
        with self._lock:
            if name not in self._branches:
                try:
                    branch = self._tree[name]
                except Exception:  # noqa: BLE001 - not a branch of this tree (a nested name): uproot's to say
                    self._branches[name] = None
                else:
                    self._branches[name] = _describe(branch) if branch.parent is self._tree else None
            return self._branches[name] is not None

    def forget(self, name: str) -> None:
        """Leave branch ``name`` to uproot from now on (one of its baskets was :class:`Unsupported`)."""
        with self._lock:
            self._branches[name] = None

    def _descriptor(self) -> int:
        fd = self._fd
        if fd is None:
            msg = f"{self.path}: the reader is closed"
            raise Unsupported(msg)
        return fd

    def read(self, name: str, start: int, stop: int) -> ak.contents.Content:
        """Entries ``[start, stop)`` of branch ``name`` as uproot's awkward layout (``0 <= start < stop``).

        Raises
        ------
        Unsupported
            A basket uproot must read (another compression algorithm) or whose
            headers disagree with the tree's metadata.
        """
        branch = self._branches.get(name)
        if branch is None or not 0 <= start < stop <= min(int(branch.entries[-1]), self._entries):
            msg = f"branch {name!r}, entries {start}-{stop}: not read here"
            raise Unsupported(msg)
        first = int(branch.entries.searchsorted(start, side="right")) - 1
        last = int(branch.entries.searchsorted(stop, side="left"))
        inflate = inflater()
        seconds = [0.0]

        def timed(data: Any, size: int) -> bytes:
            t = time.perf_counter()
            try:
                return inflate(data, size)
            finally:
                seconds[0] += time.perf_counter() - t

        try:
            parts = [self._basket(branch, j, start, stop, timed) for j in range(first, last)]
        finally:
            with self._lock:
                self.inflate_seconds += seconds[0]
        return _assemble(branch, parts, stop - start)

    def _basket(
        self, branch: _Branch, j: int, start: int, stop: int, inflate: Inflate
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Basket ``j``'s numbers of entries ``[start, stop)`` (a view) and, if jagged, their offsets from 0."""
        raw = os.pread(self._descriptor(), int(branch.sizes[j]), int(branch.seeks[j]))
        e0, e1 = int(branch.entries[j]), int(branch.entries[j + 1])
        values, offsets = _unpack(raw, branch, e1 - e0, inflate)
        a, b = max(start, e0) - e0, min(stop, e1) - e0
        if offsets is None:
            return values[a:b], None
        lo = offsets[a]
        return values[lo : offsets[b]], offsets[a : b + 1] - lo

    def close(self) -> None:
        """Close the file (a read after is :class:`Unsupported`: uproot's to answer)."""
        with self._lock:
            self._fd = None
            self._closer()


def _unpack(raw: bytes, branch: _Branch, entries: int, inflate: Inflate) -> tuple[np.ndarray, np.ndarray | None]:
    """A basket's numbers (big-endian) and, for a jagged branch, each entry's first number (``entries + 1``)."""
    if len(raw) < _KEY.size:
        msg = f"branch {branch.name!r}: a basket shorter than its key"
        raise Unsupported(msg)
    nbytes, _, objlen, _, keylen, _ = _KEY.unpack_from(raw)
    if nbytes != len(raw) or not _BASKET.size < keylen <= nbytes:
        msg = f"branch {branch.name!r}: a basket's key disagrees with the tree's metadata"
        raise Unsupported(msg)
    _, _, _, nevbuf, last = _BASKET.unpack_from(raw, keylen - _BASKET.size - 1)
    border = last - keylen
    if nevbuf != entries or not 0 <= border <= objlen:
        msg = f"branch {branch.name!r}: a basket holds {nevbuf} entries, not {entries}"
        raise Unsupported(msg)
    body = memoryview(raw)[keylen:]
    data = np.frombuffer(body if len(body) == objlen else _inflate(body, objlen, branch.name, inflate), np.uint8)
    itemsize = branch.source.itemsize
    if not branch.jagged:
        if border != len(data) or border != entries * itemsize:
            msg = f"branch {branch.name!r}: a basket's size is not its entries'"
            raise Unsupported(msg)
        return data.view(branch.source), None
    # after the numbers: the number of offsets stored (entries + 1), then each entry's first byte counted
    # from the key, then one more, not the numbers' end; and nothing else (no displacements)
    stored = data[border:].view(_OFFSETS) if (len(data) - border) % 4 == 0 else None
    if border % itemsize or stored is None or len(stored) != entries + 2 or stored[0] != entries + 1:
        msg = f"branch {branch.name!r}: a jagged basket without its entries' offsets alone after its numbers"
        raise Unsupported(msg)
    offsets = stored[1:] - np.int32(keylen)  # native int32 now
    offsets[-1] = border  # the last offset is not stored: the numbers end at the border
    shift = itemsize.bit_length() - 1  # itemsize is 1, 2, 4 or 8: bit operations instead of % and //
    if offsets[0] != 0 or (shift and (offsets & (itemsize - 1)).any()) or (offsets[1:] < offsets[:-1]).any():
        msg = f"branch {branch.name!r}: a basket's offsets do not fit its numbers"
        raise Unsupported(msg)
    if shift:
        offsets >>= shift
    return data[:border].view(branch.source), offsets


def _inflate(body: memoryview, size: int, name: str, inflate: Inflate) -> bytes:
    """The ZLIB blocks of a basket's body, inflated into one buffer of ``size`` bytes."""
    blocks: list[bytes] = []
    done, pos = 0, 0
    while done < size:
        header = body[pos : pos + _BLOCK]
        if len(header) < _BLOCK or bytes(header[:2]) != b"ZL":
            algorithm = bytes(header[:2]).decode("latin-1")
            msg = f"branch {name!r}: a basket compressed with {algorithm!r}, not ZLIB"
            raise Unsupported(msg)
        packed = int.from_bytes(header[3:6], "little")
        unpacked = int.from_bytes(header[6:9], "little")
        block = inflate(body[pos + _BLOCK : pos + _BLOCK + packed], unpacked)
        if len(block) != unpacked:
            msg = f"branch {name!r}: a ZLIB block inflated to {len(block)} bytes, not {unpacked}"
            raise Unsupported(msg)
        blocks.append(block)
        done, pos = done + unpacked, pos + _BLOCK + packed
    if done != size or pos != len(body):
        msg = f"branch {name!r}: a basket inflated to {done} bytes, not {size}, or bytes after its blocks"
        raise Unsupported(msg)
    return blocks[0] if len(blocks) == 1 else b"".join(blocks)


def _assemble(branch: _Branch, parts: list[tuple[np.ndarray, np.ndarray | None]], n: int) -> ak.contents.Content:
    """The baskets' parts as one native-endian layout, as uproot's ``library="ak"`` gives it."""
    if len(parts) == 1:
        values = parts[0][0].astype(branch.target)
    else:
        values = np.empty(sum(len(p[0]) for p in parts), dtype=branch.target)
        at = 0
        for part, _ in parts:
            values[at : at + len(part)] = part
            at += len(part)
    content = ak.contents.NumpyArray(values)
    if not branch.jagged:
        return content
    offsets = np.empty(n + 1, dtype=np.int64)
    row, shift = 0, 0
    for part, starts in parts:
        assert starts is not None
        offsets[row : row + len(starts)] = starts + shift  # each part's first offset is the last's end
        row, shift = row + len(starts) - 1, shift + len(part)
    return ak.contents.ListOffsetArray(ak.index.Index64(offsets), content)
