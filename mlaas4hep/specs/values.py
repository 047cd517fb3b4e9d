"""Specs: what the first pass over the files learns about every branch, and their JSON form.

:class:`Specs` holds per branch (:class:`BranchSpec`) its kind, dtype, range,
mean and standard deviation, and for jagged branches the distribution of list
lengths; per file (:class:`FileSpec`) its entries and a fingerprint. Specs
round-trip through JSON (and read the original MLaaS4HEP's ``global-specs.json``).
:class:`~mlaas4hep.specs.first_pass.SpecBuilder` makes them.

Statistics are kept in a form that merges associatively (count, mean, sum of
squared deviations, min, max, length histogram), so specs of parts of a dataset
combine into the specs of the whole.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .._arrays import integer_difference
from .._json import load_json, write_json
from ..errors import BranchError, ParameterError, SpecsError
from ..inputs.contents import FileInfo
from .kinds import fixed_width

__all__ = ["DEFAULT_EXCLUDE", "QUANTILES", "BranchSpec", "FileSpec", "Specs"]

log = logging.getLogger(__name__)

DEFAULT_EXCLUDE: tuple[str, ...] = ("run", "event", "luminosityBlock")
"""Branches left out unless asked for: the event identifier of CMS NanoAOD."""

QUANTILES: tuple[float, ...] = (0.5, 0.9, 0.99, 0.999)
"""Length quantiles reported for jagged branches."""

_FORMAT = "mlaas4hep-specs"
_VERSION = 1


@dataclass(frozen=True)
class BranchSpec:
    """Statistics of one branch over all files.

    Values that are not finite (NaN, inf) are left out of every statistic and
    counted in ``nonfinite``. For jagged branches the statistics are over all
    elements of all lists, and ``length_hist[n]`` counts the events whose list
    has length ``n``; for fixed-size arrays (kind ``"fixed[3]"``, see
    :mod:`mlaas4hep.specs.kinds`) they are over all the numbers of every event.

    Integer branches keep ``min`` and ``max`` exact (Python ints, whatever
    their size). Their mean is counted from ``mean_ref``: ``mean`` is the mean
    of ``value - mean_ref``, so that it stays exact where a float cannot hold
    the values themselves (64-bit integers beyond 2**53); ``mean_ref`` is 0
    otherwise, and :attr:`mean_value` is the mean itself.
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
    mean_ref: int = 0

    @property
    def mean_value(self) -> float:
        """The mean of the finite values (``mean_ref + mean``, as a float)."""
        return float(self.mean_ref) + self.mean if self.mean_ref else self.mean

    @property
    def std(self) -> float:
        """Population standard deviation of the finite values."""
        return math.sqrt(self.m2 / self.count) if self.count else 0.0

    @property
    def is_jagged(self) -> bool:
        """Whether each event holds a variable-length list."""
        return self.kind == "jagged"

    @property
    def is_fixed(self) -> bool:
        """Whether each event holds a fixed-size array of numbers (kind ``"fixed[3]"``): :attr:`width` of them."""
        return fixed_width(self.kind) > 0

    @property
    def width(self) -> int:
        """Columns the branch takes, uncapped: 1 (flat), the array's size (fixed), the longest list (jagged)."""
        if self.is_jagged:
            return self.max_length
        return fixed_width(self.kind) or 1

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
        ref = self.mean_ref if self.count else other.mean_ref
        if n:
            mine = self.mean + float(self.mean_ref - ref)  # both counted from ref: exact integer shifts
            theirs = other.mean + float(other.mean_ref - ref)
            delta = theirs - mine
            mean = mine + delta * other.count / n
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
            mean_ref=ref,
        )

    @classmethod
    def from_values(
        cls, name: str, kind: str, dtype: str, values: np.ndarray, counts: np.ndarray | None = None
    ) -> BranchSpec:
        """Statistics of one step of data: ``values`` (all elements) and list ``counts`` if jagged."""
        hist: tuple[int, ...] = ()
        if counts is not None:
            hist = tuple(int(x) for x in np.bincount(np.asarray(counts, dtype=np.int64)))
        values = np.asarray(values)
        if values.dtype.kind in "biu":
            return cls._from_integers(name, kind, dtype, values, hist)
        v = np.asarray(values, dtype=np.float64)
        finite = np.isfinite(v)
        nonfinite = int(v.size - np.count_nonzero(finite))
        if nonfinite:
            v = v[finite]
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

    @classmethod
    def _from_integers(cls, name: str, kind: str, dtype: str, values: np.ndarray, hist: tuple[int, ...]) -> BranchSpec:
        """Statistics of integers: exact ``min`` and ``max``, and the mean counted from ``mean_ref``."""
        if values.size == 0:
            return cls(name, kind, dtype, length_hist=hist)
        lo, hi = int(values.min()), int(values.max())
        ref = 0 if max(abs(lo), abs(hi)) < 2**53 else lo  # beyond 2**53 a float cannot hold every integer
        d = integer_difference(values, ref)
        mean = float(d.mean())
        return cls(
            name,
            kind,
            dtype,
            count=int(values.size),
            min=lo,
            max=hi,
            mean=mean,
            m2=float(np.square(d - mean).sum()),
            length_hist=hist,
            mean_ref=ref,
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
            "mean": self.mean_value,
            "std": self.std,
            "m2": self.m2,
        }
        if self.mean_ref:  # the mean exactly: counted from an integer
            out["mean_ref"] = self.mean_ref
            out["mean_from_ref"] = self.mean
        if self.is_fixed:  # for people reading the file: the kind tells it
            out["width"] = self.width
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
            min=_number(data["min"]) if data.get("min") is not None else math.inf,
            max=_number(data["max"]) if data.get("max") is not None else -math.inf,
            mean=float(data["mean_from_ref"] if "mean_ref" in data else data.get("mean", 0.0)),
            m2=float(data.get("m2", 0.0)),
            length_hist=hist,
            declared_max_length=int(declared) if declared is not None else None,
            mean_ref=int(data.get("mean_ref", 0)),
        )


def _number(value: Any) -> float:
    """A JSON number: an int stays an int (exact), anything else becomes a float."""
    return value if isinstance(value, int) and not isinstance(value, bool) else float(value)


@dataclass(frozen=True)
class FileSpec:
    """One input file as the specs saw it: entries and a fingerprint.

    With a cut, ``selected`` counts the entries that pass it and ``mask`` says
    which ones they are (see :func:`mlaas4hep.inputs.selection.encode_mask`); both are
    None without a cut. With a ``stop`` (the first pass of a split sequence: the
    entry after the file's last training event), the statistics cover the
    entries before it only, and ``selected`` and ``mask`` those entries too;
    ``entries`` and the fingerprint stay those of the whole file.
    """

    path: str
    tree: str
    entries: int
    size: int | None = None
    mtime: float | None = None
    uuid: str | None = None
    selected: int | None = None
    mask: str | None = None
    stop: int | None = None

    @classmethod
    def from_info(cls, info: FileInfo) -> FileSpec:
        """The fingerprint of a file as :func:`~mlaas4hep.inputs.contents.inspect_file` saw it."""
        return cls(info.source.location, info.source.tree, info.entries, info.size, info.mtime, info.uuid)

    @property
    def events(self) -> int:
        """Events the statistics count: those passing the cut, or all its entries (before ``stop``, when given)."""
        if self.selected is not None:
            return self.selected
        return self.entries if self.stop is None else min(self.stop, self.entries)

    def mismatch(self, other: FileSpec) -> str | None:
        """Why ``other`` (the file as it is now) is not the file these specs describe, or None."""
        if (self.path, self.tree) != (other.path, other.tree):
            return f"{other.path}:{other.tree} is not {self.path}:{self.tree}"
        if self.entries != other.entries:
            return f"{other.path} has {other.entries} entries, specs say {self.entries}"
        if self.size is not None and other.size is not None and self.size != other.size:
            return f"{other.path} is {other.size} bytes, specs say {self.size}"
        if self.uuid is not None and other.uuid is not None and self.uuid != other.uuid:
            return f"{other.path} has ROOT UUID {other.uuid}, specs say {self.uuid}"
        if self.mtime is not None and other.mtime is not None and self.mtime != other.mtime:
            # a file rewritten in place keeps its size, and with uproot its UUID
            return f"{other.path} was modified after the specs were made"
        return None


@dataclass(frozen=True)
class Specs:
    """Result of the first pass: branch statistics and the files they came from.

    Feature columns follow the original MLaaS4HEP: flat branches sorted by name,
    then jagged branches sorted by name, each jagged branch taking as many
    columns as its (possibly capped) length. A fixed-size array is flat
    here (in :attr:`flat`, sorted with the others), taking :attr:`BranchSpec.width` columns.
    """

    branches: Mapping[str, BranchSpec]
    files: tuple[FileSpec, ...] = ()
    skipped: Mapping[str, str] = field(default_factory=dict)
    selection: Mapping[str, Any] = field(default_factory=dict)
    split: Mapping[str, Any] = field(default_factory=dict)

    def with_split(self, split: Mapping[str, Any]) -> Specs:
        """These specs, recording the split (``nevts``, ``validation_split``, ``test_split``, ``cut``) of a sequence.

        The parts of one split must be made alike, or their events could
        overlap: a validation or test sequence given specs that record another
        split refuses them (see :mod:`mlaas4hep.stream.safeguards`).
        """
        return replace(self, split=dict(split))

    @property
    def flat(self) -> list[str]:
        """Names of the flat branches (fixed-size arrays included: not jagged), sorted."""
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
        return sum(self.branches[n].width for n in self.names)

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
        for mine, theirs in zip(self.files, files, strict=True):
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
        skipped = {**self.skipped, **other.skipped}
        return Specs(branches, self.files + other.files, skipped, self.selection, self.split)

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
            **({"split": dict(self.split)} if self.split else {}),
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the specs as JSON, atomically.

        The text goes to a temporary file in the same directory, which then
        replaces ``path`` in one step (:func:`os.replace`): workers that read a
        shared specs file while another writes it see the old file or the new
        one, never a partial one.
        """
        write_json(path, self.to_dict(), "specs", default=_json_default)
        log.info("wrote specs to %s", path)

    @staticmethod
    def written_by_us(path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` holds specs in mlaas4hep's own format (which :meth:`save` may replace)."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            return False
        return isinstance(data, dict) and data.get("format") == _FORMAT

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
        return cls(
            branches, files, dict(data.get("skipped", {})), dict(data.get("selection", {})), dict(data.get("split", {}))
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Specs:
        """Read specs written by :meth:`save` or by the original MLaaS4HEP.

        Raises
        ------
        SpecsError
            If the file is missing, not JSON, not specs, or malformed (the message names the file).
        """
        return load_json(path, "specs file", cls.from_dict, SpecsError)


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
