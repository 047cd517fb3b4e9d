"""What a batch holds besides ``x``: labels or regression targets, and sample weights.

:class:`Outputs` never opens a file: given a chunk's events (awkward arrays, or
a mapping of branch name to values) and the file each event came from, it
returns ``y`` and the sample weights ``w`` that Keras' ``fit`` takes as
``(x, y, sample_weight)``, with whole-array numpy operations.

* **Classification**: one label per file (several files may share one), or a
  label branch; with ``one_hot`` the integer labels ``0 .. K-1`` become rows of
  the identity matrix, for ``categorical_crossentropy``.
* **Regression**: ``targets`` names one branch (``y`` of shape ``(batch,)``) or
  several (``(batch, n_targets)``); target branches are never features.
* **Weights**: an event-weight branch (e.g. ``genWeight``), a factor per file
  (e.g. cross-section x luminosity / generated events), and optionally class
  balancing, which scales each class so that all classes carry the same total
  weight (and the mean weight over the sequence is 1).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._arrays import flat_values
from ..errors import ParameterError

__all__ = ["Outputs", "one_hot_encode", "per_file_totals", "totals_by_class"]


def one_hot_encode(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Integer labels as float32 rows of the identity matrix, shape ``(n, num_classes)``."""
    return np.eye(num_classes, dtype=np.float32)[np.asarray(labels).astype(np.int64)]


def _names(value: str | Sequence[str] | None, what: str) -> list[str]:
    if value is None:
        return []
    names = [value] if isinstance(value, str) else list(value)
    if not names or not all(isinstance(n, str) and n for n in names):
        msg = f"{what} must be a branch name or a non-empty list of branch names, got {value!r}"
        raise ParameterError(msg)
    return names


class Outputs:
    """Labels or targets, and sample weights, of the events of a chunk.

    Parameters
    ----------
    n_files : int
        Number of input files.
    labels : sequence of float, optional
        One label per file.
    label_branch : str, optional
        Branch holding each event's label (read by :class:`~mlaas4hep.ChunkReader`).
    targets : str or sequence of str, optional
        Regression target branches (or aliases); exclusive with labels.
    weights : str, optional
        Branch (or alias) holding each event's weight.
    file_weights : sequence of float, optional
        A non-negative factor per file, multiplying its events' weights.
    balance_classes : bool
        Scale the weights so that every class has the same total weight.
    one_hot : bool
        Serve labels one-hot encoded, shape ``(batch, num_classes)``.
    num_classes : int, optional
        Number of classes ``K``; default the largest per-file label plus one.
        Needed with ``one_hot`` and a label branch.
    """

    def __init__(
        self,
        n_files: int,
        *,
        labels: Sequence[float] | None = None,
        label_branch: str | None = None,
        targets: str | Sequence[str] | None = None,
        weights: str | None = None,
        file_weights: Sequence[float] | None = None,
        balance_classes: bool = False,
        one_hot: bool = False,
        num_classes: int | None = None,
    ) -> None:
        self.labels = None if labels is None else np.asarray(labels, dtype=np.float64)
        self.label_branch = label_branch
        self.targets = _names(targets, "targets")
        self.single_target = isinstance(targets, str)
        if self.targets and (labels is not None or label_branch is not None):
            msg = "give labels (classification) or targets (regression), not both"
            raise ParameterError(msg)
        if weights is not None and (not isinstance(weights, str) or not weights):
            msg = f"weights must be the name of a branch holding each event's weight, got {weights!r}"
            raise ParameterError(msg)
        self.weights = weights
        self.file_weights = None
        if file_weights is not None:
            fw = np.asarray(file_weights, dtype=np.float64)
            if fw.shape != (n_files,) or not np.all(np.isfinite(fw)) or (fw < 0).any():
                msg = f"file_weights must be {n_files} finite non-negative numbers (one per file), got {file_weights!r}"
                raise ParameterError(msg)
            self.file_weights = fw
        classified = labels is not None or label_branch is not None
        if (one_hot or balance_classes) and not classified:
            what = "one_hot" if one_hot else "balance_classes"
            msg = f"{what}=True needs class labels (labels per file or a label branch)"
            raise ParameterError(msg)
        bad_k = isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2
        if num_classes is not None and bad_k:
            msg = f"num_classes must be an integer >= 2, got {num_classes!r}"
            raise ParameterError(msg)
        if self.labels is not None and (one_hot or balance_classes or num_classes is not None):
            bad = self.labels[(self.labels != np.round(self.labels)) | (self.labels < 0)]
            if bad.size:
                msg = f"class labels must be integers 0, 1, ..., K-1; got {bad.tolist()} in {self.labels.tolist()}"
                raise ParameterError(msg)
            needed = int(self.labels.max()) + 1
            if num_classes is not None and needed > num_classes:
                msg = f"labels go up to {needed - 1}, which needs num_classes >= {needed}, got {num_classes}"
                raise ParameterError(msg)
            num_classes = max(num_classes or 0, needed, 2)
        if one_hot and num_classes is None:
            msg = f"one_hot=True with the label branch {label_branch!r} needs num_classes (the number of classes)"
            raise ParameterError(msg)
        self.one_hot = bool(one_hot)
        self.num_classes = num_classes
        self.balance_classes = bool(balance_classes)
        self.class_factors: np.ndarray | None = None

    @property
    def branches(self) -> list[str]:
        """Branches (or aliases) read for ``y`` and ``w``, besides the label branch: never features."""
        return [*self.targets, *([self.weights] if self.weights else [])]

    @property
    def weighted(self) -> bool:
        """Whether batches carry sample weights, ``(x, y, w)``."""
        return self.weights is not None or self.file_weights is not None or self.balance_classes

    def with_one_hot(self, num_classes: int) -> Outputs:
        """A copy that serves the labels one-hot over at least ``num_classes`` classes; ``self`` is left as it is.

        Examples
        --------
        >>> Outputs(2, labels=[0, 1]).with_one_hot(3).batch_y(np.array([1.0])).tolist()
        [[0.0, 1.0, 0.0]]
        """
        if self.labels is not None:
            num_classes = max(num_classes, int(self.labels.max()) + 1)
        served = copy.copy(self)
        served.one_hot, served.num_classes = True, int(num_classes)
        return served

    def _check_labels(self, labels: np.ndarray) -> None:
        if self.num_classes is None or self.label_branch is None:
            return  # per-file labels were checked when made
        bad = (labels != np.round(labels)) | (labels < 0) | (labels >= self.num_classes)
        if bad.any():
            msg = (
                f"label branch {self.label_branch!r} holds {labels[bad][0]!r}, not a class 0..{self.num_classes - 1} "
                f"(num_classes={self.num_classes})"
            )
            raise ParameterError(msg)

    def extract(
        self,
        pieces: Sequence[Any],
        file_index: np.ndarray,
        labels: np.ndarray | None,
        *,
        balanced: bool = True,
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """``(y, w)`` of a chunk's events.

        Parameters
        ----------
        pieces : sequence of awkward record arrays or mappings
            The chunk's events, one piece after another, holding :attr:`branches`.
        file_index : numpy.ndarray of int
            File of each event.
        labels : numpy.ndarray, optional
            Label of each event (from the reader).
        balanced : bool
            Apply the class-balancing factors (False while they are being computed).

        Returns
        -------
        y : float32 array of shape (n,) or (n, n_targets), or None
            Labels (integers as floats; one-hot encoding happens per batch) or targets.
        w : float32 array of shape (n,), or None when unweighted
        """
        y: np.ndarray | None
        if self.targets:
            columns = [np.concatenate([flat_values(_get(p, t, "target")) for p in pieces]) for t in self.targets]
            y = (columns[0] if self.single_target else np.stack(columns, axis=1)).astype(np.float32, copy=False)
        else:
            y = labels
            if y is not None:
                self._check_labels(y)
        if not self.weighted:
            return y, None
        w = np.ones(len(file_index), dtype=np.float64)
        if self.weights is not None:
            w *= np.concatenate([flat_values(_get(p, self.weights, "weights")) for p in pieces])
        if self.file_weights is not None:
            w *= self.file_weights[file_index]
        if balanced and self.class_factors is not None and y is not None:
            w *= self.class_factors[y.astype(np.int64)]
        return y, w.astype(np.float32)

    def with_class_totals(self, totals: np.ndarray) -> Outputs:
        """A copy that balances the classes, given each class's total weight before balancing.

        Class ``c`` gets the factor ``mean(totals of the classes present) / totals[c]``:
        every class present then weighs the same, and the mean weight stays 1
        when the input weights average 1. ``self`` is left as it is.

        Examples
        --------
        >>> out = Outputs(2, labels=[0, 1], balance_classes=True)
        >>> out.with_class_totals(np.array([30.0, 10.0])).class_factors.tolist()
        [0.6666666666666666, 2.0]
        """
        totals = np.asarray(totals, dtype=np.float64)
        if self.num_classes is not None and totals.size < self.num_classes:
            totals = np.pad(totals, (0, self.num_classes - totals.size))
        present = totals > 0
        if not present.any():
            msg = "balance_classes: every class has total weight 0"
            raise ParameterError(msg)
        factors = np.zeros_like(totals)
        factors[present] = totals[present].mean() / totals[present]
        balanced = copy.copy(self)
        balanced.class_factors = factors
        return balanced

    def batch_y(self, y: np.ndarray | None) -> np.ndarray | None:
        """``y`` as served: one-hot encoded when asked for."""
        if y is None or not self.one_hot or self.num_classes is None:
            return y
        return one_hot_encode(y, self.num_classes)


def _get(piece: Any, name: str, what: str) -> Any:
    try:
        return piece[name]
    except (KeyError, ValueError) as err:
        msg = f"{what} branch {name!r} is missing from the events read"
        raise ParameterError(msg) from err


def totals_by_class(labels: np.ndarray, weights: np.ndarray | None, num_classes: int | None) -> np.ndarray:
    """Total weight (or count) of each class ``0 .. K-1`` among ``labels``."""
    return np.bincount(np.asarray(labels).astype(np.int64), weights=weights, minlength=num_classes or 0)


def per_file_totals(
    labels: Sequence[float] | np.ndarray, counts: np.ndarray, file_weights: np.ndarray | None
) -> np.ndarray:
    """Class totals when each file has one label and no event-weight branch: no data to read."""
    weights = np.asarray(counts, dtype=np.float64) * (1.0 if file_weights is None else file_weights)
    return np.bincount(np.asarray(labels).astype(np.int64), weights=weights)
