"""Generator weights: each sample normalized to its cross section x luminosity, by the sum of its generator weights.

With ``weights="genWeight"``, ``cross_sections`` (one per entry of ``files``) and
``luminosity``, an event of entry ``k`` weighs
``cross_sections[k] * luminosity * genWeight / S_k``, where ``S_k`` sums the
generator weights of every event generated for that sample, over *all* the files
of the entry (a pattern such as ``"DY_*.root"`` is one sample in several files).

``S_k`` is read from NanoAOD's ``Runs`` tree (branch ``genEventSumw``, or
``genEventSumw_`` of older NanoAOD; one entry per run or luminosity block, all
summed) where every file of the entry has one; otherwise it is the sum of the
``weights`` branch (or alias) over every entry of those files, before any cut,
``nevts`` or split, leaving out values that are not finite. The choice is logged
at INFO, naming the files. Parquet, CSV, JSON lines and Avro files have no
``Runs`` tree: their ``weights`` are summed.

The factor ``cross_sections[k] * luminosity / S_k`` of each file is then used
as its ``file_weights`` would be: the same as giving those numbers by hand
(:func:`generator_file_weights`). ``cross_sections`` and ``file_weights`` are
not given together.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import awkward as ak
import numpy as np

from ..errors import BranchError, ParameterError
from .formats import open_table
from .formats.root import open_file
from .selection import Selection
from .sources import FileSource

__all__ = [
    "RUNS_BRANCHES",
    "RUNS_TREE",
    "GeneratorOptions",
    "check_generator",
    "entry_sums",
    "generator_file_weights",
    "generator_options",
]

log = logging.getLogger(__name__)

RUNS_TREE = "Runs"
"""NanoAOD's tree of runs (or luminosity blocks), holding the sums of the generator weights."""
RUNS_BRANCHES = ("genEventSumw", "genEventSumw_")
"""The branch of :data:`RUNS_TREE` summing the generator weights: current NanoAOD's, then older NanoAOD's."""


class GeneratorOptions(Protocol):
    """What :func:`check_generator` and :func:`generator_file_weights` read: :class:`~mlaas4hep.options.Options`."""

    @property
    def cross_sections(self) -> Sequence[float] | None: ...
    @property
    def luminosity(self) -> float | None: ...
    @property
    def weights(self) -> str | None: ...
    @property
    def aliases(self) -> Mapping[str, str] | None: ...
    @property
    def timeout(self) -> float: ...
    @property
    def file_weights(self) -> Sequence[float] | None: ...


def _positive(value: object, name: str) -> float:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = float(value)
        if math.isfinite(number) and number > 0:
            return number
    msg = f"{name} must be a finite positive number, got {value!r}"
    raise ParameterError(msg)


def check_generator(options: GeneratorOptions) -> tuple[float, ...] | None:
    """``options.cross_sections`` as a tuple (or None), checked with ``luminosity`` and the options they need.

    Parameters
    ----------
    options : Options
        Its ``cross_sections`` (one finite positive number per entry of the files), ``luminosity`` (finite,
        positive), ``weights`` (the generator weight's branch or alias, needed with ``cross_sections``) and
        ``file_weights`` (not with ``cross_sections``).

    Raises
    ------
    ParameterError
        A value that is not finite and positive; ``cross_sections`` without ``luminosity``, ``weights``, or with
        ``file_weights``; ``luminosity`` without ``cross_sections``.

    Examples
    --------
    >>> from mlaas4hep.options import Options
    >>> Options(cross_sections=[2.5, 10], luminosity=1000, weights="genWeight").cross_sections
    (2.5, 10.0)
    """
    cross_sections, luminosity = options.cross_sections, options.luminosity
    if cross_sections is None:
        if luminosity is not None:
            msg = f"luminosity={luminosity!r} needs cross_sections (one per entry of files) to weigh the events"
            raise ParameterError(msg)
        return None
    if isinstance(cross_sections, (str, bytes)) or not isinstance(cross_sections, Sequence):
        msg = f"cross_sections must be finite positive numbers, one per entry of files, got {cross_sections!r}"
        raise ParameterError(msg)
    values = tuple(_positive(x, f"cross_sections[{i}]") for i, x in enumerate(cross_sections))
    if luminosity is None:
        msg = "cross_sections needs luminosity (the integrated luminosity, in the inverse of their unit)"
        raise ParameterError(msg)
    _positive(luminosity, "luminosity")
    if options.weights is None:
        msg = "cross_sections needs weights: the branch (or alias) of the generator weights, e.g. weights='genWeight'"
        raise ParameterError(msg)
    if options.file_weights is not None:
        msg = (
            "cross_sections and file_weights both scale each file's events: give one (cross_sections with "
            "luminosity make the file weights cross section x luminosity / sum of generator weights)"
        )
        raise ParameterError(msg)
    return values


def _runs_sum(source: FileSource, timeout: float) -> float | None:
    """The sum of ``genEventSumw`` over the ``Runs`` tree of a ROOT file; None where it has none."""
    if source.format != "root":
        return None
    file = open_file(source, timeout)
    try:
        classes = {key.split(";")[0]: cls for key, cls in file.classnames().items()}
        if classes.get(RUNS_TREE) != "TTree":
            return None
        runs = file[RUNS_TREE]
        name = next((b for b in RUNS_BRANCHES if b in runs.keys()), None)
        if name is None:
            return None
        values = np.asarray(runs[name].array(library="np"), dtype=np.float64)
        return float(values.sum(dtype=np.float64))
    finally:
        file.close()


def _branch_sum(source: FileSource, weights: str, selection: Selection, timeout: float) -> float:
    """The sum of ``weights`` (a branch or alias) over every entry of ``source``, its non-finite values left out."""
    read = selection.branches([weights], cut=False)
    total = 0.0
    with open_table(source, timeout) as table:
        missing = [b for b in read if b not in {info.name for info in table.branches()}]
        if missing:
            msg = f"weights {weights!r} needs {missing}, not a branch of {source}: no sum of generator weights"
            raise BranchError(msg)
        for arrays in table.iterate(read, "100 MB"):
            derived = selection.derive(arrays, [weights], len(arrays))
            values = derived[weights] if weights in derived else arrays[weights]
            try:
                array = np.asarray(ak.to_numpy(values) if isinstance(values, ak.Array) else values, dtype=np.float64)
            except (ValueError, TypeError) as err:
                msg = f"weights {weights!r} of {source} is not one number per event: {err}"
                raise BranchError(msg) from err
            total += float(array[np.isfinite(array)].sum(dtype=np.float64))
    return total


def entry_sums(
    groups: Sequence[Sequence[FileSource]], weights: str, aliases: Mapping[str, str], timeout: float
) -> list[float]:
    """Per entry of the files, the sum of the generator weights over all its files (see the module's text).

    Parameters
    ----------
    groups : sequence of sequence of FileSource
        Each entry's files (:func:`~mlaas4hep.inputs.sources.expand_sources`).
    weights : str
        The generator weight's branch or alias, summed where a file has no ``Runs`` tree.
    aliases : mapping of str to str
        The aliases, ``weights`` possibly among them.
    timeout : float
        Seconds to wait for a remote server.

    Examples
    --------
    >>> entry_sums([[FileSource("DY_1.root"), FileSource("DY_2.root")]], "genWeight", {}, 30.0)  # doctest: +SKIP
    [1234.5]
    """
    selection = Selection(None, aliases)
    sums = []
    for group in groups:
        runs = [_runs_sum(source, timeout) for source in group]
        names = [str(source) for source in group]
        if all(s is not None for s in runs):
            log.info("sum of generator weights of %s: from the Runs tree's genEventSumw", names)
            sums.append(math.fsum(s for s in runs if s is not None))
            continue
        lacking = [str(source) for source, s in zip(group, runs, strict=True) if s is None]
        log.info(
            "sum of generator weights of %s: summed from the branch %r over all entries (no %s tree with "
            "genEventSumw in %s)",
            names,
            weights,
            RUNS_TREE,
            lacking,
        )
        sums.append(math.fsum(_branch_sum(source, weights, selection, timeout) for source in group))
    return sums


def generator_file_weights(groups: Sequence[Sequence[FileSource]], options: GeneratorOptions) -> tuple[float, ...]:
    """Each file's weight: its entry's cross section x luminosity / the sum of the entry's generator weights.

    Parameters
    ----------
    groups : sequence of sequence of FileSource
        Each entry's files, one cross section per entry.
    options : Options
        ``cross_sections``, ``luminosity``, ``weights``, ``aliases`` and ``timeout``.

    Returns
    -------
    tuple of float
        One factor per file, in the files' order: what ``file_weights`` would be.

    Raises
    ------
    ParameterError
        Not one cross section per entry, or an entry whose generator weights sum to zero, less, or not a number.

    Examples
    --------
    >>> groups = [[FileSource("DY_1.root"), FileSource("DY_2.root")], [FileSource("tt.root")]]
    >>> generator_file_weights(groups, options)  # doctest: +SKIP
    (0.0123, 0.0123, 0.0045)
    """
    assert options.cross_sections is not None and options.luminosity is not None and options.weights is not None
    if len(options.cross_sections) != len(groups):
        msg = (
            f"got {len(options.cross_sections)} cross_sections for {len(groups)} entries of files; give one per "
            "entry (a pattern's goes to every file it matches)"
        )
        raise ParameterError(msg)
    sums = entry_sums(groups, options.weights, options.aliases or {}, options.timeout)
    factors: list[float] = []
    for group, xsec, total in zip(groups, options.cross_sections, sums, strict=True):
        if not (math.isfinite(total) and total > 0):
            msg = (
                f"the generator weights of {[str(s) for s in group]} sum to {total!r}: cross_sections needs a "
                "positive sum to normalize by"
            )
            raise ParameterError(msg)
        factors.extend([xsec * float(options.luminosity) / total] * len(group))
    return tuple(factors)


def generator_options(groups: Sequence[Sequence[FileSource]], options: GeneratorOptions) -> dict[str, Any]:
    """The options that replace ``cross_sections`` and ``luminosity``: their ``file_weights``, one per file.

    Empty without ``cross_sections``. What :func:`~mlaas4hep.stream.prepare.prepare` serves is then exactly what
    these ``file_weights`` given by hand serve (see :func:`generator_file_weights`).

    Examples
    --------
    >>> from mlaas4hep.options import Options
    >>> generator_options([[FileSource("tt.root")]], Options())
    {}
    """
    if options.cross_sections is None:
        return {}
    return {"file_weights": generator_file_weights(groups, options), "cross_sections": None, "luminosity": None}
