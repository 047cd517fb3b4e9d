"""The collections layout: each collection of jagged branches a ``(batch, L, F)`` tensor, with its mask.

Set and sequence models (DeepSets, ParticleNet, Transformers) take each
collection of objects (jets, muons, ...) as a tensor of entries by features
with a mask, instead of one padded vector per event. :class:`CollectionsFlattener`
serves that: ``x`` is a dict with

* ``x["event"]``, float32 ``(batch, F_event)``: the flat branches, sorted by name, a
  fixed-size array of ``N`` numbers (``double[3]``) among them as ``N`` features;
* ``x["Jet"]``, float32 ``(batch, L_Jet, F_Jet)`` for each collection: entry ``j`` of
  the event's list in row ``j`` (in the file's order: NanoAOD stores pt-descending),
  feature ``k`` the collection's ``k``-th branch sorted by name;
* ``x["Jet_mask"]``, float32 ``(batch, L_Jet)``: 1 for an entry the event has, 0 for padding.

The numbers are the flat layout's: ``x["Jet"][:, j, k]`` is the flat layout's
column ``f"{branch_k}_{j}"``, normalized and padded alike. A collection is the
jagged branches that share their counts (see :func:`find_collections`); its
width ``L`` is one number (see :func:`collection_widths`).

The tensors are views of one float32 matrix per chunk (each event's row holds
its flat features, then each collection's entries and mask), so the chunk is
cut into batches and its memory reused exactly as in the flat layout.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence, Set
from typing import Any

import awkward as ak
import numpy as np

from .._checks import check_int
from ..errors import BranchError, ParameterError
from ..specs.values import Specs
from .columns import Collection
from .flatten import JaggedFlattener

__all__ = ["EVENT", "CollectionsFlattener", "collection_name", "collection_widths", "find_collections"]

log = logging.getLogger(__name__)

EVENT = "event"
"""The key of the flat branches in ``x``."""


def collection_name(branch: str, file_branches: Set[str] | Sequence[str] = ()) -> str | None:
    """The collection a jagged branch belongs to by its name, or None for a name without an underscore.

    NanoAOD names a collection's branches ``Jet_pt``, ``Jet_eta``, ... and counts
    them in ``nJet``: the collection is the longest prefix ``X`` of the name
    (cut at an underscore) for which ``nX`` is among ``file_branches``
    (``Proton_multiRP_xi`` belongs to ``Proton_multiRP`` when ``nProton_multiRP``
    exists), else the part before the first underscore.

    Examples
    --------
    >>> collection_name("Jet_pt"), collection_name("Proton_multiRP_xi", {"nProton_multiRP"}), collection_name("px")
    ('Jet', 'Proton_multiRP', None)
    """
    parts = branch.split("_")
    for i in range(len(parts) - 1, 0, -1):
        if "n" + "_".join(parts[:i]) in file_branches:
            return "_".join(parts[:i])
    return parts[0] if len(parts) > 1 and parts[0] else None


def _lengths(specs: Specs, name: str) -> tuple[tuple[int, ...], int]:
    """What branches of one collection share: the histogram of list lengths and the longest list."""
    spec = specs[name]
    return tuple(spec.length_hist), spec.max_length


def find_collections(
    specs: Specs,
    file_branches: Set[str] | Sequence[str] = (),
    alias_sources: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, list[str]]:
    """The collections of the jagged branches of ``specs``: name -> branches, both sorted by name.

    * A branch belongs to the collection its name gives (:func:`collection_name`).
    * A jagged alias belongs to the collection of the jagged branches it is
      computed from (``alias_sources``, e.g. ``{"log_Jet_pt": ["Jet_pt"]}``),
      when they are of one collection and its lists have the same lengths;
      otherwise it is named like a branch.
    * Branches whose name has no underscore are grouped by identical length
      histograms, each group a collection named after its first branch.

    The branches of a collection must have the same length histogram in the
    specs (their offsets are compared again on every chunk).

    Raises
    ------
    BranchError
        For branches of one collection with different list lengths, naming them.
    """
    aliases = dict(alias_sources or {})
    groups: dict[str, list[str]] = {}
    loose: list[str] = []
    for name in specs.jagged:
        if name in aliases:
            continue
        collection = collection_name(name, file_branches)
        if collection is None:
            loose.append(name)
        else:
            groups.setdefault(collection, []).append(name)
    for name in sorted(aliases):
        if name not in specs.branches or not specs[name].is_jagged:
            continue
        sources = {collection_name(s, file_branches) for s in aliases[name]} - {None}
        joined = next(iter(sources)) if len(sources) == 1 else None
        if joined is None or any(_lengths(specs, b) != _lengths(specs, name) for b in groups.get(joined, [])):
            joined = collection_name(name, file_branches)
        if joined is None:
            loose.append(name)
        else:
            groups.setdefault(joined, []).append(name)
    by_lengths: dict[tuple[tuple[int, ...], int], list[str]] = {}
    for name in sorted(loose):
        by_lengths.setdefault(_lengths(specs, name), []).append(name)
    for members in by_lengths.values():
        groups.setdefault(members[0], []).extend(members)
    for collection, members in groups.items():
        members.sort()
        different = [b for b in members if _lengths(specs, b) != _lengths(specs, members[0])]
        if different:
            msg = (
                f"the branches of collection {collection!r} differ in their list lengths: {different} against "
                f"{members[0]!r} (longest lists {[specs[b].max_length for b in different]} and "
                f"{specs[members[0]].max_length}); a collection's branches must share their counts: exclude "
                "some of them, give them another name with aliases, or use layout='flat'"
            )
            raise BranchError(msg)
    return dict(sorted(groups.items()))


def collection_widths(
    specs: Specs,
    collections: Mapping[str, Sequence[str]],
    max_lengths: int | Mapping[str, int] | None = None,
    length_quantile: float | None = None,
) -> dict[str, int]:
    """The width ``L`` of each collection: entries kept per event, the longer lists clipped.

    By default a collection's longest list in the specs (the same for each of
    its branches); with ``length_quantile=q``, its length at that quantile;
    with ``max_lengths``, one int for every collection, or a mapping whose keys
    are collections (``{"Jet": 10}``) or branches (``{"Jet_pt": 10}`` caps the
    whole collection ``Jet``). A collection has one width: caps given to
    several of its branches must agree, and its own name's cap comes first.

    Raises
    ------
    ParameterError
        For both ``max_lengths`` and ``length_quantile``, an unknown key, a
        negative cap, or different caps for the branches of one collection.
    """
    if max_lengths is not None and length_quantile is not None:
        msg = "give either max_lengths or length_quantile, not both"
        raise ParameterError(msg)
    if isinstance(max_lengths, Mapping):
        known = set(collections) | {b for members in collections.values() for b in members}
        unknown = sorted(set(max_lengths) - known)
        if unknown:
            msg = (
                f"max_lengths names {unknown}, which are neither collections ({sorted(collections)}) "
                "nor branches of one"
            )
            raise ParameterError(msg)
    widths = {}
    for name, members in collections.items():
        spec = specs[members[0]]
        if length_quantile is not None:
            widths[name] = spec.length_quantile(length_quantile)
            continue
        cap: Any = spec.max_length if max_lengths is None else max_lengths
        if isinstance(max_lengths, Mapping):
            caps = {b: max_lengths[b] for b in members if b in max_lengths}
            if name not in max_lengths and len(set(caps.values())) > 1:
                msg = (
                    f"max_lengths gives the branches of collection {name!r} different caps {caps}, but a "
                    f"collection has one width: give it one, e.g. {{{name!r}: {min(caps.values())}}}"
                )
                raise ParameterError(msg)
            cap = max_lengths.get(name, next(iter(caps.values()), spec.max_length))
        widths[name] = check_int(cap, f"max_lengths for {name!r}", minimum=0)
    return widths


class CollectionsFlattener(JaggedFlattener):
    """The collections layout of :class:`~mlaas4hep.JaggedFlattener`: ``x`` a dict of per-collection tensors.

    ``inputs(X)`` turns rows of the chunk's matrix into ``{"event": (n, F_event),
    "Jet": (n, L, F), "Jet_mask": (n, L), ...}`` (views, no copies), and
    :attr:`input_spec` gives each input's shape and dtype. A collection of width 0
    (empty in every event, or capped at 0) is left out of ``x``.

    Parameters
    ----------
    specs, branches, normalization, pad_value
        As for :class:`~mlaas4hep.JaggedFlattener`: the same normalization.
    max_lengths, length_quantile
        The width of each collection (:func:`collection_widths`).
    file_branches : collection of str
        The branch names of the files (``nJet`` tells that ``Jet_pt`` is of ``Jet``).
    alias_sources : mapping of str to sequence of str, optional
        For each alias, the jagged branches it is computed from: a jagged alias
        joins their collection (:func:`find_collections`).
    groups : mapping of str to sequence of str, optional
        The collections themselves (name -> branches), instead of finding them:
        as :class:`~mlaas4hep.preprocessing.Preprocessing` saved them.

    Raises
    ------
    BranchError
        When the branches of a collection have lists of different lengths: in the
        specs here, on any chunk later; or when there is nothing to serve.
    ParameterError
        For a collection named ``"event"`` or ``"<collection>_mask"``, or bad widths.

    Examples
    --------
    >>> flattener = CollectionsFlattener(specs, file_branches=["nJet", "Jet_pt", "Jet_eta"])  # doctest: +SKIP
    >>> x = flattener.tensors(arrays)  # doctest: +SKIP
    >>> x["Jet"].shape, x["Jet_mask"].shape  # doctest: +SKIP
    ((1000, 12, 2), (1000, 12))
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
        file_branches: Set[str] | Sequence[str] = (),
        alias_sources: Mapping[str, Sequence[str]] | None = None,
        groups: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        specs = specs if branches is None else specs.select(branches)
        if groups is None:
            groups = find_collections(specs, file_branches, alias_sources)
        else:  # as a saved preprocessing gives them
            groups = {name: list(members) for name, members in groups.items()}
            if sorted(b for members in groups.values() for b in members) != sorted(specs.jagged):
                msg = f"the collections {dict(groups)} must hold every jagged branch {specs.jagged} once"
                raise ParameterError(msg)
        clash = [g for g in groups if g == EVENT or (g.endswith("_mask") and g[: -len("_mask")] in groups)]
        if clash:
            msg = f"collections {clash} would clash with the inputs 'event' and '<collection>_mask': rename them"
            raise ParameterError(msg)
        widths = collection_widths(specs, groups, max_lengths, length_quantile)
        placed, start = [], sum(specs[name].width for name in specs.flat)
        for name, members in groups.items():
            placed.append(Collection(name, tuple(members), widths[name], start))
            start = placed[-1].stop
        super().__init__(specs, normalization=normalization, pad_value=pad_value, collections=placed)
        empty = [g.name for g in placed if g.width == 0]
        if empty:
            log.info("collections %s have width 0 (empty in every event, or capped at 0): left out of x", empty)
        n = self._n_event
        self._views: list[tuple[str, slice, tuple[int, ...]]] = [(EVENT, slice(0, n), (n,))] if n else []
        for g in placed:
            if g.width:
                self._views.append((g.name, slice(g.start, g.mask_start), (g.width, len(g.branches))))
                self._views.append((f"{g.name}_mask", slice(g.mask_start, g.stop), (g.width,)))
        if not self._views:
            msg = f"nothing to serve: no flat branch, and every collection has width 0 ({empty})"
            raise BranchError(msg)

    @property
    def input_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Shape (without the batch axis) and dtype of each input: ``"event"``, ``"Jet"``, ``"Jet_mask"``, ..."""
        return {name: (shape, "float32") for name, _, shape in self._views}

    @property
    def feature_order(self) -> dict[str, list[str]]:
        """The branches along the last axis of each input: ``"event"``'s, and each collection's.

        ``"event"``'s are its columns' :attr:`feature_names`: a flat branch's name, and
        ``p3_0``, ``p3_1``, ... for the numbers of a fixed-size array ``p3``.
        """
        order = {EVENT: self.feature_names[: self._n_event]} if self._n_event else {}
        order.update({g.name: list(g.branches) for g in self.collections if g.width})
        return order

    def inputs(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """The dict of tensors in rows of ``X`` (views of it, no copies)."""
        n = X.shape[0]
        return {name: X[:, cells].reshape(n, *shape) for name, cells, shape in self._views}

    def tensors(
        self, arrays: ak.Array | Mapping[str, ak.Array] | Sequence[ak.Array], order: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """Flatten events (as :meth:`~mlaas4hep.JaggedFlattener.transform`) into the dict of tensors."""
        X, _ = self.transform(arrays, order, mask=False)
        return self.inputs(X)
