"""Columns of a flattened chunk: where each branch's values go, and how they are normalized.

A :class:`Column` places one branch in the float32 matrix that
:class:`~mlaas4hep.JaggedFlattener` fills (a flat branch takes one column, a
jagged one ``width`` columns, ``step`` apart) and holds its normalization,
``(x - offset) * scale``. :func:`scaling` derives that normalization from the
branch's specs, the same for both layouts of the flattener; a
:class:`Collection` places the branches of one collection side by side, entry
after entry, followed by the collection's mask (the collections layout).

Normalization is exact to float32 rounding whatever the offset: values are
centered and scaled in float64 (integers have the offset's integer part
subtracted in integer arithmetic first), then stored as float32. Only where
float32 arithmetic gives the same result (float32 values, or integers below
2**24, with an offset that float32 holds exactly) is it done in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._arrays import integer_difference
from ..errors import SpecsError
from ..specs.values import BranchSpec

__all__ = ["Collection", "Column", "exact32", "fits32", "scaling", "scatter_indices"]


@dataclass(frozen=True)
class Column:
    """Where branch ``name`` goes in the matrix, and how it is normalized.

    Entry ``j`` of the branch (its only value, for a flat branch) is column
    ``start + j * step``, for ``j < width``; ``collection`` is the index of the
    :class:`Collection` it belongs to (-1: none, the flat layout).
    """

    name: str
    start: int
    width: int
    jagged: bool
    offset: float  # normalized = (x - offset) * scale
    scale: float
    base: int = 0  # integer branches: offset = base + frac, base subtracted exactly
    frac: float = 0.0
    exact32: bool = True  # float32 arithmetic is exact to float32 rounding for this column
    step: int = 1
    collection: int = -1

    @property
    def cells(self) -> slice:
        """The columns of the branch in the matrix."""
        return slice(self.start, self.start + self.width * self.step, None if self.step == 1 else self.step)

    def centered(self, values: np.ndarray) -> np.ndarray:
        """``values - offset`` in float64; for integers the integer part of the offset is subtracted exactly."""
        if values.dtype.kind in "biu":
            d = integer_difference(values, self.base)
            return d - self.frac if self.frac else d
        return values.astype(np.float64) - self.offset


@dataclass(frozen=True)
class Collection:
    """Jagged branches that share their counts, written side by side: the collections layout.

    Entry ``j`` of branch ``branches[b]`` is column ``start + j * len(branches) + b``
    (so row ``r`` of the ``width * len(branches)`` columns from ``start`` is the
    ``(width, len(branches))`` block of event ``r``), and the ``width`` columns
    from :attr:`mask_start` are the mask: 1 for an entry the event has, 0 for padding.
    """

    name: str
    branches: tuple[str, ...]
    width: int
    start: int

    @property
    def mask_start(self) -> int:
        """First column of the mask."""
        return self.start + self.width * len(self.branches)

    @property
    def stop(self) -> int:
        """One past the last column (of the mask)."""
        return self.mask_start + self.width


def fits32(dtype: np.dtype[Any]) -> bool:
    """Whether values of ``dtype`` may take the float32 path: floats of at most 32 bits, integers of at most 32."""
    return dtype.itemsize <= 4 and dtype.kind in "fbiu"


def exact32(spec: BranchSpec, offset: float, scale: float) -> bool:
    """Whether (x - offset) * scale computed in float32 is the float32 rounding of the exact value."""
    if offset == 0 and scale == 1:  # a single rounding, whatever the dtype
        return True
    try:
        dtype = np.dtype(spec.dtype)
    except TypeError:
        return False
    if dtype.kind == "f":
        exact_values = dtype.itemsize <= 4
    elif dtype.kind in "biu":
        exact_values = spec.count == 0 or max(abs(spec.min), abs(spec.max)) <= 2**24
    else:
        exact_values = False
    return exact_values and float(np.float32(offset)) == offset


def scaling(spec: BranchSpec, normalization: str | None) -> tuple[float, float, int, float]:
    """Return (offset, scale, base, frac) so that normalized = (x - offset) * scale.

    For integer branches ``offset == base + frac`` with ``base`` an exact
    integer, however large, and ``frac`` the small rest; for others ``base``
    is 0 and ``frac`` the offset. Specs that give a range and no count (the
    original MLaaS4HEP's) are min-max normalized with that range.
    """
    declared = spec.count == 0 and bool(np.isfinite(spec.min)) and bool(np.isfinite(spec.max))
    if normalization is None or (spec.count == 0 and not declared):
        return 0.0, 1.0, 0, 0.0
    integer = isinstance(spec.min, int) and isinstance(spec.max, int)
    if normalization == "minmax":
        span = spec.max - spec.min  # exact for integers
        scale = 1.0 / span if span > 0 else 0.0
        if integer:
            return float(spec.min), scale, int(spec.min), 0.0
        return float(spec.min), scale, 0, float(spec.min)
    if declared:
        msg = (
            f"branch {spec.name!r} has a range but no mean or standard deviation in the specs (as the original "
            "MLaaS4HEP's specs): use normalization='minmax', or make the specs with a first pass"
        )
        raise SpecsError(msg)
    scale = 1.0 / spec.std if spec.std > 0 else 0.0
    if integer:  # the mean counted from mean_ref: its whole part joins the exact base
        whole = int(np.floor(spec.mean))
        return spec.mean_value, scale, spec.mean_ref + whole, spec.mean - whole
    return spec.mean_value, scale, 0, spec.mean_value


def scatter_indices(
    counts: np.ndarray, width: int, stride: int, rows_out: np.ndarray, step: int = 1
) -> tuple[np.ndarray | None, np.ndarray]:
    """Where each kept list element comes from (in the content) and goes to (in ``X.ravel()``).

    Event ``i``'s list goes to row ``rows_out[i]``, element ``j`` of it ``j * step``
    cells after the row's first (of ``stride``); elements past ``width`` are
    dropped. The source is None when every element is kept.
    """
    counts = counts.astype(np.int64, copy=False)
    total = int(counts.sum())
    event = np.repeat(np.arange(counts.size, dtype=np.int64), counts)
    starts = np.cumsum(counts) - counts
    local = np.arange(total, dtype=np.int64) - starts[event]
    keep = local < width
    source = None
    if not keep.all():
        source = np.flatnonzero(keep)
        event, local = event[keep], local[keep]
    if step != 1:
        local *= step
    return source, rows_out[event] * stride + local
