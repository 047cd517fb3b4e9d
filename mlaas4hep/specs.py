"""Specs: what the first pass over the files learns about every branch.

:class:`SpecBuilder` reads the selected branches of all files once, in steps of
bounded size, and returns :class:`Specs`: per branch its kind, dtype, range,
mean and standard deviation, and for jagged branches the distribution of list
lengths; per file its entries and a fingerprint. Specs round-trip through JSON
and are reused while the fingerprints still match the files.

Statistics are kept in a form that merges associatively (count, mean, sum of
squared deviations, min, max, length histogram), so specs of parts of a dataset
combine into the specs of the whole.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
import os
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ._arrays import flat_values, jagged_parts
from .errors import BranchError, ParameterError, SkippedBranchWarning, SpecsError, SpecsMismatchWarning, TreeError
from .executors import map_files
from .selection import Selection, encode_mask, kind_of
from .sources import DEFAULT_TREE, BranchInfo, FileSource, describe_branches, file_uuid, open_tree, parse_sources

__all__ = ["DEFAULT_EXCLUDE", "BranchSpec", "FileSpec", "SpecBuilder", "Specs"]

log = logging.getLogger(__name__)

DEFAULT_EXCLUDE: tuple[str, ...] = ("run", "event", "luminosityBlock")
"""Branches left out unless asked for: the event identifier of CMS NanoAOD."""

QUANTILES: tuple[float, ...] = (0.5, 0.9, 0.99, 0.999)
"""Length quantiles reported for jagged branches."""

_FORMAT = "mlaas4hep-specs"

# Specs made in this process, by file fingerprints and branch selection: building a
# training and a validation sequence over the same files makes one first pass, not two.
_RECENT: OrderedDict[tuple[tuple[Any, ...], str], Specs] = OrderedDict()
_VERSION = 1


@dataclass(frozen=True)
class BranchSpec:
    """Statistics of one branch over all files.

    Values that are not finite (NaN, inf) are left out of every statistic and
    counted in ``nonfinite``. For jagged branches the statistics are over all
    elements of all lists, and ``length_hist[n]`` counts the events whose list
    has length ``n``.
    """

    name: str
    kind: str
    dtype: str
    count: int = 0
    nonfinite: int = 0
    min: float = math.inf
    max: float = -math.inf
    mean: float = 0.0
    m2: float = 0.0
    length_hist: tuple[int, ...] = ()
    declared_max_length: int | None = None

    @property
    def std(self) -> float:
        """Population standard deviation of the finite values."""
        return math.sqrt(self.m2 / self.count) if self.count else 0.0

    @property
    def is_jagged(self) -> bool:
        """Whether each event holds a variable-length list."""
        return self.kind == "jagged"

    @property
    def max_length(self) -> int:
        """Longest list seen (0 for flat branches)."""
        if not self.is_jagged:
            return 0
        if self.declared_max_length is not None:
            return self.declared_max_length
        return max(len(self.length_hist) - 1, 0)

    def length_quantile(self, q: float) -> int:
        """Smallest length ``n`` such that a fraction ``q`` of events have at most ``n`` entries."""
        if not 0 < q <= 1:
            msg = f"length quantile must be in (0, 1], got {q!r}"
            raise ParameterError(msg)
        hist = np.asarray(self.length_hist, dtype=np.float64)
        if not self.is_jagged or hist.sum() == 0:
            return self.max_length
        cdf = np.cumsum(hist) / hist.sum()
        return int(np.searchsorted(cdf, q - 1e-12))

    @property
    def length_quantiles(self) -> dict[float, int]:
        """Length at the quantiles 0.5, 0.9, 0.99 and 0.999."""
        return {q: self.length_quantile(q) for q in QUANTILES}

    def merge(self, other: BranchSpec) -> BranchSpec:
        """Combine the statistics of two disjoint sets of events."""
        if other.kind != self.kind:
            msg = f"branch {self.name!r} is {self.kind} in some files and {other.kind} in others"
            raise BranchError(msg)
        n = self.count + other.count
        if n:
            delta = other.mean - self.mean
            mean = self.mean + delta * other.count / n
            m2 = self.m2 + other.m2 + delta * delta * self.count * other.count / n
        else:
            mean, m2 = 0.0, 0.0
        size = max(len(self.length_hist), len(other.length_hist))
        hist = np.zeros(size, dtype=np.int64)
        hist[: len(self.length_hist)] += np.asarray(self.length_hist, dtype=np.int64)
        hist[: len(other.length_hist)] += np.asarray(other.length_hist, dtype=np.int64)
        declared = [d for d in (self.declared_max_length, other.declared_max_length) if d is not None]
        return replace(
            self,
            dtype=self.dtype if self.dtype == other.dtype else str(np.result_type(self.dtype, other.dtype)),
            count=n,
            nonfinite=self.nonfinite + other.nonfinite,
            min=min(self.min, other.min),
            max=max(self.max, other.max),
            mean=mean,
            m2=m2,
            length_hist=tuple(int(x) for x in hist),
            declared_max_length=max(declared) if declared else None,
        )

    @classmethod
    def from_values(
        cls, name: str, kind: str, dtype: str, values: np.ndarray, counts: np.ndarray | None = None
    ) -> BranchSpec:
        """Statistics of one step of data: ``values`` (all elements) and list ``counts`` if jagged."""
        v = np.asarray(values, dtype=np.float64)
        finite = np.isfinite(v)
        nonfinite = int(v.size - np.count_nonzero(finite))
        if nonfinite:
            v = v[finite]
        hist: tuple[int, ...] = ()
        if counts is not None:
            hist = tuple(int(x) for x in np.bincount(np.asarray(counts, dtype=np.int64)))
        if v.size == 0:
            return cls(name, kind, dtype, nonfinite=nonfinite, length_hist=hist)
        mean = float(v.mean())
        return cls(
            name,
            kind,
            dtype,
            count=int(v.size),
            nonfinite=nonfinite,
            min=float(v.min()),
            max=float(v.max()),
            mean=mean,
            m2=float(np.square(v - mean).sum()),
            length_hist=hist,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (derived values included for people reading the file)."""
        out: dict[str, Any] = {
            "kind": self.kind,
            "dtype": self.dtype,
            "count": self.count,
            "nonfinite": self.nonfinite,
            "min": self.min if self.count else None,
            "max": self.max if self.count else None,
            "mean": self.mean,
            "std": self.std,
            "m2": self.m2,
        }
        if self.is_jagged:
            out["max_length"] = self.max_length
            out["length_quantiles"] = {str(q): n for q, n in self.length_quantiles.items()}
            out["length_hist"] = list(self.length_hist)
        return out

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any]) -> BranchSpec:
        """Inverse of :meth:`to_dict`."""
        count = int(data.get("count", 0))
        hist = tuple(int(x) for x in data.get("length_hist", ()))
        declared = data.get("max_length") if not hist and data.get("kind") == "jagged" else None
        return cls(
            name=name,
            kind=str(data["kind"]),
            dtype=str(data.get("dtype", "float64")),
            count=count,
            nonfinite=int(data.get("nonfinite", 0)),
            min=float(data["min"]) if data.get("min") is not None else math.inf,
            max=float(data["max"]) if data.get("max") is not None else -math.inf,
            mean=float(data.get("mean", 0.0)),
            m2=float(data.get("m2", 0.0)),
            length_hist=hist,
            declared_max_length=int(declared) if declared is not None else None,
        )


@dataclass(frozen=True)
class FileSpec:
    """One input file as the specs saw it: entries and a fingerprint.

    With a cut, ``selected`` counts the entries that pass it and ``mask`` says
    which ones they are (see :func:`mlaas4hep.selection.encode_mask`); both are
    None without a cut.
    """

    path: str
    tree: str
    entries: int
    size: int | None = None
    mtime: float | None = None
    uuid: str | None = None
    selected: int | None = None
    mask: str | None = None

    @property
    def events(self) -> int:
        """Events this file contributes: those passing the cut, or all its entries."""
        return self.entries if self.selected is None else self.selected

    def mismatch(self, other: FileSpec) -> str | None:
        """Why ``other`` (the file as it is now) is not the file these specs describe, or None."""
        if (self.path, self.tree) != (other.path, other.tree):
            return f"{other.path}:{other.tree} is not {self.path}:{self.tree}"
        if self.entries != other.entries:
            return f"{other.path} has {other.entries} entries, specs say {self.entries}"
        if self.size is not None and other.size is not None and self.size != other.size:
            return f"{other.path} is {other.size} bytes, specs say {self.size}"
        if self.uuid is not None and other.uuid is not None:
            if self.uuid != other.uuid:
                return f"{other.path} has ROOT UUID {other.uuid}, specs say {self.uuid}"
        elif self.mtime is not None and other.mtime is not None and self.mtime != other.mtime:
            return f"{other.path} was modified after the specs were made"
        return None


def fingerprint(source: FileSource, file: Any, entries: int) -> FileSpec:
    """Describe a file well enough to notice when it changes."""
    size = mtime = None
    path = source.location
    if not source.is_remote:
        stat = os.stat(path)
        size, mtime = stat.st_size, stat.st_mtime
    return FileSpec(path, source.tree, int(entries), size, mtime, file_uuid(file))


@dataclass(frozen=True)
class Specs:
    """Result of the first pass: branch statistics and the files they came from.

    Feature columns follow the original MLaaS4HEP: flat branches sorted by name,
    then jagged branches sorted by name, each jagged branch taking as many
    columns as its (possibly capped) length.
    """

    branches: Mapping[str, BranchSpec]
    files: tuple[FileSpec, ...] = ()
    skipped: Mapping[str, str] = field(default_factory=dict)
    selection: Mapping[str, Any] = field(default_factory=dict)

    @property
    def flat(self) -> list[str]:
        """Names of the flat branches, sorted."""
        return sorted(n for n, b in self.branches.items() if not b.is_jagged)

    @property
    def jagged(self) -> list[str]:
        """Names of the jagged branches, sorted."""
        return sorted(n for n, b in self.branches.items() if b.is_jagged)

    @property
    def names(self) -> list[str]:
        """All branch names in column order (flat, then jagged)."""
        return self.flat + self.jagged

    @property
    def n_events(self) -> int:
        """Total events over all files (those passing the cut, when there is one)."""
        return sum(f.events for f in self.files)

    @property
    def num_features(self) -> int:
        """Columns when every jagged branch is padded to its maximum length."""
        return len(self.flat) + sum(self.branches[n].max_length for n in self.jagged)

    def __getitem__(self, name: str) -> BranchSpec:
        try:
            return self.branches[name]
        except KeyError:
            msg = f"no branch {name!r} in specs; branches: {self.names}"
            raise BranchError(msg) from None

    def summary(self) -> str:
        """One line as the original printed after its first pass."""
        return (
            f"{self.n_events} events, ({len(self.flat)}-flat, {len(self.jagged)}-jagged) branches, "
            f"{self.num_features} attrs"
        )

    def mismatch(self, files: Sequence[FileSpec]) -> str | None:
        """Why these specs do not describe ``files``, or None when they do."""
        if not self.files:
            return None
        if len(files) != len(self.files):
            return f"specs describe {len(self.files)} files, {len(files)} given"
        for mine, theirs in zip(self.files, files):
            reason = mine.mismatch(theirs)
            if reason:
                return reason
        return None

    def select(self, names: Iterable[str]) -> Specs:
        """Specs restricted to ``names``."""
        names = list(names)
        missing = [n for n in names if n not in self.branches]
        if missing:
            msg = f"specs lack the branches {missing}"
            raise SpecsError(msg)
        return replace(self, branches={n: self.branches[n] for n in names})

    def merge(self, other: Specs) -> Specs:
        """Combine specs of two disjoint sets of files."""
        branches = dict(self.branches)
        for name, spec in other.branches.items():
            branches[name] = branches[name].merge(spec) if name in branches else spec
        return Specs(branches, self.files + other.files, {**self.skipped, **other.skipped}, self.selection)

    # -- JSON ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "summary": self.summary(),
            "files": [f.__dict__ for f in self.files],
            "branches": {n: self.branches[n].to_dict() for n in self.names},
            "skipped": dict(self.skipped),
            "selection": dict(self.selection),
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the specs as JSON, atomically.

        The text goes to a temporary file in the same directory, which then
        replaces ``path`` in one step (:func:`os.replace`): workers that read a
        shared specs file while another writes it see the old file or the new
        one, never a partial one.
        """
        target = Path(path)
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False, default=_json_default)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            tmp.write_text(text)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        log.info("wrote specs to %s", path)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Specs:
        """Inverse of :meth:`to_dict`; also reads the original MLaaS4HEP's ``global-specs.json``."""
        if "jdim" in data and "minv" in data:
            return _from_original(data)
        if data.get("format") != _FORMAT:
            msg = "not a specs file: it has neither mlaas4hep's 'format' key nor the original's 'jdim'/'minv'"
            raise SpecsError(msg)
        branches = {n: BranchSpec.from_dict(n, d) for n, d in data["branches"].items()}
        files = tuple(FileSpec(**f) for f in data.get("files", ()))
        return cls(branches, files, dict(data.get("skipped", {})), dict(data.get("selection", {})))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Specs:
        """Read specs written by :meth:`save` or by the original MLaaS4HEP."""
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError as err:
            msg = f"specs file {os.fspath(path)!r} does not exist"
            raise SpecsError(msg) from err
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            msg = f"specs file {os.fspath(path)!r} is not valid JSON: {err}"
            raise SpecsError(msg) from err
        if not isinstance(data, dict):
            msg = f"specs file {os.fspath(path)!r} holds a {type(data).__name__}, not a JSON object"
            raise SpecsError(msg)
        try:
            return cls.from_dict(data)
        except SpecsError as err:
            msg = f"specs file {os.fspath(path)!r}: {err}"
            raise SpecsError(msg) from err
        except (KeyError, TypeError, ValueError) as err:
            msg = f"specs file {os.fspath(path)!r} is malformed: {type(err).__name__}: {err}"
            raise SpecsError(msg) from err


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    msg = f"cannot write {type(obj).__name__} to JSON"
    raise TypeError(msg)


def _from_original(data: Mapping[str, Any]) -> Specs:
    """Specs from the original's global-specs.json (jdim, minv, maxv, fkeys, jkeys, nans)."""
    branches = {}
    for name in data.get("fkeys", []):
        branches[name] = BranchSpec(
            name, "flat", "float64", min=float(data["minv"][name]), max=float(data["maxv"][name])
        )
    for name in data.get("jkeys", []):
        branches[name] = BranchSpec(
            name,
            "jagged",
            "float64",
            min=float(data["minv"][name]),
            max=float(data["maxv"][name]),
            declared_max_length=int(data["jdim"][name]),
        )
    return Specs(branches)


def _match(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def select_branches(
    infos: Sequence[BranchInfo],
    include: Sequence[str] | None,
    exclude: Sequence[str],
    where: str,
) -> tuple[list[BranchInfo], dict[str, str]]:
    """Apply include/exclude patterns; return usable branches and skipped ones with reasons.

    A branch named explicitly in ``include`` (not through a glob pattern) that
    cannot become a feature is an error rather than a warning.
    """
    by_name = {i.name: i for i in infos}
    if include:
        exact = [p for p in include if not any(c in p for c in "*?[")]
        missing = [p for p in exact if p not in by_name]
        if missing:
            msg = f"branches {missing} not found in {where}"
            raise BranchError(msg)
        for p in include:
            if p not in exact and not any(fnmatch.fnmatchcase(n, p) for n in by_name):
                msg = f"pattern {p!r} matches no branch in {where}"
                raise BranchError(msg)
        chosen = [i for i in infos if _match(i.name, include)]
        bad_exact = [by_name[p] for p in exact if by_name[p].kind not in ("flat", "jagged")]
        if bad_exact:
            what = ", ".join(f"{i.name!r} ({i.kind})" for i in bad_exact)
            msg = f"selected branches cannot become numeric features: {what} in {where}"
            raise BranchError(msg)
    else:
        chosen = list(infos)
    chosen = [i for i in chosen if not _match(i.name, exclude)]
    usable = [i for i in chosen if i.kind in ("flat", "jagged")]
    skipped = {i.name: i.kind for i in chosen if i.kind not in ("flat", "jagged")}
    return usable, skipped


class SpecBuilder:
    """First pass over the input files: learn every selected branch's specs.

    Parameters
    ----------
    files : path, URL, or sequence of them
        Input files; ``"file.root:tree"`` names the tree per file.
    tree : str
        Tree name for files that do not name one (default ``"Events"``).
    branches : sequence of str, optional
        Branches to use: names or glob patterns, as uproot's ``filter_name``.
        Default: every numeric flat or jagged branch.
    exclude : sequence of str
        Names or patterns to leave out; default ``("run", "event", "luminosityBlock")``.
    redirector : str
        Prefix for bare file names (the original's ``redirector``).
    step_size : int or str
        Events per read, or a size such as ``"100 MB"`` as in :func:`uproot.iterate`;
        memory stays bounded by one step whatever the file size.
    common_branches : bool
        When the files' selected branches differ, use those common to all files
        instead of raising :class:`~mlaas4hep.errors.BranchError` (default False).
    cut : str, optional
        Keep only the events where this expression is true, e.g.
        ``"(nMuon >= 1) & any(Jet_pt > 30)"`` (see :class:`~mlaas4hep.selection.Selection`).
        The statistics are those of the surviving events, and each file's
        :class:`FileSpec` records how many survive and which.
    aliases : mapping of str to str, optional
        Derived branches, e.g. ``{"log_Jet_pt": "log(Jet_pt)"}``: features like
        any other (flat or jagged by their values) unless ``exclude`` names them.
    executor : {"threads", "serial"}, concurrent.futures.Executor, dask.distributed.Client, or None
        Where the files are scanned, one task per file (see :func:`mlaas4hep.executors.map_files`):
        None or ``"threads"`` is a local thread pool with a thread per core
        (uproot releases the GIL while it decompresses); a ``dask.distributed.Client``
        runs the same scan on any Dask cluster (``pip install mlaas4hep[dask]``).
        The per-file statistics are merged in file order, so the specs are the
        same, to the last bit, whatever the executor.
    progress : bool or None
        Show a bar over the files (tqdm, when installed); None (default) shows
        one for scans of 20 files or more when stderr is a terminal. Without a
        bar, progress is logged at INFO level.

    Notes
    -----
    The builder is sent to Dask workers with each task, so it holds plain data
    only (the executor itself is left behind).

    Examples
    --------
    >>> specs = SpecBuilder(["sig.root", "bkg.root"], exclude=["run", "event"]).build()  # doctest: +SKIP
    >>> from dask.distributed import Client  # doctest: +SKIP
    >>> specs = SpecBuilder(files, executor=Client("tcp://scheduler:8786")).build("specs.json")  # doctest: +SKIP
    >>> specs.summary()  # doctest: +SKIP
    '20000 events, (18-flat, 48-jagged) branches, 1801 attrs'
    """

    def __init__(
        self,
        files: str | os.PathLike[str] | Iterable[str | os.PathLike[str] | FileSource],
        *,
        tree: str = DEFAULT_TREE,
        branches: Sequence[str] | None = None,
        exclude: Sequence[str] = DEFAULT_EXCLUDE,
        redirector: str = "",
        step_size: int | str = "100 MB",
        common_branches: bool = False,
        executor: Any = None,
        progress: bool | None = None,
        cut: str | None = None,
        aliases: Mapping[str, str] | None = None,
    ) -> None:
        self.cuts = Selection(cut, aliases or {})
        self.sources = parse_sources(files, tree, redirector)
        if not self.sources:
            msg = "no input files given"
            raise ParameterError(msg)
        if isinstance(branches, str):
            branches = [branches]
        if isinstance(exclude, str):
            exclude = [exclude]
        self.include = [b for b in branches if b not in self.cuts.aliases] or None if branches else None
        self.exclude = list(exclude or ())
        self.step_size = step_size
        self.common_branches = bool(common_branches)
        self.executor = executor
        self.progress = progress

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["executor"] = None  # a Dask client or a pool stays with the caller
        return state

    def _map(self, fn: Any, *args: Any, desc: str) -> list[Any]:
        """``[fn(source, *args) for source in self.sources]`` on the builder's executor."""
        return map_files(fn, self.sources, *args, executor=self.executor, progress=self.progress, desc=desc)

    def fingerprints(self) -> list[FileSpec]:
        """Open each file (without reading data) and describe it, on the builder's executor."""
        return self._map(_fingerprint_task, desc="fingerprints")

    def build(self, cache: str | os.PathLike[str] | None = None) -> Specs:
        """Return specs of the files, from ``cache`` when it still matches them.

        Parameters
        ----------
        cache : path, optional
            JSON file to reuse and (re)write. A cache made from other files, or
            from files that changed since, is rebuilt with a
            :class:`~mlaas4hep.errors.SpecsMismatchWarning`.
        """
        if cache is not None and Path(cache).exists():
            cached = Specs.load(cache)
            reason = self._reuse_problem(cached)
            if reason is None:
                log.info("reusing specs from %s", cache)
                return cached
            warnings.warn(f"rebuilding specs: {os.fspath(cache)!r} {reason}", SpecsMismatchWarning, stacklevel=2)
        key = (tuple(self.fingerprints()), json.dumps(self.selection, sort_keys=True))
        specs = _RECENT.get(key)
        if specs is None:
            specs = self._scan()
            _RECENT[key] = specs
            while len(_RECENT) > 8:
                _RECENT.popitem(last=False)
        else:
            log.info("reusing specs made in this session for the same files and selection")
        if specs.skipped:
            warnings.warn(
                "skipping branches that cannot become numeric features: "
                + ", ".join(f"{n} ({k})" for n, k in sorted(specs.skipped.items())),
                SkippedBranchWarning,
                stacklevel=2,
            )
        if cache is not None:
            specs.save(cache)
        return specs

    def _reuse_problem(self, cached: Specs) -> str | None:
        if not cached.files:
            return "has no file fingerprints"
        reason = cached.mismatch(self.fingerprints())
        if reason:
            return f"does not match the input files: {reason}"
        if cached.selection != self.selection:
            return f"was made with another branch selection ({dict(cached.selection)} instead of {self.selection})"
        return None

    @property
    def selection(self) -> dict[str, list[str] | None]:
        """The include and exclude patterns, as recorded in the specs."""
        selection: dict[str, Any] = {"branches": self.include, "exclude": self.exclude}
        if self.common_branches:
            selection["common_branches"] = True
        selection.update(self.cuts.to_dict())  # specs made without the cut are not reused with it
        return selection

    def _scan(self) -> Specs:
        t0 = time.perf_counter()
        include = self._common_include()
        parts = self._map(_scan_task, self, include, desc="first pass")
        total = parts[0]
        for part in parts[1:]:  # in file order, whatever order the tasks finished in
            total = total.merge(part)
        log.info("first pass: %s in %.2f s", total.summary(), time.perf_counter() - t0)
        return total

    def _usable(
        self, source: FileSource, obj: Any, include: Sequence[str] | None
    ) -> tuple[list[BranchInfo], dict[str, str]]:
        if int(obj.num_entries) == 0:
            msg = f"tree {source.tree!r} in {source.path!r} has 0 entries"
            raise TreeError(msg)
        infos = describe_branches(obj)
        _check_selection(self.cuts, infos, str(source))
        usable, skipped = select_branches(infos, include, self.exclude, str(source))
        if not usable:
            msg = f"no numeric branch left to use in {source} after include={include} exclude={self.exclude}"
            raise BranchError(msg)
        return usable, skipped

    def _common_include(self) -> list[str] | None:
        """Check, before reading data, that every file has the same selected branches.

        Returns the include list to scan with: the user's, or with
        ``common_branches`` the names common to all files when they differ.
        """
        names: list[list[str]] = self._map(_usable_task, self, self.include, desc="branches")
        union = sorted(set().union(*names))
        if all(len(n) == len(union) for n in names):
            return self.include
        common = [n for n in names[0] if all(n in other for other in names)]
        if not self.common_branches:
            lacks = "; ".join(
                f"{s.path} lacks {sorted(set(union) - set(n))}"
                for s, n in zip(self.sources, names)
                if len(n) < len(union)
            )
            msg = (
                f"branch sets differ: {lacks}; select branches present in every file, "
                f"or pass common_branches=True to use the {len(common)} common to all"
            )
            raise BranchError(msg)
        if not common:
            msg = f"no branch common to all of {[s.path for s in self.sources]}"
            raise BranchError(msg)
        log.info(
            "using the %d branches common to all files; leaving out %s", len(common), sorted(set(union) - set(common))
        )
        return common

    def _scan_file(self, source: FileSource, include: Sequence[str] | None) -> Specs:
        file, obj = open_tree(source)
        try:
            entries = int(obj.num_entries)
            usable, skipped = self._usable(source, obj, include)
            kinds = {i.name: i for i in usable}
            derived = [a for a in self.cuts.aliases if not _match(a, self.exclude)]
            read = list(dict.fromkeys([*kinds, *self.cuts.branches(derived)]))
            masks: list[np.ndarray] = []
            parts: dict[str, BranchSpec] = {}
            t0 = time.perf_counter()
            for arrays in obj.iterate(filter_name=read, step_size=self.step_size, library="ak"):
                step_kinds = kinds
                if self.cuts:
                    arrays, step_kinds, keep = _apply_selection(self.cuts, arrays, kinds, derived)
                    masks.append(keep)
                for name, info in step_kinds.items():
                    if info.kind == "jagged":
                        counts, values = jagged_parts(arrays[name])
                        step = BranchSpec.from_values(name, "jagged", info.dtype, values, counts)
                    else:
                        step = BranchSpec.from_values(name, "flat", info.dtype, flat_values(arrays[name]))
                    parts[name] = parts[name].merge(step) if name in parts else step
            log.info(
                "scanned %s: %d entries, %d branches in %.2f s", source, entries, len(kinds), time.perf_counter() - t0
            )
            described = fingerprint(source, file, entries)
            if self.cuts.cut is not None:
                mask = np.concatenate(masks) if masks else np.zeros(0, dtype=bool)
                described = replace(described, selected=int(np.count_nonzero(mask)), mask=encode_mask(mask))
                log.info("cut %r keeps %d of %d entries of %s", self.cuts.cut, described.selected, entries, source)
            return Specs(parts, (described,), skipped, self.selection)
        finally:
            file.close()


def scan_selection(
    sources: Sequence[FileSource], selection: Selection, step_size: int | str = "100 MB"
) -> list[np.ndarray]:
    """Which entries of each file pass ``selection``'s cut: one boolean array per file.

    Reads only the branches the cut needs, in steps of ``step_size``; used when
    the specs at hand did not record the cut's result for these files.
    """
    masks = []
    for source in sources:
        file, obj = open_tree(source)
        try:
            _check_selection(selection, describe_branches(obj), str(source))
            steps = obj.iterate(filter_name=selection.branches(), step_size=step_size, library="ak")
            parts = [selection.mask(arrays, len(arrays)) for arrays in steps]
        finally:
            file.close()
        masks.append(np.concatenate(parts) if parts else np.zeros(0, dtype=bool))
    return masks


def _check_selection(cuts: Selection, infos: Sequence[BranchInfo], where: str) -> None:
    """The cut and aliases name only branches of the file, and no alias hides a branch."""
    names = {i.name for i in infos}
    cuts.check(names, where)
    hidden = sorted(set(cuts.aliases) & names)
    if hidden:
        msg = f"aliases {hidden} have the names of branches of {where}; give them other names"
        raise BranchError(msg)


def _apply_selection(
    cuts: Selection, arrays: Any, kinds: Mapping[str, BranchInfo], derived: Sequence[str]
) -> tuple[dict[str, Any], dict[str, BranchInfo], np.ndarray]:
    """One step of the first pass after the cut, with the derived branches: (arrays, kinds, mask)."""
    n = len(arrays)
    keep = cuts.mask(arrays, n)
    everything = keep.all()
    kept: dict[str, Any] = {name: arrays[name] if everything else arrays[name][keep] for name in kinds}
    step_kinds = dict(kinds)
    for name, values in cuts.derive(arrays, derived, n).items():
        kind, dtype = kind_of(name, values)
        kept[name] = values if everything else values[keep]
        step_kinds[name] = BranchInfo(name, kind, dtype)
    return kept, step_kinds, keep


# -- per-file tasks: top-level functions, so that Dask and process pools can pickle them ---------
def _fingerprint_task(source: FileSource) -> FileSpec:
    """Open ``source`` (reading no data) and describe it."""
    file, obj = open_tree(source)
    try:
        return fingerprint(source, file, obj.num_entries)
    finally:
        file.close()


def _usable_task(source: FileSource, builder: SpecBuilder, include: Sequence[str] | None) -> list[str]:
    """Names of the branches of ``source`` that ``builder`` would use."""
    file, obj = open_tree(source)
    try:
        return [i.name for i in builder._usable(source, obj, include)[0]]
    finally:
        file.close()


def _scan_task(source: FileSource, builder: SpecBuilder, include: Sequence[str] | None) -> Specs:
    """Specs of one file: the unit of work of the first pass, merged in file order afterwards."""
    return builder._scan_file(source, include)
