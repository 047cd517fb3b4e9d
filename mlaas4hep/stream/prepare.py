"""Preparing the data: from the user's files, labels and options to one frozen, picklable :class:`PreparedData`.

:func:`prepare` does, in one pass over the files, everything that has to be
known before the first batch: it opens each file once (reading no data) to
learn its entries and branches; takes or makes the specs of the features
(the first pass, or a cached or given :class:`~mlaas4hep.Specs`); checks the
files against the specs, labels, targets, weights, cut and aliases, that
every ``exclude`` and ``allow_leaks`` name matches a branch or alias, and that
no label, target or weight is computed from a feature's branch; counts
the events that pass the cut; cuts each file's events into the subset asked
for; plans the chunks; and, for class balancing, totals each class's weight.
The :class:`PreparedData` it returns describes the data path completely: any face
(a Keras sequence, a PyTorch dataset, scoring) and any worker process reads
and flattens the same chunks from it.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..errors import BranchError, ParameterError, SpecsError
from ..inputs.contents import FileInfo, inspect_file
from ..inputs.executors import map_files
from ..inputs.folds import check_fold_values, fold_selections
from ..inputs.generator import generator_options
from ..inputs.selection import Selection, decode_mask
from ..inputs.sources import FileSource, expand_sources, names_trees, per_entry
from ..options import Options
from ..specs.first_pass import SpecBuilder, own_specs_path, scan_selection
from ..specs.patterns import check_patterns
from ..specs.values import DEFAULT_EXCLUDE, Specs
from ..transform.flatten import JaggedFlattener
from ..transform.outputs import Outputs, per_file_totals, totals_by_class
from ..transform.tensors import CollectionsFlattener
from .plan import ChunkPlan, EpochPlan, subset_ranges
from .reader import ChunkReader
from .safeguards import (
    check_duplicates,
    check_file,
    check_finite,
    check_leaks,
    check_outputs,
    check_split,
    finite_outputs,
    keep_finite,
    warn_data,
)
from .training import check_recorded_split, statistics_from_training, training_stops

__all__ = ["PreparedData", "labeled", "prepare"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedData:
    """The events a face serves and what they become: files, features, outputs, subset and chunks.

    Made by :func:`prepare`; frozen and picklable (it holds paths and numbers,
    never an open file), so worker processes and Dask tasks receive copies.

    Attributes
    ----------
    sources : tuple of FileSource
        The input files and trees.
    options : Options
        The arguments it was made with.
    specs : Specs
        The features' statistics (what the flattener normalizes with).
    selection : Selection
        The cut and the aliases.
    outputs : Outputs
        Labels or targets, and weights (with the class-balancing factors).
    flattener : JaggedFlattener
        Turns a chunk into the feature matrix.
    label_branch : str or None
        The branch holding each event's label, if the labels come from one.
    labels : tuple of float or None
        One label per file, if given so.
    entries : tuple of int
        Entries of each file.
    files : tuple of FileInfo
        Each file as it was when the dataset was prepared: a reader refuses a
        file that changed since (other entries, size or modification time).
    selected : tuple of numpy.ndarray, or None
        Per file, the entries that pass the cut (None without a cut).
    ranges : tuple of (int, int)
        Per file, the range of its events (counted among those passing the cut) in the subset.
    plan : ChunkPlan
        The chunks of the subset.
    """

    sources: tuple[FileSource, ...]
    options: Options
    specs: Specs
    selection: Selection
    outputs: Outputs
    flattener: JaggedFlattener
    label_branch: str | None
    labels: tuple[float, ...] | None
    entries: tuple[int, ...]
    selected: tuple[np.ndarray, ...] | None
    ranges: tuple[tuple[int, int], ...]
    plan: ChunkPlan
    files: tuple[FileInfo, ...] = ()

    @property
    def n_events(self) -> int:
        """Events of the subset, over all chunks (and all shards)."""
        return self.plan.n_events

    def reader(self, branches: Sequence[str] | None = None) -> ChunkReader:
        """A new :class:`~mlaas4hep.ChunkReader` of the plan's chunks.

        By default it reads the features and the outputs' branches (aliases
        among them computed on every piece); ``branches`` names others.
        """
        if branches is None:
            branches = [*self.flattener.branches, *self.outputs.branches]
        return ChunkReader(
            self.sources,
            branches,
            plan=self.plan,
            labels=self.labels,
            label_branch=self.label_branch,
            selected=self.selected,
            retries=self.options.retries,
            retry_backoff=self.options.retry_backoff,
            max_open_files=self.options.max_open_files,
            selection=self.selection,
            timeout=self.options.timeout,
            expect=self.files or None,
        )

    def epoch_plan(self, *, num_shards: int | None = None, shard_index: int | None = None) -> EpochPlan:
        """Where each batch of this subset (and shard) lies in each epoch's stream of chunks.

        The shard is the options' unless ``num_shards`` and ``shard_index`` name
        another (a face that shards further, e.g. over PyTorch's DataLoader workers).
        """
        o = self.options
        assert o.shuffle is not None and o.seed is not None  # filled in by Options
        return EpochPlan(
            self.plan.sizes,
            batch_size=o.batch_size,
            shuffle=o.shuffle,
            seed=o.seed,
            num_shards=o.num_shards if num_shards is None else num_shards,
            shard_index=o.shard_index if shard_index is None else shard_index,
        )


def prepare(
    files: str | os.PathLike[str] | Iterable[str | os.PathLike[str] | FileSource],
    labels: Sequence[float] | str | None,
    options: Options,
) -> PreparedData:
    """Prepare the dataset that ``files``, ``labels`` and ``options`` describe (see :class:`PreparedData`).

    Each local file is opened once to be checked; with specs reused from a
    cache (or given), no data is read unless a cut has to be evaluated or
    classes balanced by a weight branch.

    Raises
    ------
    FileAccessError, TreeError, BranchError, SpecsError, ParameterError
        Naming the file, tree, branch or parameter at fault.
    """
    files, labels = _pairs(files, labels)
    groups = expand_sources(files, options.tree, options.redirector, timeout=options.timeout)
    sources = tuple(source for group in groups for source in group)
    if not sources:
        msg = "no input files given"
        raise ParameterError(msg)
    sizes = [len(group) for group in groups]  # files per entry given: a pattern's label and weight go to each
    if options.file_weights is not None and len(groups) != len(sources):
        options = replace(options, file_weights=tuple(per_entry(options.file_weights, sizes, "file_weights")))
    options = replace(options, **generator_options(groups, options))  # cross sections x luminosity: file weights
    per_file, label_branch = _labels(labels, sizes)
    statistics, selection = fold_selections(options)  # the specs' (with folds, the training folds') and the served
    outputs = _outputs(options, len(sources), per_file, label_branch)
    not_features = ([label_branch] if label_branch else []) + outputs.branches
    infos = map_files(inspect_file, sources, options.timeout, desc="files")
    check_duplicates(infos)
    check_fold_values(sources, infos, options)  # before the first pass, which the folds' condition cuts
    for info in infos:  # before the first pass, which leaves the outputs' branches out of the features
        check_outputs(info, selection, outputs)
    _check_patterns(options, infos, selection)
    specs, early = _specs_and_events(sources, infos, options, (statistics, selection), outputs, not_features)
    for info in infos:
        check_file(info, specs, selection, outputs)
    checked = check_split(specs, replace(options, cut=statistics.cut) if options.folds else options)  # and the folds
    if checked.split != specs.split and isinstance(options.specs, (str, os.PathLike)) and options.subset == "training":
        checked.save(own_specs_path(options.specs))  # the split it records, for the other parts made from the file
    specs = checked
    check_leaks(specs.names, selection, outputs, options.allow_leaks)
    events, selected = early or _events(sources, infos, specs, selection, outputs, options)
    ranges = _ranges(events, options)
    plan = ChunkPlan.build(ranges, options.chunk_size, files_per_chunk=options.files_per_chunk)
    if plan.n_events == 0:
        kept = f"the cut {options.cut!r} keeps {sum(events)} events: " if options.cut else ""
        msg = f"no events to serve in subset {options.subset!r} of {len(sources)} files; {kept}nothing to serve"
        raise ParameterError(msg)
    flattener = _flattener(specs, options, infos, selection)
    warn_data(specs, flattener.widths, int(plan.sizes.max()), flattener.num_features)
    prepared = PreparedData(
        sources,
        options,
        specs,
        selection,
        outputs,
        flattener,
        label_branch,
        None if per_file is None else tuple(per_file),
        tuple(info.entries for info in infos),
        selected,
        tuple(ranges),
        plan,
        tuple(infos),
    )
    if outputs.balance_classes:  # the factors need the data: a new value with them, nothing changed after
        prepared = replace(prepared, outputs=outputs.with_class_totals(_class_totals(prepared)))
    return prepared


def _outputs(options: Options, n_files: int, per_file: list[float] | None, label_branch: str | None) -> Outputs:
    return Outputs(
        n_files,
        labels=per_file,
        label_branch=label_branch,
        targets=options.targets,
        weights=options.weights,
        file_weights=options.file_weights,
        balance_classes=options.balance_classes,
        one_hot=options.one_hot,
        num_classes=options.num_classes,
    )


def _flattener(specs: Specs, options: Options, infos: Sequence[FileInfo], selection: Selection) -> JaggedFlattener:
    """The flattener of ``options.layout``; collections are told by the files' branch names and the aliases."""
    normalization: dict[str, Any] = {
        "normalization": options.normalization,
        "pad_value": options.pad_value,
        "max_lengths": options.max_lengths,
        "length_quantile": options.length_quantile,
    }
    if options.layout == "flat":
        return JaggedFlattener(specs, **normalization)
    kinds = infos[0].kinds
    names = set(kinds).intersection(*(info.kinds for info in infos[1:]))
    jagged = {name for name, kind in kinds.items() if kind == "jagged"}
    sources = {a: [b for b in selection.branches([a], cut=False) if b in jagged] for a in selection.aliases}
    return CollectionsFlattener(
        specs, file_branches=names, alias_sources=sources, groups=options.collections, **normalization
    )


def labeled(files: Any, labels: Any) -> bool:
    """Whether events get labels: given as ``labels``, or with the files as a ``{file: label}`` mapping
    (not uproot's ``{file: tree}``)."""
    return labels is not None or (isinstance(files, Mapping) and not names_trees(files))


def _pairs(files: Any, labels: Any) -> tuple[Any, Any]:
    """The files and their labels, in an order that pairs them: a ``{file: label}`` mapping is split; sets refused.

    A ``{file: tree}`` mapping (uproot's form, told by its string values) is
    kept as it is, for :func:`~mlaas4hep.inputs.sources.expand_sources`;
    its labels are ``labels``.
    """
    for name, value in (("files", files), ("labels", labels)):
        if isinstance(value, (set, frozenset)):
            msg = (
                f"{name} must be in an order (a list or a tuple), got a {type(value).__name__}: a set's order is "
                "Python's, which pairs files with labels and weights at random"
            )
            raise ParameterError(msg)
    if isinstance(files, Mapping) and not names_trees(files):
        if labels is not None:
            msg = "files is a mapping of file to label: give the labels there, or in labels, not both"
            raise ParameterError(msg)
        return list(files), list(files.values())
    return files, labels


def _labels(labels: Sequence[float] | str | None, sizes: Sequence[int]) -> tuple[list[float] | None, str | None]:
    """Per-file labels, or the name of a label branch.

    ``labels`` holds one label per entry of the files; ``sizes`` says how
    many files each entry names (a pattern, those it matches), and its label
    goes to each of them.
    """
    if labels is None:
        return None, None
    if isinstance(labels, str):
        return None, labels
    values = list(labels)
    bad = [v for v in values if isinstance(v, (str, bytes)) or not isinstance(v, (int, float, np.number, np.bool_))]
    if bad:
        msg = (
            f"labels must be numbers (or True/False), one per file (or the name of a label branch), got {bad[0]!r} "
            f"in {values!r}; "
            "for class names, give each class a number: e.g. labels=[1, 0] for signal and background"
        )
        raise ParameterError(msg)
    numbers = [float(v) for v in values]
    if not all(np.isfinite(numbers)):
        msg = f"labels must be finite numbers, got {values!r}"
        raise ParameterError(msg)
    return per_entry(numbers, sizes, "labels", alternative=", or a branch name"), None


def _check_patterns(options: Options, infos: Sequence[FileInfo], selection: Selection) -> None:
    """Each name or pattern of ``exclude`` (but the default identifiers) and ``allow_leaks`` names a branch or alias."""
    if options.exclude is not None:
        check_patterns(options.exclude, infos, selection.aliases, "exclude")
    check_patterns(options.allow_leaks, infos, selection.aliases, "allow_leaks", exempt=())


def _match(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _specs_and_events(
    sources: Sequence[FileSource],
    infos: Sequence[FileInfo],
    options: Options,
    selections: tuple[Selection, Selection],
    outputs: Outputs,
    not_features: list[str],
) -> tuple[Specs, tuple[list[int], tuple[np.ndarray, ...] | None] | None]:
    """The specs of the features, and with a split the events to serve (else None: found after the specs).

    With a split (:func:`~mlaas4hep.stream.training.statistics_from_training`)
    the events are found first: the first pass reads the training ones only.
    ``selections`` are those of the specs and of the served events.
    """
    statistics = selections[0]  # without folds, the served events' selection too
    folded = bool(options.folds) and (bool(options.validation_split) or options.nevts != -1)
    if not statistics_from_training(options) and not folded:
        return _feature_specs(sources, infos, options, statistics, not_features), None
    if not options.folds:
        check_recorded_split(options)
    given = options.specs if isinstance(options.specs, Specs) else None
    # with folds, the training folds' events (those subset="training" cuts its parts from), whatever the subset
    early = _events(sources, infos, given, statistics, outputs, options)
    stops = training_stops(*early, options)
    served = None if options.folds and options.subset == "test" else early  # the test fold: found later
    return _feature_specs(sources, infos, options, statistics, not_features, stops), served


def _feature_specs(
    sources: Sequence[FileSource],
    infos: Sequence[FileInfo],
    options: Options,
    selection: Selection,
    not_features: list[str],
    stops: Sequence[int] | None = None,
) -> Specs:
    """The specs of the features: a ready Specs narrowed by ``branches`` and ``exclude``, or the first pass.

    The first pass reads each file before its entry of ``stops`` (all of it: None): the training events.
    """
    given = options.specs
    if not isinstance(given, Specs):
        builder = SpecBuilder(
            list(sources),
            branches=options.branches,
            exclude=[*(DEFAULT_EXCLUDE if options.exclude is None else options.exclude), *not_features],
            common_branches=options.common_branches,
            cut=selection.cut,
            aliases=selection.aliases,
            timeout=options.timeout,
            stops=stops,
        )
        return builder.build(cache=given, files=infos)
    specs = given
    drop = [*(options.exclude or ()), *not_features]  # labels, targets and weights are never features
    if options.branches is not None:  # as the training part's: a weights branch among them is no feature
        wanted = [b for b in options.branches if b not in not_features]
        specs = specs.select(_expand(specs, wanted) if wanted else [])  # none left: the error below says why
    if any(_match(n, drop) for n in specs.names):
        specs = specs.select([n for n in specs.names if not _match(n, drop)])
    if not specs.branches:
        msg = f"the specs hold no branch to use after branches={options.branches} exclude={drop}"
        raise SpecsError(msg)
    return specs


def _expand(specs: Specs, patterns: Sequence[str]) -> list[str]:
    """The names of ``specs`` that ``patterns`` (names or globs) select."""
    exact = [p for p in patterns if not any(c in p for c in "*?[")]
    missing = [p for p in exact if p not in specs.branches]
    if missing:
        msg = f"the specs lack the selected branches {missing}; they hold {specs.names}"
        raise SpecsError(msg)
    names = [n for n in specs.names if _match(n, patterns)]
    if not names:
        msg = f"branches {list(patterns)} match nothing in the specs ({specs.names})"
        raise BranchError(msg)
    return names


def _events(
    sources: Sequence[FileSource],
    infos: Sequence[FileInfo],
    specs: Specs | None,
    selection: Selection,
    outputs: Outputs,
    options: Options,
) -> tuple[list[int], tuple[np.ndarray, ...] | None]:
    """Events of each file, and the entries to serve (None: all): those passing the cut, with finite outputs.

    A label, target or weight that is NaN or infinite is an error, unless
    ``drop_nonfinite`` leaves those events out.
    """
    selected = _selected(sources, infos, specs, selection, options.timeout)
    finite = finite_outputs(sources, selection, outputs, options.timeout)
    if finite is not None:
        if options.drop_nonfinite:
            selected = keep_finite(finite, selected)
        else:
            check_finite(finite, sources, outputs, selected)
    if selected is None:
        return [info.entries for info in infos], None
    return [len(s) for s in selected], selected


def _selected(
    sources: Sequence[FileSource],
    infos: Sequence[FileInfo],
    specs: Specs | None,
    selection: Selection,
    timeout: float,
) -> tuple[np.ndarray, ...] | None:
    """The entries of each file that pass the cut (None without a cut).

    The cut's result comes from the specs when they recorded the same cut for
    these very files, over whole files (no ``stop``); otherwise from a pass over the branches the cut reads.
    """
    if selection.cut is None:
        return None
    files = () if specs is None else specs.files
    recorded = {} if specs is None else specs.selection
    if (
        files
        and all(f.stop is None for f in files)
        and [(f.path, f.tree) for f in files] == [(s.location, s.tree) for s in sources]
        and recorded.get("cut") == selection.cut
        and dict(recorded.get("aliases") or {}) == dict(selection.aliases)
        and all(f.mask is not None for f in files)
    ):
        masks = [decode_mask(f.mask or "", f.entries) for f in files]
    else:
        masks = scan_selection(sources, selection, timeout=timeout)
    return tuple(np.flatnonzero(mask) for mask in masks)


def _ranges(events: list[int], options: Options) -> list[tuple[int, int]]:
    """Per file, the range of its events in the subset (warning when ``nevts`` is more than there are)."""
    total = sum(events)
    if options.nevts > total:
        warnings.warn(f"nevts={options.nevts} is more than the {total} events in the files; using all", stacklevel=5)
    subset = None if options.folds and options.subset == "test" else options.subset  # folds: all of the test fold
    return subset_ranges(events, options.nevts, options.validation_split, options.test_split, subset)


def _class_totals(prepared: PreparedData) -> np.ndarray:
    """Each class's total weight before balancing, over every event of the subset (all shards)."""
    outputs = prepared.outputs
    if outputs.labels is not None and outputs.weights is None:  # nothing to read
        return per_file_totals(outputs.labels, prepared.plan.counts.sum(axis=0), outputs.file_weights)
    reader = prepared.reader(outputs.branches)
    totals = np.zeros(outputs.num_classes or 0)
    try:
        for k in range(len(reader)):
            chunk = reader.read(k)
            y, w = outputs.extract(chunk.pieces, chunk.file_index, chunk.labels, balanced=False)
            assert y is not None  # balancing needs labels (checked by Outputs)
            part = totals_by_class(y, w, outputs.num_classes)
            size = max(part.size, totals.size)
            totals = np.pad(totals, (0, size - totals.size)) + np.pad(part, (0, size - part.size))
    finally:
        reader.close()
    return totals
