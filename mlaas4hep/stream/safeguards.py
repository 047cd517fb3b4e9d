"""What dataset preparation checks before any batch, so that no model trains on wrong data without a word.

Each function raises (or warns) with a message that names the file, tree,
branch or parameter at fault and says what would be right:

* :func:`check_duplicates`: the same file and tree listed twice, under any name;
* :func:`check_outputs` and :func:`check_file`: a file against the cut,
  aliases, labels, targets and weights, then the specs (kinds, and dtypes
  where the specs describe that very file);
* :func:`check_leaks`: a label, target or weight computed from a branch that
  is also a feature (through ``aliases``), unless ``allow_leaks`` names it;
* :func:`finite_outputs` and :func:`check_finite`: labels, targets and weights
  that are NaN or infinite (or the events to drop for them);
* :func:`check_split`: two parts of one split made with different splits,
  whose events would overlap;
* :func:`warn_data`: branches with no finite value, and jagged widths that make
  a chunk larger than memory should hold.
"""

from __future__ import annotations

import filecmp
import fnmatch
import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import awkward as ak
import numpy as np

from .._arrays import flat_values
from ..errors import BranchError, DataWarning, ParameterError, SpecsError, TreeError
from ..inputs.contents import FileInfo
from ..inputs.formats import open_table
from ..inputs.selection import Selection
from ..inputs.sources import FileSource
from ..specs.values import Specs
from ..transform.outputs import Outputs

__all__ = [
    "check_duplicates",
    "check_file",
    "check_finite",
    "check_leaks",
    "check_outputs",
    "check_split",
    "finite_outputs",
    "keep_finite",
    "warn_data",
]

log = logging.getLogger(__name__)

CHUNK_BYTES_WARNING = 2**30
"""A chunk whose padded matrix would take more bytes than this is warned about (1 GiB)."""


def check_duplicates(infos: Sequence[FileInfo]) -> None:
    """Raise :class:`ParameterError` if the same events are listed twice, under any name.

    Two entries are the same events when they name the same tree of

    * one file: the same path, another spelling of it, or a link to it
      (device and inode);
    * copies of one ROOT file: the same file UUID, which ROOT writes into
      every new file and a copy keeps;
    * copies of a file of another format: the same bytes (local files of
      equal size, compared only then).
    """
    seen: dict[tuple[Any, str], int] = {}
    for i, info in enumerate(infos):
        source = info.source
        key = (info.identity if info.identity is not None else source.location, source.tree)
        if key in seen:
            _twice(infos, seen[key], i, "are the same file and tree")
        seen[key] = i
    uuids: dict[tuple[str, str], int] = {}
    sizes: dict[tuple[int, str], list[int]] = {}
    for i, info in enumerate(infos):
        if info.uuid is not None and info.uuid.strip("0-"):  # ROOT writes a null UUID for reproducible files
            j = uuids.setdefault((info.uuid, info.source.tree), i)
            other = infos[j]
            if j != i and (other.entries, other.size) == (info.entries, info.size):
                _twice(infos, j, i, f"are copies of one ROOT file (file UUID {info.uuid}), tree {info.source.tree!r}")
        elif info.size is not None and not info.source.is_remote:
            same = sizes.setdefault((info.size, info.source.format), [])
            for j in same:
                if filecmp.cmp(infos[j].source.location, info.source.location, shallow=False):
                    _twice(infos, j, i, "are copies of one file (the same bytes)")
            same.append(i)


def _twice(infos: Sequence[FileInfo], first: int, second: int, what: str) -> NoReturn:
    a, b = str(infos[first].source), str(infos[second].source)
    msg = f"files {first} and {second} {what}: {a!r} and {b!r}; its events would be served twice per epoch: list one"
    raise ParameterError(msg)


def check_outputs(info: FileInfo, selection: Selection, outputs: Outputs) -> None:
    """The file has entries, every branch the cut and aliases read, and the labels', targets' and weights' branches.

    Checked before the first pass, which then never meets a missing label
    branch among the names it leaves out. Each of those is an alias, or a
    branch holding one number per event.
    """
    source, kinds = info.source, info.kinds
    if info.entries == 0:
        msg = f"{source.what} has 0 entries"
        raise TreeError(msg)
    selection.check(kinds, str(source))
    for what, name in _output_names(outputs):
        if name not in selection.aliases and kinds.get(name) != "flat":
            found = f"is {kinds[name]}, not one number per event" if name in kinds else "not found"
            msg = f"{what} branch {name!r} {found} in {source}"
            raise BranchError(msg)


def check_file(info: FileInfo, specs: Specs, selection: Selection, outputs: Outputs) -> None:
    """The file has entries and every branch the specs, cut, aliases, labels, targets and weights need.

    Where the specs describe this very file (same path and tree), each
    branch's dtype must be the file's too: specs edited by hand are refused.
    """
    source, kinds = info.source, info.kinds
    check_outputs(info, selection, outputs)
    missing = [name for name in selection.branches(specs.names, cut=False) if name not in kinds]
    if missing:
        msg = f"{source} lacks the branches {missing} that the specs use"
        raise BranchError(msg)
    other = [f"{n!r} is {kinds[n]}" for n in specs.names if n in kinds and kinds[n] != specs[n].kind]
    if other:
        msg = f"in {source}, {', '.join(other)}, unlike in the specs"
        raise BranchError(msg)
    if any((f.path, f.tree) == (source.location, source.tree) for f in specs.files):
        _check_dtypes(info, specs)


def _check_dtypes(info: FileInfo, specs: Specs) -> None:
    """Each branch's dtype in the specs can hold the file's (the specs were made from it: not edited)."""
    dtypes = {b.name: b.dtype for b in info.branches}
    wrong = []
    for name in specs.names:
        if name not in dtypes:
            continue
        try:
            fits = str(np.result_type(dtypes[name], specs[name].dtype)) == specs[name].dtype
        except TypeError:
            fits = dtypes[name] == specs[name].dtype
        if not fits:
            wrong.append(f"{name!r} is {dtypes[name]} in the file, {specs[name].dtype} in the specs")
    if wrong:
        msg = f"the specs do not describe {info.source} (edited?): {'; '.join(wrong)}; make them again"
        raise SpecsError(msg)


def _output_names(outputs: Outputs) -> list[tuple[str, str]]:
    """``(what, name)`` of every branch (or alias) that labels, targets or weights come from."""
    names = [("label", outputs.label_branch)] if outputs.label_branch else []
    names += [("targets", t) for t in outputs.targets]
    names += [("weights", outputs.weights)] if outputs.weights else []
    return names


def _numbers(values: Any) -> np.ndarray:
    array = flat_values(values) if isinstance(values, ak.Array) else np.asarray(values)
    return np.asarray(array, dtype=np.float64)


def finite_outputs(
    sources: Sequence[FileSource], selection: Selection, outputs: Outputs, timeout: float
) -> list[dict[str, np.ndarray]] | None:
    """Per file and per label, target or weight branch, which entries hold a finite value.

    None when labels come one per file and there are no target or weight
    branches: nothing to read. Otherwise those branches (and what their
    aliases need) are read over every entry, in steps of bounded size.
    """
    names = [name for _, name in _output_names(outputs)]
    if not names:
        return None
    read = selection.branches(names, cut=False)
    out = []
    for source in sources:
        parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
        with open_table(source, timeout) as table:
            for arrays in table.iterate(read, "100 MB"):
                derived = selection.derive(arrays, names, len(arrays))
                for what, name in _output_names(outputs):
                    values = derived[name] if name in derived else arrays[name]
                    if name in derived and isinstance(values, ak.Array) and values.ndim > 1:
                        msg = (
                            f"{what} {name!r} = {selection.aliases[name]!r} gives a list per event in {source}, not "
                            "one number: reduce it to one, e.g. with sum(...), any(...) or max(...)"
                        )
                        raise BranchError(msg)
                    parts[name].append(np.isfinite(_numbers(values)))
        out.append({name: np.concatenate(p) if p else np.zeros(0, bool) for name, p in parts.items()})
    return out


def check_finite(
    finite: list[dict[str, np.ndarray]],
    sources: Sequence[FileSource],
    outputs: Outputs,
    selected: Sequence[np.ndarray] | None,
) -> None:
    """Raise :class:`ParameterError` if an event to serve has a label, target or weight that is not finite."""
    for i, (source, masks) in enumerate(zip(sources, finite, strict=True)):
        for what, name in _output_names(outputs):
            ok = masks[name] if selected is None else masks[name][selected[i]]
            bad = np.flatnonzero(~ok)
            if bad.size:
                entry = int(bad[0] if selected is None else selected[i][bad[0]])
                msg = (
                    f"{what} branch {name!r} is NaN or infinite in {bad.size} of the events of {source} "
                    f"(the first at entry {entry}); fix the data, or pass drop_nonfinite=True to leave those "
                    "events out"
                )
                raise ParameterError(msg)


def keep_finite(finite: list[dict[str, np.ndarray]], selected: Sequence[np.ndarray] | None) -> tuple[np.ndarray, ...]:
    """The entries of each file to serve once those with a non-finite label, target or weight are left out."""
    kept = []
    for i, masks in enumerate(finite):
        ok = np.logical_and.reduce(list(masks.values()))
        entries = np.flatnonzero(ok) if selected is None else selected[i][ok[selected[i]]]
        dropped = (ok.size if selected is None else selected[i].size) - entries.size
        if dropped:
            log.info("leaving out %d events with a non-finite label, target or weight in file %d", dropped, i)
        kept.append(entries)
    return tuple(kept)


def check_leaks(features: Sequence[str], selection: Selection, outputs: Outputs, allowed: Sequence[str] = ()) -> None:
    """Raise :class:`BranchError` if a label, target or weight is computed from a branch that is also a feature.

    A label, target or weight that is a branch is never a feature itself;
    one computed by ``aliases`` (through other aliases, maybe) reads branches
    that may be: the model would then learn the answer from its inputs. Each
    branch it reads leaks when a feature is that branch or is an alias
    computed from it. The cut is no leak (it only chooses events). Branches
    that match ``allowed`` (names or glob patterns: ``allow_leaks``) may feed both.

    Parameters
    ----------
    features : sequence of str
        The features: branches, and aliases that are features (the specs' names).
    selection : Selection
        The aliases.
    outputs : Outputs
        The label branch, targets and weights.
    allowed : sequence of str
        Branches allowed to feed both (``allow_leaks``).

    Examples
    --------
    >>> outputs = Outputs(1, targets="two_mu")
    >>> selection = Selection(aliases={"two_mu": "NMuon >= 2"})
    >>> check_leaks(["MET_pt"], selection, outputs)
    >>> check_leaks(["MET_pt", "NMuon"], selection, outputs, allowed=["NMuon"])
    >>> check_leaks(["MET_pt", "NMuon"], selection, outputs)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mlaas4hep.errors.BranchError: targets 'two_mu' is computed from 'NMuon', which is also a feature: ...
    """
    carriers: dict[str, str] = {}  # each branch the features read -> a feature that carries it (itself, first)
    for feature in features:
        for branch in selection.branches([feature], cut=False):
            carriers.setdefault(branch, feature)
    carriers.update({f: f for f in features if f in carriers})
    clauses, drop, allow = [], [], []
    for what, name in _output_names(outputs):
        for branch in selection.branches([name], cut=False):
            carrier = carriers.get(branch)
            if carrier is None or any(fnmatch.fnmatchcase(branch, p) for p in allowed):
                continue
            via = "" if carrier == branch else f" through the alias {carrier!r} = {selection.aliases[carrier]!r}"
            if branch == name:
                clauses.append(f"{what} branch {name!r} is also a feature{via}")
            else:
                clauses.append(f"{what} {name!r} is computed from {branch!r}, which is also a feature{via}")
            drop.append(carrier)
            allow.append(branch)
    if clauses:
        msg = (
            f"{'; '.join(clauses)}: leave {'it' if len(clauses) == 1 else 'them'} out of the features "
            f"(exclude={list(dict.fromkeys(drop))}), or pass allow_leaks={list(dict.fromkeys(allow))} if it is meant"
        )
        raise BranchError(msg)


def split_record(options: Any) -> dict[str, Any]:
    """What a part of a split is made with: a part made otherwise could serve some of its events."""
    return {
        "nevts": options.nevts,
        "validation_split": options.validation_split,
        "test_split": options.test_split,
        "cut": options.cut,
    }


def check_split(specs: Specs, options: Any) -> Specs:
    """The specs to serve with: recording this sequence's split, or checked against the split they record.

    A training sequence (or the first part made from these specs) records
    its split in them; a validation or test sequence given specs that record
    another split raises :class:`ParameterError`, as their events could overlap.
    """
    if options.subset is None:
        return specs
    mine = split_record(options)
    recorded: Mapping[str, Any] = specs.split
    if recorded and options.subset != "training" and dict(recorded) != mine:
        differ = ", ".join(
            f"{k}={mine[k]!r} (the specs: {recorded.get(k)!r})" for k in mine if recorded.get(k) != mine[k]
        )
        msg = (
            f"this {options.subset} sequence is split with {differ}: its events could overlap those of the "
            "training sequence its specs come from; give every part of one split the same nevts, "
            "validation_split, test_split and cut"
        )
        raise ParameterError(msg)
    if options.subset == "training" or not recorded:
        return specs.with_split(mine)
    return specs


def warn_data(specs: Specs, widths: Mapping[str, int], rows: int, num_features: int) -> None:
    """Warn of branches with no finite value, and of chunks whose padded matrix would take more than 1 GiB."""
    for name in specs.names:
        spec = specs[name]
        if spec.count == 0 and spec.nonfinite > 0:
            warnings.warn(
                f"branch {name!r} holds no finite value ({spec.nonfinite} NaN or infinite values): its columns hold "
                "only the pad value; exclude it, or fix the data",
                DataWarning,
                stacklevel=4,
            )
    nbytes = rows * num_features * 4
    if nbytes > CHUNK_BYTES_WARNING:
        wide = sorted(widths.items(), key=lambda kv: -kv[1])[:3]
        described = ", ".join(
            f"{name!r} padded to {width} while 99.9 % of events hold at most {specs[name].length_quantile(0.999)}"
            for name, width in wide
        )
        warnings.warn(
            f"a chunk of {rows} events x {num_features} columns takes {nbytes / 2**30:.1f} GiB: {described}; "
            "pass length_quantile=0.999 (or max_lengths) to cap the widths, or a smaller chunk_size",
            DataWarning,
            stacklevel=4,
        )
