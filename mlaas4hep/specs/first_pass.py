"""The first pass: read every selected branch of every file once and learn its :class:`~mlaas4hep.Specs`.

:class:`SpecBuilder` reads the selected branches of all files in steps of
bounded size, one task per file (on threads or a Dask cluster, see
:mod:`mlaas4hep.inputs.executors`), and merges the per-file statistics in file order.
Statistics merge associatively (count, mean, sum of squared deviations, min,
max, length histogram), so the result does not depend on the executor.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BranchError, ParameterError, SkippedBranchWarning, SpecsMismatchWarning, TreeError
from ..inputs.contents import FileInfo, describe_file, inspect_file
from ..inputs.executors import map_files
from ..inputs.formats import DEFAULT_TIMEOUT, BranchInfo, open_table
from ..inputs.selection import Selection, encode_mask
from ..inputs.sources import DEFAULT_TREE, FileSource, parse_sources
from .branches import check_kinds
from .kinds import WHY_NOT, is_usable
from .patterns import check_patterns
from .steps import apply_selection, step_specs, steps_until
from .values import DEFAULT_EXCLUDE, BranchSpec, FileSpec, Specs

__all__ = ["SpecBuilder", "check_selection", "describe_skipped", "own_specs_path", "scan_selection", "select_branches"]

log = logging.getLogger(__name__)

# Specs made in this process, by file fingerprints and branch selection: building a
# training and a validation sequence over the same files makes one first pass, not two.
_RECENT: OrderedDict[tuple[tuple[FileSpec, ...], str], Specs] = OrderedDict()


def _match(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _is_pattern(text: str) -> bool:
    return any(c in text for c in "*?[")


def describe_skipped(skipped: Mapping[str, str], *, why: bool = False) -> str:
    """``a (string), b (doubly-jagged)``: branches that cannot become numeric columns, and their kinds.

    With ``why``, the names are quoted and each kind says what the branch holds:
    ``'b' (doubly-jagged: lists of lists)``.
    """
    if not why:
        return ", ".join(f"{name} ({kind})" for name, kind in sorted(skipped.items()))
    return ", ".join(f"{name!r} ({kind}: {WHY_NOT.get(kind, kind)})" for name, kind in sorted(skipped.items()))


def select_branches(
    infos: Sequence[BranchInfo],
    include: Sequence[str] | None,
    exclude: Sequence[str],
    where: str,
    *,
    aliases: Iterable[str] = (),
) -> tuple[list[BranchInfo], dict[str, str]]:
    """Apply include/exclude patterns; return usable branches and skipped ones with their kinds.

    ``include=None`` takes every branch, ``[]`` none. A branch named
    explicitly in ``include`` (not through a glob pattern) that cannot become a
    feature is an error rather than a warning. Names in ``aliases`` count as
    found: a pattern that matches only aliases is not an error.
    """
    by_name = {i.name: i for i in infos}
    if include is None:
        chosen = list(infos)
    else:
        known = set(by_name) | set(aliases)
        missing = [p for p in include if not _is_pattern(p) and p not in known]
        if missing:
            msg = f"branches {missing} not found in {where}"
            raise BranchError(msg)
        for p in include:
            if _is_pattern(p) and not any(fnmatch.fnmatchcase(n, p) for n in known):
                msg = f"pattern {p!r} matches no branch in {where}"
                raise BranchError(msg)
        chosen = [i for i in infos if _match(i.name, include)]
        bad = [by_name[p] for p in include if p in by_name and not is_usable(by_name[p].kind)]
        if bad:
            what = ", ".join(f"{i.name!r} ({i.kind})" for i in bad)
            msg = f"selected branches cannot become numeric features: {what} in {where}"
            raise BranchError(msg)
    chosen = [i for i in chosen if not _match(i.name, exclude)]
    usable = [i for i in chosen if is_usable(i.kind)]
    skipped = {i.name: i.kind for i in chosen if not is_usable(i.kind)}
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
        Branches to use: names or glob patterns, as uproot's ``filter_name``;
        names of ``aliases`` select those aliases. Default: every numeric flat
        or jagged branch, every fixed-size array of numbers (``double[3]``),
        and every alias.
    exclude : sequence of str
        Names or patterns to leave out; default ``("run", "event", "luminosityBlock")``. Each must match a branch
        of some file or an alias (a typo is a :class:`~mlaas4hep.errors.BranchError`), except those three.
    redirector : str
        Prefix for bare file names (the original's ``redirector``).
    format : str
        Format of every file given by name (``"parquet"``, ``"csv"``...); default: from each name.
    step_size : int or str
        Events per read, or a size such as ``"100 MB"`` as in :func:`uproot.iterate`;
        memory stays bounded by one step whatever the file size (a Parquet
        row group at least: its rows are read together).
    common_branches : bool
        When the files' selected branches differ, use those common to all files
        instead of raising :class:`~mlaas4hep.errors.BranchError` (default False).
    cut : str, optional
        Keep only the events where this expression is true, e.g.
        ``"(nMuon >= 1) & any(Jet_pt > 30)"`` (see :class:`~mlaas4hep.inputs.selection.Selection`).
        The statistics are those of the surviving events, and each file's
        :class:`~mlaas4hep.specs.values.FileSpec` records how many survive and which.
    aliases : mapping of str to str, optional
        Derived branches, e.g. ``{"log_Jet_pt": "log(Jet_pt)"}``: features like
        any other (flat or jagged by their values) unless ``exclude`` names them,
        or ``branches`` is given and does not select them.
    executor : {"threads", "serial"}, concurrent.futures.Executor, dask.distributed.Client, or None
        Where the files are scanned, one task per file (see :func:`mlaas4hep.inputs.executors.map_files`):
        None or ``"threads"`` is a local thread pool with a thread per core
        (uproot releases the GIL while it decompresses); a ``dask.distributed.Client``
        runs the same scan on any Dask cluster (``pip install mlaas4hep[dask]``).
        The per-file statistics are merged in file order, so the specs are the
        same, to the last bit, whatever the executor.
    progress : bool or None
        Show a bar over the files (tqdm, when installed); None (default) shows
        one for scans of 20 files or more when stderr is a terminal. Without a
        bar, progress is logged at INFO level.
    timeout : float
        Seconds to wait for the server of a remote file, to connect and for each read (default 30).
    stops : sequence of int, optional
        Per file, the entry before which to read: the statistics (and the cut's
        count and mask) cover entries ``[0, stop)`` only, e.g. a sequence's
        training events (see :func:`mlaas4hep.stream.training.training_stops`).
        Recorded in :attr:`selection`, so specs over other entries are not reused.

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
        format: str = "",
        step_size: int | str = "100 MB",
        common_branches: bool = False,
        executor: Any = None,
        progress: bool | None = None,
        cut: str | None = None,
        aliases: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        stops: Sequence[int] | None = None,
    ) -> None:
        self.cuts = Selection(cut, aliases or {})
        self.timeout = float(timeout)
        self.sources = parse_sources(files, tree, redirector, format)
        if not self.sources:
            msg = "no input files given"
            raise ParameterError(msg)
        self.stops = None if stops is None else [int(stop) for stop in stops]
        if self.stops is not None and len(self.stops) != len(self.sources):
            msg = f"stops holds {len(self.stops)} entries for {len(self.sources)} files"
            raise ParameterError(msg)
        self.branches = None if branches is None else ([branches] if isinstance(branches, str) else list(branches))
        self.exclude = [exclude] if isinstance(exclude, str) else list(exclude or ())
        # file branches: every pattern but the names of aliases (an empty list when only aliases are asked for)
        self.include = None if self.branches is None else [b for b in self.branches if b not in self.cuts.aliases]
        self.step_size = step_size
        self.common_branches = bool(common_branches)
        self.executor = executor
        self.progress = progress

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["executor"] = None  # a Dask client or a pool stays with the caller
        return state

    @property
    def derived(self) -> list[str]:
        """The aliases that are features: selected by ``branches`` (all without it), not excluded."""
        return [
            a
            for a in self.cuts.aliases
            if (self.branches is None or _match(a, self.branches)) and not _match(a, self.exclude)
        ]

    def _map(self, fn: Any, *args: Any, desc: str) -> list[Any]:
        """``[fn(source, *args) for source in self.sources]`` on the builder's executor."""
        return map_files(fn, self.sources, *args, executor=self.executor, progress=self.progress, desc=desc)

    def inspect(self) -> list[FileInfo]:
        """Open each file (reading no data) and describe it, on the builder's executor."""
        return self._map(inspect_file, self.timeout, desc="files")

    def fingerprints(self) -> list[FileSpec]:
        """Each file's :class:`~mlaas4hep.specs.values.FileSpec` as it is now (opening each file, reading no data)."""
        return [FileSpec.from_info(info) for info in self.inspect()]

    def build(self, cache: str | os.PathLike[str] | None = None, *, files: Sequence[FileInfo] | None = None) -> Specs:
        """Return specs of the files, from ``cache`` when it still matches them.

        Parameters
        ----------
        cache : path, optional
            JSON file to reuse and (re)write. A cache made from other files, or
            from files that changed since, is rebuilt with a
            :class:`~mlaas4hep.errors.SpecsMismatchWarning`. A file in another
            format (the original MLaaS4HEP's ``global-specs.json``) is never
            replaced: the specs go beside it (see :func:`own_specs_path`).
        files : sequence of FileInfo, optional
            The files as :func:`~mlaas4hep.inputs.contents.inspect_file` described them,
            one per source: then they are not opened again to be checked.
        """
        infos = list(files) if files is not None else self.inspect()
        fingerprints = tuple(FileSpec.from_info(info) for info in infos)
        if cache is not None:
            cache = own_specs_path(cache)
        if cache is not None and Path(cache).exists():
            cached = Specs.load(cache)
            reason = self._reuse_problem(cached, fingerprints)
            if reason is None:
                log.info("reusing specs from %s", cache)
                return cached
            warnings.warn(f"rebuilding specs: {os.fspath(cache)!r} {reason}", SpecsMismatchWarning, stacklevel=2)
        key = (fingerprints, json.dumps(self.selection, sort_keys=True))
        specs = _RECENT.get(key)
        if specs is None:
            specs = self._scan(infos)
            _RECENT[key] = specs
            while len(_RECENT) > 8:
                _RECENT.popitem(last=False)
        else:
            log.info("reusing specs made in this session for the same files and selection")
        if specs.skipped:
            warnings.warn(
                f"skipping branches that cannot become numeric features: {describe_skipped(specs.skipped)}",
                SkippedBranchWarning,
                stacklevel=2,
            )
        if cache is not None:
            specs.save(cache)
        return specs

    def _reuse_problem(self, cached: Specs, fingerprints: Sequence[FileSpec]) -> str | None:
        if not cached.files:
            return "has no file fingerprints"
        reason = cached.mismatch(fingerprints)
        if reason:
            return f"does not match the input files: {reason}"
        stops = self.selection.get("stops")
        if cached.selection.get("stops") != stops:
            over = "all entries" if stops is None else f"the entries before {stops} (a split's training events)"
            return f"covers other entries than {over}: {cached.selection.get('stops') or 'all'}"
        if cached.selection != self.selection:
            return f"was made with another branch selection ({dict(cached.selection)} instead of {self.selection})"
        return None

    @property
    def selection(self) -> dict[str, Any]:
        """The include and exclude patterns, as recorded in the specs."""
        selection: dict[str, Any] = {"branches": self.branches, "exclude": self.exclude}
        if self.common_branches:
            selection["common_branches"] = True
        selection.update(self.cuts.to_dict())  # specs made without the cut are not reused with it
        if self.stops is not None:  # specs over other entries (all, or another split's) are not reused
            selection["stops"] = self.stops
        return selection

    def scan(self, files: Sequence[FileInfo] | None = None) -> Specs:
        """The first pass itself: check every file's branches, then scan them (no cache, no reuse).

        ``files`` are the files as :func:`~mlaas4hep.inputs.contents.inspect_file`
        described them; by default each file is opened to be described.
        """
        return self._scan(list(files) if files is not None else self.inspect())

    def _scan(self, infos: Sequence[FileInfo]) -> Specs:
        t0 = time.perf_counter()
        include = self._common_include(infos)
        parts: list[Specs] = self._map(_scan_task, self, include, desc="first pass")
        total = parts[0]
        for part in parts[1:]:  # in file order, whatever order the tasks finished in
            total = total.merge(part)
        log.info("first pass: %s in %.2f s", total.summary(), time.perf_counter() - t0)
        return total

    def usable(self, info: FileInfo, include: Sequence[str] | None) -> tuple[list[BranchInfo], dict[str, str]]:
        """The branches of one file that become features, and those skipped with their kinds.

        Raises
        ------
        TreeError
            The tree has no entries.
        BranchError
            A selected branch is missing or unusable, the cut or an alias names a
            missing branch, or no branch is left to use (naming those skipped and why).
        """
        source = info.source
        if info.entries == 0:
            msg = f"{source.what} has 0 entries"
            raise TreeError(msg)
        check_selection(self.cuts, info.branches, str(source))
        usable, skipped = select_branches(info.branches, include, self.exclude, str(source), aliases=self.cuts.aliases)
        if not usable and not self.derived:
            why = ""
            if skipped:
                why = f"; skipped {describe_skipped(skipped, why=True)}, which cannot become fixed-width columns"
            msg = (
                f"no numeric branch left to use in {source} after branches={self.branches} exclude={self.exclude}{why}"
            )
            raise BranchError(msg)
        return usable, skipped

    def _common_include(self, infos: Sequence[FileInfo]) -> list[str] | None:
        """Check, before reading data, that every file has the same selected branches.

        Returns the include list to scan with: the user's, or with
        ``common_branches`` the names common to all files when they differ.
        """
        check_patterns(self.exclude, infos, self.cuts.aliases, "exclude")
        check_kinds(infos, self.include, self.exclude, common_branches=self.common_branches)
        names = [[b.name for b in self.usable(info, self.include)[0]] for info in infos]
        union = sorted(set().union(*names))
        if all(len(n) == len(union) for n in names):
            return self.include
        common = [n for n in names[0] if all(n in other for other in names)]
        if not self.common_branches:
            lacks = "; ".join(
                f"{s.path} lacks {sorted(set(union) - set(n))}"
                for s, n in zip(self.sources, names, strict=True)
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

    def scan_file(self, source: FileSource, include: Sequence[str] | None, stop: int | None = None) -> Specs:
        """The specs of one file, of its entries before ``stop`` (all: None); merged in file order afterwards."""
        t0 = time.perf_counter()
        with open_table(source, self.timeout) as table:
            info = describe_file(source, table)
            usable, skipped = self.usable(info, include)
            kinds = {i.name: i for i in usable}
            derived = self.derived
            read = list(dict.fromkeys([*kinds, *self.cuts.branches(derived)]))
            masks: list[np.ndarray] = []
            parts: dict[str, BranchSpec] = {}
            for arrays in steps_until(table.iterate(read, self.step_size), stop):
                step_kinds = kinds
                if self.cuts:
                    arrays, step_kinds, keep = apply_selection(self.cuts, arrays, kinds, derived)
                    masks.append(keep)
                for name, step in step_specs(arrays, step_kinds):
                    parts[name] = parts[name].merge(step) if name in parts else step
        log.debug(
            "scanned %s: %d entries, %d branches in %.2f s", source, info.entries, len(kinds), time.perf_counter() - t0
        )
        described = replace(FileSpec.from_info(info), stop=stop)
        if self.cuts.cut is not None:
            mask = np.concatenate(masks) if masks else np.zeros(0, dtype=bool)
            described = replace(described, selected=int(np.count_nonzero(mask)), mask=encode_mask(mask))
            log.info("cut %r keeps %d of %d entries of %s", self.cuts.cut, described.selected, info.entries, source)
        return Specs(parts, (described,), skipped, self.selection)


def own_specs_path(path: str | os.PathLike[str]) -> Path:
    """Where specs given as ``path`` are read and written: ``path``, unless it holds another format.

    A file in another format that :meth:`Specs.load` reads (the original
    MLaaS4HEP's ``global-specs.json``) is never replaced: mlaas4hep's specs
    go beside it, to ``<name>.mlaas4hep.json``, with a warning the first time.
    A file that is not specs at all raises :class:`~mlaas4hep.errors.SpecsError`.
    """
    path = Path(path)
    if not path.exists() or Specs.written_by_us(path):
        return path
    Specs.load(path)  # raises for a file that is neither mlaas4hep's nor the original's
    beside = path.with_name(f"{path.stem}.mlaas4hep.json")
    if not beside.exists():
        warnings.warn(
            f"{os.fspath(path)!r} holds the original MLaaS4HEP's specs, which cannot be checked against the files; "
            f"it is left as it is, and mlaas4hep's specs are made and written to {os.fspath(beside)!r}",
            SpecsMismatchWarning,
            stacklevel=4,
        )
    return beside


def scan_selection(
    sources: Sequence[FileSource],
    selection: Selection,
    step_size: int | str = "100 MB",
    timeout: float = DEFAULT_TIMEOUT,
) -> list[np.ndarray]:
    """Which entries of each file pass ``selection``'s cut: one boolean array per file.

    Reads only the branches the cut needs, in steps of ``step_size``; used when
    the specs at hand did not record the cut's result for these files.
    """
    masks = []
    for source in sources:
        with open_table(source, timeout) as table:
            check_selection(selection, table.branches(), str(source))
            steps = table.iterate(selection.branches(), step_size)
            parts = [selection.mask(arrays, len(arrays)) for arrays in steps]
        masks.append(np.concatenate(parts) if parts else np.zeros(0, dtype=bool))
    return masks


def check_selection(cuts: Selection, infos: Sequence[BranchInfo], where: str) -> None:
    """The cut and aliases name only branches of the file, and no alias hides a branch."""
    names = {i.name for i in infos}
    cuts.check(names, where)
    hidden = sorted(set(cuts.aliases) & names)
    if hidden:
        msg = f"aliases {hidden} have the names of branches of {where}; give them other names"
        raise BranchError(msg)


# -- per-file task: a top-level function, so that Dask and process pools can pickle it ---------------
def _scan_task(source: FileSource, builder: SpecBuilder, include: Sequence[str] | None) -> Specs:
    """Specs of one file (see :meth:`SpecBuilder.scan_file`)."""
    stop = None if builder.stops is None else builder.stops[builder.sources.index(source)]
    return builder.scan_file(source, include, stop)
