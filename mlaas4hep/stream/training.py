"""Statistics from training events only: where each file's training events end, for the first pass.

With ``validation_split`` and/or ``test_split`` (and a ``subset``), the specs
that normalize the features are computed over the training events alone, the
very events ``subset="training"`` serves (the same ``nevts`` apportioning, the
same cut), whatever the subset made: held-out events never shape the training
inputs, and the training, validation and test parts made with the same
arguments compute the same specs. The training events of a file are the first
of its used events, so the first pass reads each file up to the entry after
its last training event (:func:`training_stops`) and no further.

Folded sequences (``folds``) compute the specs of every part of fold ``j``
over the training events of the training folds (see :mod:`mlaas4hep.inputs.folds`):
with ``validation_split`` or ``nevts``, the same stops, found among the
training folds' events.
A sequence without a split (``subset`` None) keeps statistics over all events.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..specs.first_pass import own_specs_path
from ..specs.values import Specs
from .plan import subset_ranges
from .safeguards import check_split

__all__ = ["check_recorded_split", "statistics_from_training", "training_stops"]


def statistics_from_training(options: Any) -> bool:
    """Whether the specs of a sequence made with ``options`` are computed over its split's training events.

    True with a ``subset`` and a ``validation_split`` or ``test_split``, but
    folds (whose specs are the training folds').

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> statistics_from_training(SimpleNamespace(subset="test", folds=None, validation_split=0.2, test_split=0.1))
    True
    >>> statistics_from_training(SimpleNamespace(subset=None, folds=None, validation_split=None, test_split=None))
    False
    """
    return options.subset is not None and not options.folds and bool(options.validation_split or options.test_split)


def training_stops(events: Sequence[int], selected: Sequence[np.ndarray] | None, options: Any) -> list[int]:
    """Per file, the entry after its last training event: the first pass reads the entries before it.

    Parameters
    ----------
    events : sequence of int
        Per file, its events: entries, or those passing the cut (and with finite outputs).
    selected : sequence of numpy.ndarray, or None
        Per file, the entries of its events in order (None: every entry is an event).
    options : Options
        ``nevts``, ``validation_split`` and ``test_split`` cut the events as
        :func:`~mlaas4hep.stream.plan.subset_ranges` does for ``subset="training"``.

    Returns
    -------
    list of int
        Per file, the entry stop (0 for a file with no training event).

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> o = SimpleNamespace(nevts=-1, validation_split=0.2, test_split=0.1)
    >>> training_stops([100, 10], None, o)
    [70, 7]
    >>> training_stops([3], [np.array([2, 5, 9])], SimpleNamespace(nevts=-1, validation_split=0.34, test_split=None))
    [6]
    """
    ranges = subset_ranges(events, options.nevts, options.validation_split, options.test_split, "training")
    if selected is None:
        return [stop for _, stop in ranges]
    return [int(entries[stop - 1]) + 1 if stop else 0 for entries, (_, stop) in zip(selected, ranges, strict=True)]


def check_recorded_split(options: Any) -> None:
    """Refuse a validation or test part whose specs file records another split, before any first pass.

    Specs over training events are keyed by where those events end, so a part
    split otherwise would not reuse the file but rebuild it (replacing the
    training part's specs); :func:`~mlaas4hep.stream.safeguards.check_split`
    refuses it instead, as it refuses ``specs=train.specs``.

    Raises
    ------
    ParameterError
        The file records a split other than ``options``'.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> check_recorded_split(SimpleNamespace(specs=None, subset="validation"))  # nothing recorded: nothing to check
    """
    given = options.specs
    if not isinstance(given, (str, os.PathLike)) or options.subset in (None, "training"):
        return
    path = own_specs_path(given)
    if Path(path).exists() and Specs.written_by_us(path):
        check_split(Specs.load(path), options)
