"""ZLIB baskets decompressed with ISA-L: the same bytes as the standard library's zlib, in half the time.

Many ROOT files are ZLIB-compressed (uproot writes ZLIB by default), and
decompressing their baskets is most of what reading them costs (about 0.35 s
of a 0.59 s read of the demo files). uproot can decompress ZLIB with the
standard library's ``zlib``, or with ISA-L (Intel's assembly implementation of
deflate, the ``isal`` package, a dependency of mlaas4hep), which inflates the
same streams about twice as fast and, like ``zlib``, checks each block's
checksum and lets other threads run meanwhile.

When mlaas4hep first opens a ROOT file, it has uproot use ISA-L, unless the
user chose a library already (with :func:`use_zlib`, or uproot's own setting),
the environment variable ``MLAAS4HEP_ZLIB`` is ``zlib``, or ``isal`` cannot be
imported (then nothing changes). The setting is uproot's, for the whole process
(and the processes it forks): the user's own uproot reads get faster too, and
read the same numbers.

Examples
--------
>>> from mlaas4hep import use_zlib, zlib_library
>>> use_zlib("zlib")  # the standard library's zlib from now on  # doctest: +SKIP
>>> zlib_library()  # doctest: +SKIP
'zlib'
"""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Any

import uproot.compression

from ..errors import ParameterError

__all__ = ["ENVIRONMENT", "LIBRARIES", "default_zlib", "use_zlib", "zlib_library"]

log = logging.getLogger(__name__)

LIBRARIES = ("zlib", "isal")
"""Libraries uproot can decompress ZLIB baskets with, as :func:`use_zlib` accepts them."""

ENVIRONMENT = "MLAAS4HEP_ZLIB"
"""Environment variable that, set to ``zlib``, keeps the standard library's zlib."""

_decided = False  # whether the library was chosen in this process (by default_zlib or use_zlib)


def _decompressor() -> Any:
    """uproot's ZLIB decompressor: the object whose ``library`` its reads use."""
    return uproot.compression._decompress_ZLIB  # where uproot keeps its ZLIB.library setting for reading


def zlib_library() -> str:
    """The library uproot decompresses ZLIB baskets with in this process: ``"zlib"`` or ``"isal"``."""
    return str(_decompressor().library)


def use_zlib(library: str) -> None:
    """Have uproot decompress ZLIB baskets with ``library`` (one of :data:`LIBRARIES`) from now on.

    mlaas4hep then leaves the choice alone (see :func:`default_zlib`).

    Raises
    ------
    ParameterError
        If ``library`` is not one of :data:`LIBRARIES`, or is ``"isal"`` and ``isal`` is not installed.
    """
    global _decided
    if library not in LIBRARIES:
        msg = f"the ZLIB library must be one of {LIBRARIES}, got {library!r}"
        raise ParameterError(msg)
    if library == "isal" and importlib.util.find_spec("isal") is None:
        msg = "ZLIB library 'isal' needs the 'isal' package: pip install isal"
        raise ParameterError(msg)
    _decompressor().library = library
    _decided = True


def default_zlib() -> str:
    """Choose ISA-L for uproot's ZLIB decompression, once per process, unless told otherwise; return the library used.

    Called before mlaas4hep opens a ROOT file. Nothing changes if the library
    was chosen already (:func:`use_zlib`, or uproot's setting is not its
    default ``"zlib"``), if :data:`ENVIRONMENT` is ``zlib``, or if ``isal``
    cannot be imported.
    """
    global _decided
    if not _decided:
        _decided = True
        if zlib_library() != "zlib":
            log.debug("uproot decompresses ZLIB with %s, as chosen before", zlib_library())
        elif os.environ.get(ENVIRONMENT, "").strip().lower() == "zlib":
            log.debug("ZLIB decompressed with zlib (%s=zlib)", ENVIRONMENT)
        elif importlib.util.find_spec("isal") is None:
            log.debug("ZLIB decompressed with zlib: the isal package is not installed")
        else:
            _decompressor().library = "isal"
            log.debug("ZLIB baskets are decompressed with ISA-L (isal); %s=zlib keeps zlib", ENVIRONMENT)
    return zlib_library()
