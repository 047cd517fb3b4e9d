"""k-fold by event number: each event's fold, as part of the event selection.

With ``folds=k``, ``fold=j`` and ``fold_by="event"`` an event belongs to fold
``event % k`` (``fold_by`` a branch, an alias or an expression of integer
value; a negative value takes the non-negative modulo, as Python's and numpy's
``%``: ``-1 % 5 == 4``). ``subset="test"`` serves fold ``j`` and
``subset="training"`` the other folds, of which ``validation_split`` takes its
part as without folds. Membership depends only on the event's value of
``fold_by``, never on the chunks, the files' order, ``nevts`` or the shards.

The fold is a condition ANDed with the user's ``cut`` (:func:`fold_cut`), so
that the cut's machinery (the first pass's masks, their reuse from the specs,
:func:`~mlaas4hep.specs.first_pass.scan_selection`) selects the events; the
specs of every part of fold ``j`` are made with the training folds' condition,
so that its training, validation and test parts share one normalization that
no test event shaped. :func:`check_fold_values` refuses, before the first
pass, a ``fold_by`` whose values are not integers.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import awkward as ak
import numpy as np

from .._checks import check_choice, check_fraction, check_int, check_split, check_text
from ..errors import BranchError, ParameterError
from .contents import FileInfo
from .formats import open_table
from .selection import Selection
from .sources import FileSource

__all__ = ["FOLD_BY", "check_fold_values", "check_folding", "fold_cut", "fold_selections"]

FOLD_BY = "event"
"""The default ``fold_by``: NanoAOD's event number."""

_KEY = "_mlaas4hep_fold_by"  # fold_by as an alias of its own, to compute its values


def fold_cut(cut: str | None, options: Any, *, test: bool) -> str | None:
    """``cut`` ANDed with the fold condition of ``options``: its test fold (``test``) or its other folds.

    Without folds (``options.folds`` None) ``cut`` itself.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> o = SimpleNamespace(folds=5, fold=2, fold_by="event")
    >>> fold_cut("nMuon >= 1", o, test=False)
    '(nMuon >= 1) & (((event) % 5) != 2)'
    >>> fold_cut(None, o, test=True)
    '(((event) % 5) == 2)'
    """
    if options.folds is None:
        return cut
    condition = f"((({options.fold_by}) % {options.folds}) {'==' if test else '!='} {options.fold})"
    return condition if cut is None else f"({cut}) & {condition}"


def fold_selections(options: Any) -> tuple[Selection, Selection]:
    """The selections of the specs and of the served events: with folds, the training folds' and the subset's.

    Without folds, both are ``options.cut`` with ``options.aliases``.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> o = SimpleNamespace(cut=None, aliases={}, folds=3, fold=0, fold_by="event", subset="test")
    >>> [s.cut for s in fold_selections(o)]
    ['(((event) % 3) != 0)', '(((event) % 3) == 0)']
    """
    aliases = options.aliases or {}
    statistics = Selection(fold_cut(options.cut, options, test=False), aliases)
    return statistics, Selection(fold_cut(options.cut, options, test=options.subset == "test"), aliases)


def check_folding(options: Any, subsets: Collection[str]) -> dict[str, Any]:
    """The split and fold options of ``options`` checked together: their values, by name.

    Without ``folds``, ``fold`` and ``fold_by`` must be None and the split is
    checked as ever. With ``folds`` (at least 2): ``fold`` in ``[0, folds)``,
    ``subset`` given, no ``test_split`` (the fold is the test part), a
    ``validation_split`` for ``subset="validation"``; ``fold_by`` (default
    ``"event"``) an expression.

    Raises
    ------
    ParameterError
        Naming the option at fault.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> o = SimpleNamespace(folds=5, fold=0, fold_by=None, subset="test", validation_split=0.2, test_split=None)
    >>> check_folding(o, ("training", "validation", "test"))["fold_by"]
    'event'
    """
    folds, fold, fold_by, subset = options.folds, options.fold, options.fold_by, options.subset
    if folds is None:
        for name, value in (("fold", fold), ("fold_by", fold_by)):
            if value is not None:
                msg = f"{name}={value!r} needs folds (the number of folds, at least 2)"
                raise ParameterError(msg)
        validation, test = check_split(options.validation_split, options.test_split, subset, subsets)
        return {"validation_split": validation, "test_split": test}
    folds = check_int(folds, "folds", minimum=2)
    if fold is None:
        msg = f"folds={folds} needs fold, the fold served as the test part (0 to {folds - 1})"
        raise ParameterError(msg)
    fold = check_int(fold, "fold", minimum=0)
    if fold >= folds:
        msg = f"fold must be in [0, folds) = [0, {folds}), got fold={fold}"
        raise ParameterError(msg)
    if subset is None:
        msg = f'folds={folds} needs subset="training", "validation" or "test" (the test part is fold {fold})'
        raise ParameterError(msg)
    check_choice(subset, "subset", subsets)
    if options.test_split is not None:
        msg = f"test_split={options.test_split!r} does not go with folds={folds}: the test part is fold {fold}"
        raise ParameterError(msg)
    validation = check_fraction(options.validation_split, "validation_split")
    if subset == "validation" and not validation:
        msg = 'subset="validation" needs a validation_split in (0, 1), taken from the training folds'
        raise ParameterError(msg)
    fold_by = FOLD_BY if fold_by is None else check_text(fold_by, "fold_by", what="an expression (a branch name)")
    try:
        Selection(f"({fold_by}) % 2")
    except ParameterError as err:
        msg = f"fold_by {fold_by!r} is not a branch, alias or expression: {err}"
        raise ParameterError(msg) from None
    return {"validation_split": validation, "test_split": None, "folds": folds, "fold": fold, "fold_by": fold_by}


def check_fold_values(
    sources: Sequence[FileSource], infos: Sequence[FileInfo], options: Any, step_size: int | str = "100 MB"
) -> None:
    """Raise :class:`~mlaas4hep.errors.BranchError` unless ``fold_by`` gives one integer per event in every file.

    Reads only the branches ``fold_by`` needs (nothing without folds). A
    float value is accepted where it is a whole number; NaN, infinities,
    fractions and lists are refused, naming ``fold_by``, the file and the
    first entry at fault.
    """
    if options.folds is None:
        return
    fold_by = options.fold_by
    selection = Selection(None, {**dict(options.aliases or {}), _KEY: fold_by})
    needed = selection.branches([_KEY], cut=False)
    for source, info in zip(sources, infos, strict=True):
        missing = [name for name in needed if name not in info.kinds]
        if missing:
            msg = f"fold_by {fold_by!r} uses {missing}, not a branch of {source} nor an alias"
            raise BranchError(msg)
        start = 0
        with open_table(source, options.timeout) as table:
            for arrays in table.iterate(needed, step_size):
                n = len(arrays)
                _check_integers(selection.derive(arrays, [_KEY], n)[_KEY], fold_by, source, start)
                start += n


def _check_integers(values: Any, fold_by: str, source: FileSource, start: int) -> None:
    """``values`` (of the entries from ``start`` on) are integers, one per event."""
    if isinstance(values, ak.Array) or np.ndim(values) != 1:
        msg = f"fold_by {fold_by!r} gives a list per event in {source}, not one integer: reduce it, e.g. sum(...)"
        raise BranchError(msg)
    values = np.asarray(values)
    if values.dtype.kind in "biu":
        return
    if values.dtype.kind != "f":
        msg = f"fold_by {fold_by!r} gives {values.dtype} values in {source}, not integers"
        raise BranchError(msg)
    with np.errstate(invalid="ignore"):
        bad = ~(np.isfinite(values) & (values == np.floor(values)))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        msg = (
            f"fold_by {fold_by!r} must give integers; in {source} entry {start + first} it is {values[first]!r} "
            f"({int(bad.sum())} such entries in this step)"
        )
        raise BranchError(msg)
