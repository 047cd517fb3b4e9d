"""The models of a k-fold training given together: checked as one set, each entry routed to its fold's model.

Model ``j`` of a k-fold training by event number
(:mod:`mlaas4hep.inputs.folds`) was trained on every fold but ``j``: it
scores the entries of fold ``j`` (``fold_by % k == j``), which it never saw.
:func:`paired` checks that the preprocessings given are those of one such
training (the same ``folds``, ``fold_by`` and layout, each fold once);
:func:`entry_folds` gives each entry's fold.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import DataWarning, ParameterError
from ..inputs.formats import open_table
from ..inputs.selection import Selection
from ..inputs.sources import FileSource
from ..preprocessing import Preprocessing

__all__ = ["entry_folds", "paired", "warn_single_fold"]

_KEY = "_mlaas4hep_scores_fold_by"  # fold_by as an alias of its own, to compute its values


def _name(given: Any, position: int) -> str:
    """How an error names a preprocessing: its path, or its position in the list."""
    return repr(os.fspath(given)) if isinstance(given, (str, os.PathLike)) else f"preprocessing[{position}]"


def paired(model: Any, preprocessing: Any) -> tuple[list[Any], list[Preprocessing]]:
    """The models and their loaded preprocessings, paired by position; with several, checked as k folds.

    One model and one preprocessing (or a list of one each) are returned as
    they are. Several must be the ``k`` models of one k-fold training, in
    any order: see :func:`check_folds`.

    Raises
    ------
    ParameterError
        Lists of different lengths, an empty list, or preprocessings that are not one k-fold set.

    Examples
    --------
    >>> models, recipes = paired(["m0.keras", "m1.keras"], ["p0.json", "p1.json"])  # doctest: +SKIP
    >>> sorted(p.fold for p in recipes)  # doctest: +SKIP
    [0, 1]
    """
    many = isinstance(model, (list, tuple)), isinstance(preprocessing, (list, tuple))
    models = list(model) if many[0] else [model]
    given = list(preprocessing) if many[1] else [preprocessing]
    if len(models) != len(given) or not models:
        msg = (
            f"give one preprocessing per model, paired by position: got {len(models)} model"
            f"{'s' * (len(models) != 1)} and {len(given)} preprocessing{'s' * (len(given) != 1)}"
        )
        raise ParameterError(msg)
    loaded = [p if isinstance(p, Preprocessing) else Preprocessing.load(p) for p in given]
    if len(loaded) > 1:
        check_folds(loaded, [_name(p, i) for i, p in enumerate(given)])
    return models, loaded


def check_folds(preprocessings: Sequence[Preprocessing], names: Sequence[str]) -> None:
    """Raise unless ``preprocessings`` are those of one k-fold training: folds 0 to k-1, each once.

    They must all be folded, with the same ``folds`` (``k``, as many as
    given) and ``fold_by``, and make inputs of the same shapes (their
    normalizations may differ: each model uses its own).

    Raises
    ------
    ParameterError
        Naming the preprocessing at fault (``names``: paths or positions).

    Examples
    --------
    >>> check_folds([p0, p2, p1], ["p0.json", "p2.json", "p1.json"])  # doctest: +SKIP
    """
    first = preprocessings[0]
    for p, name in zip(preprocessings, names, strict=True):
        if p.folds is None:
            msg = (
                f"the preprocessing {name} was made without folds: several models must be the k models of one "
                "k-fold training (folds, fold, fold_by); score an unfolded model alone"
            )
            raise ParameterError(msg)
        for what in ("folds", "fold_by"):
            if getattr(p, what) != getattr(first, what):
                msg = (
                    f"the preprocessings {names[0]} and {name} have {what}={getattr(first, what)!r} and "
                    f"{getattr(p, what)!r}: give the models of one k-fold training"
                )
                raise ParameterError(msg)
        if p.layout != first.layout:  # the widths may differ: each fold's lists were measured on its own events
            msg = (
                f"the preprocessings {names[0]} and {name} have layout={first.layout!r} and {p.layout!r}: "
                "give the models of one k-fold training"
            )
            raise ParameterError(msg)
    _check_each_fold_once(preprocessings, names)


def _check_each_fold_once(preprocessings: Sequence[Preprocessing], names: Sequence[str]) -> None:
    """Folds 0 to k-1 are each given exactly once."""
    k = preprocessings[0].folds
    seen: dict[int, str] = {}
    for p, name in zip(preprocessings, names, strict=True):
        assert p.fold is not None  # folded (checked)
        if p.fold in seen:
            msg = f"fold {p.fold} is given twice ({seen[p.fold]} and {name}): give one model per fold"
            raise ParameterError(msg)
        seen[p.fold] = name
    missing = [j for j in range(k or 0) if j not in seen]
    if missing:
        msg = (
            f"folds={k} needs the {k} models of folds 0 to {(k or 0) - 1}, got {len(seen)}: "
            f"fold{'s' * (len(missing) > 1)} {', '.join(map(str, missing))} missing"
        )
        raise ParameterError(msg)


def warn_single_fold(preprocessing: Preprocessing, name: str) -> None:
    """Warn (:class:`~mlaas4hep.errors.DataWarning`) that a folded model alone also scores the events it trained on.

    Examples
    --------
    >>> warn_single_fold(p2, "'model_fold2.preprocessing.json'")  # doctest: +SKIP
    """
    k, j = preprocessing.folds, preprocessing.fold
    msg = (
        f"the preprocessing {name} is of fold {j} of a {k}-fold training (fold_by={preprocessing.fold_by!r}): "
        f"its model trained on the events of the other folds, and scores them too; to score every entry with "
        f"the model that never saw it, give the {k} models and their preprocessings together "
        f"(write_scores([model_0, ..., model_{(k or 0) - 1}], files, preprocessing=[...]), or --model and "
        f"--preprocessing once per fold), or cut=f'({preprocessing.fold_by}) % {k} == {j}' for its test fold alone"
    )
    warnings.warn(msg, DataWarning, stacklevel=3)


def entry_folds(source: FileSource, preprocessing: Preprocessing, timeout: float) -> np.ndarray:
    """The fold of each entry of ``source``: ``fold_by % folds``, non-negative, as int32.

    Reads only the branches ``fold_by`` needs (its values were checked to be
    integers by :func:`~mlaas4hep.inputs.folds.check_fold_values`).

    Examples
    --------
    >>> entry_folds(FileSource("f.root", "Events"), p0, 60.0)  # doctest: +SKIP
    array([0, 1, 2, 0, ...], dtype=int32)
    """
    assert preprocessing.folds is not None and preprocessing.fold_by is not None  # folded (checked)
    selection = Selection(None, {**dict(preprocessing.aliases), _KEY: preprocessing.fold_by})
    parts = []
    with open_table(source, timeout) as table:
        for arrays in table.iterate(selection.branches([_KEY], cut=False), "100 MB"):
            values = np.asarray(selection.derive(arrays, [_KEY], len(arrays))[_KEY])
            parts.append(np.mod(values, preprocessing.folds).astype(np.int32))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
