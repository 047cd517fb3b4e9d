"""ZLIB baskets decompressed with ISA-L: the same bytes as the standard library's zlib, in less time.

Many ROOT files are ZLIB-compressed (uproot writes ZLIB by default), and
decompressing their baskets is a large part of what reading them costs. uproot
can decompress ZLIB with the standard library's ``zlib``, with ISA-L (Intel's
assembly implementation of deflate, the ``isal`` package, a dependency of
mlaas4hep) or with libdeflate (the ``deflate`` package). ISA-L inflates the
same streams faster (a raw read of the demo files ran 1.4x faster) and, like
``zlib``, checks each stream's checksum and lets other threads run meanwhile.

When mlaas4hep first opens a ROOT file, it has uproot use ISA-L, unless

* the user chose a library already: with :func:`use_zlib`, or on uproot
  (``uproot.compression._decompress_ZLIB.library``, the object uproot's reads
  use, or the class attribute ``_DecompressZLIB.library``, even after
  mlaas4hep's choice);
* the environment variable ``MLAAS4HEP_ZLIB`` names a library (``zlib`` keeps
  the standard library's);
* ``isal`` cannot be imported, or this uproot has no such setting (then
  nothing changes).

The setting is uproot's, for the whole process and the processes it forks:
the user's own uproot reads get faster too, and read the same numbers. uproot's
writing is not affected. A library chosen with :func:`use_zlib` travels with
the first pass's tasks to processes started afresh (a Dask cluster, a
``spawn`` process pool: :func:`~mlaas4hep.inputs.executors.map_files`);
mlaas4hep never writes the environment.

Examples
--------
>>> from mlaas4hep import use_zlib, zlib_library
>>> use_zlib("zlib")  # the standard library's zlib from now on
>>> zlib_library()
'zlib'
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import zlib
from collections.abc import Callable
from typing import Any, cast

import uproot.compression

from ...errors import ParameterError

__all__ = ["ENVIRONMENT", "LIBRARIES", "chosen_zlib", "default_zlib", "inflater", "use_zlib", "zlib_library"]

log = logging.getLogger(__name__)

LIBRARIES = ("zlib", "isal", "deflate")
"""Libraries uproot can decompress ZLIB baskets with, as :func:`use_zlib` accepts them."""

ENVIRONMENT = "MLAAS4HEP_ZLIB"
"""Environment variable naming the library to use (one of :data:`LIBRARIES`), set by the user."""

_MODULES = {"zlib": "zlib", "isal": "isal.isal_zlib", "deflate": "deflate"}
_lock = threading.Lock()
_decided = False  # whether the library was chosen in this process (by default_zlib or use_zlib)
_ours = False  # whether the library in use is the default that default_zlib set
_chosen: str | None = None  # the library given to use_zlib in this process


def _decompressor() -> Any:
    """The object whose ``library`` uproot's ZLIB reads use, or None if this uproot has none."""
    decompressor = getattr(uproot.compression, "_decompress_ZLIB", None)
    return decompressor if hasattr(decompressor, "library") else None


def _importable(library: str) -> bool:
    try:
        importlib.import_module(_MODULES[library])
    except ImportError:
        return False
    return True


def zlib_library() -> str:
    """The library uproot decompresses ZLIB baskets with in this process.

    Returns
    -------
    str
        One of :data:`LIBRARIES` (``"zlib"`` where this uproot cannot choose).
    """
    decompressor = _decompressor()
    return "zlib" if decompressor is None else str(decompressor.library)


def inflater() -> Callable[[Any, int], bytes]:
    """A function inflating one ZLIB stream (bytes-like, with its header) of a known size, with :func:`zlib_library`.

    It is uproot's own (the object its ZLIB reads call, which follows
    :func:`use_zlib` and :data:`ENVIRONMENT`), so that mlaas4hep's basket reads
    (:mod:`~mlaas4hep.inputs.formats.baskets`) inflate with the same library;
    the standard library's ``zlib`` where this uproot has no such object.

    Examples
    --------
    >>> import zlib
    >>> inflater()(zlib.compress(b"abc" * 3), 9)
    b'abcabcabc'
    """
    decompressor = _decompressor()
    if decompressor is None:
        return lambda data, size: zlib.decompress(data, 15, max(size, 1))
    return cast("Callable[[Any, int], bytes]", decompressor.decompress)


def use_zlib(library: str) -> None:
    """Have uproot decompress ZLIB baskets with ``library`` from now on, in this process and its tasks' processes.

    mlaas4hep then leaves the choice alone (see :func:`default_zlib`). The
    first pass's tasks carry it to processes that start afresh (``spawn``,
    Dask workers), where it is chosen again (:func:`chosen_zlib`); the
    environment is left as it is.

    Parameters
    ----------
    library : str
        One of :data:`LIBRARIES`.

    Raises
    ------
    ParameterError
        If ``library`` is not one of :data:`LIBRARIES`, its package cannot be
        imported, or this uproot cannot choose (only ``"zlib"`` then).

    Examples
    --------
    >>> use_zlib("zlib")
    >>> zlib_library()
    'zlib'
    """
    global _decided, _ours, _chosen
    _check(library, "library")
    decompressor = _decompressor()
    if decompressor is None and library != "zlib":
        msg = f"library={library!r}: this uproot ({uproot.__version__}) decompresses ZLIB only with zlib"
        raise ParameterError(msg)
    with _lock:
        if decompressor is not None:
            decompressor.library = library
        _decided, _ours, _chosen = True, False, library


def chosen_zlib() -> str | None:
    """The library given to :func:`use_zlib` in this process, or None if it was not called.

    Examples
    --------
    >>> use_zlib("zlib")
    >>> chosen_zlib()
    'zlib'
    """
    return _chosen


def _check(library: str, where: str) -> None:
    """Refuse a library not in :data:`LIBRARIES`, or one that cannot be imported (``where`` names its source)."""
    if library not in LIBRARIES:
        msg = f"{where} must be one of {LIBRARIES}, got {library!r}"
        raise ParameterError(msg)
    if not _importable(library):
        msg = f"{where}={library!r} needs the {library!r} package: pip install {library}"
        raise ParameterError(msg)


def default_zlib() -> str:
    """Choose ISA-L for uproot's ZLIB decompression, once per process, unless told otherwise; return the library used.

    Called before mlaas4hep opens a ROOT file. Nothing changes if the library
    was chosen already (:func:`use_zlib`, or uproot's setting is not its
    default ``"zlib"``), if :data:`ENVIRONMENT` names one (that one is used), if
    ``isal`` cannot be imported, or if this uproot cannot choose. A library set
    on uproot's class after this default is then used instead of it.

    Raises
    ------
    ParameterError
        If :data:`ENVIRONMENT` names no library of :data:`LIBRARIES`, or one that cannot be imported.
    """
    global _decided, _ours
    decompressor = _decompressor()
    if decompressor is None:
        return "zlib"
    with _lock:
        if _ours and type(decompressor).library != "zlib":  # chosen on uproot's class since: that one
            vars(decompressor).pop("library", None)
            _ours = False
        if not _decided:
            wanted = os.environ.get(ENVIRONMENT, "").strip().lower()
            if "library" in vars(decompressor) or decompressor.library != "zlib":
                log.debug("uproot decompresses ZLIB with %s, as chosen before", decompressor.library)
            elif wanted:
                _check(wanted, ENVIRONMENT)  # refused at every open until it is put right
                decompressor.library = wanted
                log.debug("ZLIB decompressed with %s (%s)", wanted, ENVIRONMENT)
            elif not _importable("isal"):
                log.debug("ZLIB decompressed with zlib: the isal package cannot be imported")
            else:
                decompressor.library, _ours = "isal", True
                log.debug("ZLIB baskets are decompressed with ISA-L (isal); %s=zlib keeps zlib", ENVIRONMENT)
            _decided = True
        return str(decompressor.library)
