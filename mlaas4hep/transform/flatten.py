"""Turning a chunk of events into a fixed-width float32 matrix and its mask.

:class:`JaggedFlattener` never opens a file: it takes awkward arrays (a chunk as
read by uproot) and returns ``X`` of shape ``(n_events, n_features)`` and a
boolean mask ``M`` of the same shape, with numpy operations on whole branches
and no Python loop over events. Where each branch goes and how it is
normalized is :mod:`mlaas4hep.transform.columns`' (exact to float32 rounding whatever
the offset); the collections layout (:mod:`mlaas4hep.transform.tensors`)
places the same columns otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import awkward as ak
import numpy as np

from .._arrays import flat_values, jagged_parts, record_parts
from ..errors import BranchError, ParameterError
from ..specs.values import BranchSpec, Specs
from .columns import Collection, Column, exact32, fits32, scaling, scatter_indices

__all__ = ["NORMALIZATIONS", "JaggedFlattener"]

NORMALIZATIONS = ("minmax", "standard", None)
"""Accepted values of ``normalization``."""


class JaggedFlattener:
    """Flatten branches into columns: one per flat branch, ``N`` per fixed-size array, ``L`` per jagged branch.

    Parameters
    ----------
    specs : Specs
        Branch statistics from the first pass; they fix the columns and the
        normalization.
    branches : sequence of str, optional
        Branches to use, default all of ``specs`` (columns are always flat
        branches and fixed-size arrays sorted by name, then jagged branches
        sorted by name). A fixed-size array of ``N`` numbers (``double[3]``)
        takes ``N`` columns, normalized alike with the statistics of all its
        numbers, and is never padded: only its non-finite values are.
    normalization : {"minmax", "standard", None}
        ``"minmax"`` maps ``[min, max]`` to ``[0, 1]`` as the original did;
        ``"standard"`` subtracts the mean and divides by the standard
        deviation; ``None`` keeps raw values. A constant branch becomes 0.
    pad_value : float
        Value of padded slots and of non-finite inputs (NaN, inf); their mask is 0.
    max_lengths : int or mapping of str to int, optional
        Cap on the columns of jagged branches: one int for all, or per branch;
        longer lists are clipped. Default: each branch's maximum length in the specs.
    length_quantile : float, optional
        Alternative cap: each jagged branch's length at this quantile of its
        length distribution (e.g. 0.999), instead of a rare maximum.
    collections : sequence of Collection, optional
        Place the jagged branches as these collections instead, each
        branch's entries ``len(branches)`` columns apart and the collection's
        mask after them (every jagged branch in one; their widths are the
        collections'): the collections layout, see
        :class:`~mlaas4hep.transform.tensors.CollectionsFlattener`.

    Examples
    --------
    >>> flattener = JaggedFlattener(specs, max_lengths={"Jet_pt": 10})  # doctest: +SKIP
    >>> X, M = flattener.transform(arrays)  # doctest: +SKIP
    """

    def __init__(
        self,
        specs: Specs,
        branches: Sequence[str] | None = None,
        *,
        normalization: str | None = "minmax",
        pad_value: float = 0.0,
        max_lengths: int | Mapping[str, int] | None = None,
        length_quantile: float | None = None,
        collections: Sequence[Collection] = (),
    ) -> None:
        if normalization not in NORMALIZATIONS:
            msg = f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}"
            raise ParameterError(msg)
        if max_lengths is not None and length_quantile is not None:
            msg = "give either max_lengths or length_quantile, not both"
            raise ParameterError(msg)
        self.specs = specs if branches is None else specs.select(branches)
        if not self.specs.branches:
            msg = "no branches to flatten"
            raise BranchError(msg)
        self.normalization = normalization
        self.pad_value = float(pad_value)
        self.collections = tuple(collections)
        placed = {name: (k, b, g) for k, g in enumerate(self.collections) for b, name in enumerate(g.branches)}
        if self.collections and set(placed) != set(self.specs.jagged):
            msg = f"collections must place every jagged branch once: {sorted(placed)} for {self.specs.jagged}"
            raise ParameterError(msg)
        self._columns: list[Column] = []
        start = 0
        for name in self.specs.flat + (list(placed) or self.specs.jagged):
            spec = self.specs[name]
            if name in placed:
                k, b, g = placed[name]
                self._columns.append(self._column(name, spec, g.start + b, g.width, len(g.branches), k))
                continue
            width = self._width(name, max_lengths, length_quantile) if spec.is_jagged else spec.width
            self._columns.append(self._column(name, spec, start, width))
            start += width
        self.num_features = max([start, *(g.stop for g in self.collections)])
        if not self.num_features:
            empty = [c.name for c in self._columns if c.width == 0]
            msg = (
                f"no feature left: the jagged branches {empty} have width 0 (empty in every event, or capped "
                "at 0 by max_lengths or length_quantile); select other branches"
            )
            raise BranchError(msg)
        self._n_flat = len(self.specs.flat)  # branches, then columns: the flat branches' and fixed-size arrays'
        flat = self._columns[: self._n_flat]
        self._n_event = sum(c.width for c in flat)
        self._flat_scale = np.repeat([c.scale for c in flat], [c.width for c in flat]).astype(np.float64)

    def _column(self, name: str, spec: BranchSpec, start: int, width: int, step: int = 1, k: int = -1) -> Column:
        offset, scale, base, frac = scaling(spec, self.normalization)
        exact = exact32(spec, offset, scale)
        return Column(name, start, width, spec.is_jagged, offset, scale, base, frac, exact, step, k)

    def _width(self, name: str, max_lengths: int | Mapping[str, int] | None, quantile: float | None) -> int:
        spec = self.specs[name]
        if quantile is not None:
            return spec.length_quantile(quantile)
        if max_lengths is None:
            return spec.max_length
        if isinstance(max_lengths, Mapping):
            unknown = set(max_lengths) - set(self.specs.jagged)
            if unknown:
                msg = f"max_lengths names {sorted(unknown)}, which are not jagged branches: {self.specs.jagged}"
                raise ParameterError(msg)
            cap = max_lengths.get(name, spec.max_length)
        else:
            cap = max_lengths
        if int(cap) < 0:
            msg = f"max_lengths for {name!r} must be >= 0, got {cap!r}"
            raise ParameterError(msg)
        return int(cap)

    @property
    def feature_names(self) -> list[str]:
        """Column names: ``name`` for flat branches, ``name_0``, ``name_1``, ... for jagged ones and fixed-size arrays.

        In the collections layout, ``Jet_mask_0``, ... name the columns of collection ``Jet``'s mask.
        """
        names = [""] * self.num_features
        for c in self._columns:
            numbered = c.jagged or self.specs[c.name].is_fixed
            names[c.cells] = [f"{c.name}_{j}" for j in range(c.width)] if numbered else [c.name]
        for g in self.collections:
            names[g.mask_start : g.stop] = [f"{g.name}_mask_{j}" for j in range(g.width)]
        return names

    @property
    def input_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Shape (without the batch axis) and dtype of each input of a model: here one, ``features``."""
        return {"features": ((self.num_features,), "float32")}

    def inputs(self, X: np.ndarray) -> np.ndarray | dict[str, np.ndarray]:
        """A model's inputs from rows of ``X``: ``X`` itself (the collections layout splits it into a dict)."""
        return X

    @property
    def branches(self) -> list[str]:
        """Branches read, in column order."""
        return [c.name for c in self._columns]

    @property
    def widths(self) -> dict[str, int]:
        """Columns of each branch: 1 for a flat one, its size for a fixed-size array, its (capped) length if jagged."""
        return {c.name: c.width for c in self._columns}

    def columns(self, name: str) -> slice:
        """The columns of branch ``name`` in ``X``."""
        for c in self._columns:
            if c.name == name:
                return c.cells
        msg = f"no branch {name!r}; branches: {self.branches}"
        raise BranchError(msg)

    def transform(
        self,
        arrays: ak.Array | Mapping[str, ak.Array] | Sequence[ak.Array],
        order: np.ndarray | None = None,
        *,
        mask: bool = True,
        out: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Flatten events into ``(X, M)``.

        Parameters
        ----------
        arrays : awkward record array, mapping of branch name to array, or a list of them
            Events with (at least) the flattener's branches; a list (a chunk read
            from several files) is stacked in order.
        order : numpy.ndarray of int, optional
            A permutation of the events: row ``r`` of the result holds event
            ``order[r]``. Shuffling while flattening costs nothing extra, and
            batches are then contiguous slices of ``X``.
        mask : bool
            Also build the mask (default True); without it ``M`` is None, which
            saves a quarter of the memory and time.
        out : numpy.ndarray of float32, optional
            Buffer of shape ``(n_events, num_features)`` to write ``X`` into
            (reusing memory is faster than allocating it anew).

        Returns
        -------
        X : numpy.ndarray of float32, shape (n_events, num_features)
        M : numpy.ndarray of bool, same shape; True where ``X`` holds a real, finite value (None if ``mask=False``)
        """
        if out is not None:
            n = sum(self._sizes(arrays))
            if out.shape != (n, self.num_features) or out.dtype != np.float32:
                msg = f"out must be a float32 array of shape {(n, self.num_features)}, got {out.dtype} {out.shape}"
                raise ParameterError(msg)
        X, M, _ = self.transform_into(arrays, order, mask=mask, buffer=out)
        return X, M

    def _sizes(self, arrays: ak.Array | Mapping[str, ak.Array] | Sequence[ak.Array]) -> list[int]:
        pieces: list[Any] = list(arrays) if isinstance(arrays, (list, tuple)) else [arrays]
        return [len(p[self._columns[0].name]) for p in pieces]

    def transform_into(
        self,
        arrays: ak.Array | Mapping[str, ak.Array] | Sequence[ak.Array],
        order: np.ndarray | None,
        *,
        mask: bool,
        buffer: np.ndarray | None,
        written: list[tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None, list[tuple[np.ndarray, np.ndarray]]]:
        """:meth:`transform` into the first rows of ``buffer`` (a new array if None).

        ``written``, when given, says which cells of ``buffer`` hold anything
        but padding in the jagged columns: those the previous call wrote,
        returned as its third result. Only they are padded again, instead of
        the whole buffer (most of a padded matrix is padding). The flat
        columns of the rows used are always written in full.
        """
        pieces = list(arrays) if isinstance(arrays, (list, tuple)) else [arrays]
        sizes = self._sizes(pieces)
        n = sum(sizes)
        destination = None
        if order is not None:
            order = np.asarray(order, dtype=np.int64)
            if order.shape != (n,):
                msg = f"order must be a permutation of {n} events, got shape {order.shape}"
                raise ParameterError(msg)
            destination = np.empty(n, dtype=np.int64)
            destination[order] = np.arange(n, dtype=np.int64)
        if buffer is None:
            X = np.full((n, self.num_features), self.pad_value, dtype=np.float32)
        else:
            if written is None:
                buffer.fill(self.pad_value)
            else:  # every jagged cell but those is padding already
                flat = buffer.reshape(-1)
                for target, starts in written:
                    flat[target + starts] = self.pad_value
            X = buffer[:n]
        M = np.zeros((n, self.num_features), dtype=np.bool_) if mask else None
        rows = np.arange(n, dtype=np.int64) if destination is None else destination
        now_written: list[tuple[np.ndarray, np.ndarray]] = []
        self._fill_pieces(pieces, X, M, rows, sizes, now_written)
        return X, M, now_written

    def write_rows(
        self,
        pieces: Sequence[ak.Array | Mapping[str, ak.Array]],
        X: np.ndarray,
        M: np.ndarray | None,
        rows: np.ndarray,
    ) -> None:
        """Flatten consecutive ``pieces`` into rows ``rows`` of ``X`` (and ``M``), padding those rows first."""
        X[rows] = self.pad_value
        if M is not None:
            M[rows] = False
        self._fill_pieces(pieces, X, M, rows)

    def _fill_pieces(
        self,
        pieces: Sequence[ak.Array | Mapping[str, ak.Array]],
        X: np.ndarray,
        M: np.ndarray | None,
        rows: np.ndarray,
        sizes: Sequence[int] | None = None,
        written: list[tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> None:
        """Write consecutive ``pieces`` (of ``sizes`` events, if known) into rows ``rows`` of ``X`` and ``M``.

        The cells of the jagged columns written are added to ``written``, if
        given, as ``(target, starts)``: ``X.ravel()[target + starts]``.
        """
        if sizes is None:
            sizes = [len(p[self._columns[0].name]) for p in pieces]
        row = 0
        for piece, size in zip(pieces, sizes, strict=True):
            self._fill(piece, X, M, rows[row : row + size], written)
            row += size

    def _fill(
        self,
        arrays: ak.Array | Mapping[str, ak.Array],
        X: np.ndarray,
        M: np.ndarray | None,
        rows: np.ndarray,
        written: list[tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> None:
        """Write the events of ``arrays`` into rows ``rows`` of ``X`` and ``M``."""
        n = rows.size
        nflat, nevent = self._n_flat, self._n_event
        parts = record_parts(arrays)
        if nevent:  # one value (or a fixed-size array) per event: normalized in float64, stored as float32
            block = np.empty((n, nevent), dtype=np.float64)
            for c in self._columns[:nflat]:
                block[:, c.cells] = c.centered(self._flat(arrays, parts, c.name, n, self.specs[c.name].width))
            block *= self._flat_scale
            finite = np.isfinite(block)
            if not finite.all():
                block[~finite] = self.pad_value
            X[rows, :nevent] = block
            if M is not None:
                M[rows, :nevent] = finite
        # the branches of one collection share their offsets: they are written together, each
        # step one numpy call for the whole collection (few calls, so little waiting for the GIL
        # while another thread reads); in the collections layout they must share them
        group: list[tuple[Column, np.ndarray]] = []
        group_offsets: np.ndarray | None = None
        for c in self._columns[nflat:]:
            if c.width == 0:
                continue
            offsets, values = self._jagged(arrays, parts, c.name, n)
            first = group[0][0] if group else c
            if group_offsets is not None and (
                c.collection != first.collection or c.width != first.width or not np.array_equal(offsets, group_offsets)
            ):
                if c.collection == first.collection >= 0:
                    raise self._unequal(first, c, group_offsets, offsets)
                self._fill_collection(group, group_offsets, X, M, rows, written)
                group, group_offsets = [], None
            if group_offsets is None:
                group_offsets = offsets
            group.append((c, values))
        if group_offsets is not None:
            self._fill_collection(group, group_offsets, X, M, rows, written)

    def _unequal(self, a: Column, b: Column, offsets_a: np.ndarray, offsets_b: np.ndarray) -> BranchError:
        """The error for branches of one collection whose lists differ in length."""
        counts_a, counts_b = np.diff(offsets_a), np.diff(offsets_b)
        i = int(np.flatnonzero(counts_a != counts_b)[0])
        msg = (
            f"branches {a.name!r} and {b.name!r} of collection {self.collections[a.collection].name!r} have lists "
            f"of different lengths ({counts_a[i]} and {counts_b[i]} entries in event {i} of a chunk): the branches "
            "of a collection must share their counts; exclude one of them, or use layout='flat'"
        )
        return BranchError(msg)

    def _fill_collection(
        self,
        group: list[tuple[Column, np.ndarray]],
        offsets: np.ndarray,
        X: np.ndarray,
        M: np.ndarray | None,
        rows: np.ndarray,
        written: list[tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> None:
        """Write jagged branches of one width that share ``offsets`` into rows ``rows`` of ``X`` and ``M``."""
        width, step, k = group[0][0].width, group[0][0].step, group[0][0].collection
        counts = np.diff(offsets)
        source, target = scatter_indices(counts, width, self.num_features, rows, step)
        # a copy of the kept values of every branch, one row per branch, normalized in place: in float32
        # where that is exact to float32 rounding (float32 values, small integers), else in float64
        in32 = all(c.exact32 and fits32(values.dtype) for c, values in group)
        vals = np.empty((len(group), target.size), dtype=np.float32 if in32 else np.float64)
        for b, (c, values) in enumerate(group):
            kept = values if source is None else values[source]
            vals[b] = kept if in32 else c.centered(kept)
        if in32 and any(c.offset for c, _ in group):
            vals -= np.array([[c.offset] for c, _ in group], dtype=np.float32)
        if any(c.scale != 1.0 for c, _ in group):
            vals *= np.array([[c.scale] for c, _ in group], dtype=vals.dtype)
        finite = np.isfinite(vals)
        if not finite.all():
            vals[~finite] = self.pad_value
        starts = np.array([[c.start] for c, _ in group], dtype=np.int64)
        where = target + starts
        X.reshape(-1)[where] = vals
        if written is not None:
            written.append((target, starts))
        if M is not None:
            M.reshape(-1)[where] = finite
        if k >= 0:  # the collections layout: the collection's mask, 1 for each entry an event has
            g = self.collections[k]
            if self.pad_value == 0:  # the mask's zeros are padding: only the ones are written (and padded again)
                cell = target % self.num_features  # entry j of a row: its first branch's cell, j * step
                ones = target - cell + cell // step
                X.reshape(-1)[ones + g.mask_start] = 1.0
                if written is not None:
                    written.append((ones, np.array([[g.mask_start]], dtype=np.int64)))
            else:
                X[rows, g.mask_start : g.stop] = np.arange(width) < counts[:, None]
            if M is not None:
                M[rows, g.mask_start : g.stop] = True

    @staticmethod
    def _flat(
        arrays: ak.Array | Mapping[str, ak.Array],
        parts: dict[str, tuple[np.ndarray | None, np.ndarray]],
        name: str,
        n: int,
        width: int = 1,
    ) -> np.ndarray:
        """``(n, width)`` numbers of branch ``name``: one per event, or a fixed-size array of ``width`` (C order).

        Read from ``parts``, the record's buffers, when there.
        """
        offsets, values = parts.get(name, (None, None))
        if width == 1 and offsets is None and values is not None and len(values) == n:
            return (values.view(np.uint8) if values.dtype == np.bool_ else values).reshape(n, 1)
        try:
            values = flat_values(JaggedFlattener._get(arrays, name, n))
        except ValueError as err:  # lists of several lengths, or missing values
            msg = f"branch {name!r} does not hold {width} number(s) per event, as the specs say: {err}"
            raise BranchError(msg) from err
        if values.size != n * width:
            msg = f"branch {name!r} holds {values.size // max(n, 1)} numbers per event, the specs say {width}"
            raise BranchError(msg)
        return values.reshape(n, width)

    @staticmethod
    def _jagged(
        arrays: ak.Array | Mapping[str, ak.Array],
        parts: dict[str, tuple[np.ndarray | None, np.ndarray]],
        name: str,
        n: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(offsets, values)`` of jagged branch ``name``: offsets from 0 into the values of its ``n`` events."""
        offsets, content = parts.get(name, (None, None))
        if offsets is not None and content is not None and len(offsets) == n + 1:
            values = content[offsets[0] : offsets[-1]]
            if offsets[0]:
                offsets = offsets - offsets[0]
            return offsets, values.view(np.uint8) if values.dtype == np.bool_ else values
        counts, values = jagged_parts(JaggedFlattener._get(arrays, name, n))
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        return offsets, values

    @staticmethod
    def _get(arrays: ak.Array | Mapping[str, ak.Array], name: str, n: int) -> ak.Array:
        try:
            array = arrays[name]
        except (KeyError, ValueError, ak.errors.FieldNotFoundError) as err:
            msg = f"branch {name!r} is missing from the arrays to flatten"
            raise BranchError(msg) from err
        if len(array) != n:
            msg = f"branch {name!r} has {len(array)} events, expected {n}"
            raise BranchError(msg)
        return array

    def inverse_transform(self, X: np.ndarray, M: np.ndarray | None = None) -> np.ndarray:
        """Undo the normalization of ``X`` (float64 result); where ``M`` is False, NaN."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.num_features:
            msg = f"X must have shape (n, {self.num_features}), got {X.shape}"
            raise ParameterError(msg)
        offset = np.zeros(self.num_features)
        scale = np.ones(self.num_features)  # the masks of the collections layout are kept as they are
        for c in self._columns:
            offset[c.cells] = c.offset
            scale[c.cells] = c.scale
        with np.errstate(divide="ignore"):
            inverse = np.where(scale != 0, 1.0 / scale, 0.0)
        out = X * inverse + offset
        if M is not None:
            out[~np.asarray(M, dtype=bool)] = np.nan
        return out
