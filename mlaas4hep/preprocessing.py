"""The saved preprocessing: everything that turns a tree's events into a model's inputs, as one JSON file.

A model is trained on the inputs a :class:`~mlaas4hep.RootSequence` makes: its
branches in column order, the aliases computed from the file's branches, the
normalization with the training specs' statistics, the width of every jagged
branch, the pad value and whether a mask goes with the features. An
:class:`Preprocessing` records all of it (``RootSequence.save_preprocessing``,
``workflow --fout model.keras`` beside the model as ``model.preprocessing.json``),
so that inference (:func:`mlaas4hep.write_scores`) makes the same inputs, bit
for bit, from other files.

The JSON file has a format name and a version, and names its ``layout``:
``"flat"`` (one ``(batch, num_features)`` matrix) or ``"collections"`` (a dict
of per-collection tensors, the collections saved with it); another is refused
with a clear error.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._json import load_json, write_json
from .errors import BranchError, ParameterError, SpecsError
from .inputs.contents import FileInfo
from .inputs.selection import Selection
from .inputs.sources import DEFAULT_TREE
from .options import LAYOUTS, Options
from .specs.values import Specs
from .stream.prepare import PreparedData
from .transform.flatten import JaggedFlattener

__all__ = ["FORMAT", "VERSION", "Preprocessing", "preprocessing_path"]

log = logging.getLogger(__name__)

FORMAT = "mlaas4hep-preprocessing"
"""The ``format`` key of a saved preprocessing."""

VERSION = 1
"""The version of the format this module writes; it reads versions up to this one."""


def preprocessing_path(model_path: str | os.PathLike[str]) -> Path:
    """Where the preprocessing of a saved model goes: ``model.keras`` -> ``model.preprocessing.json``.

    Examples
    --------
    >>> preprocessing_path("out/model.keras").as_posix()
    'out/model.preprocessing.json'
    """
    return Path(model_path).with_suffix(".preprocessing.json")


def _aliases_needed(aliases: Mapping[str, str], names: Iterable[str]) -> dict[str, str]:
    """The aliases that computing ``names`` needs, directly or through other aliases (in their given order)."""
    needed: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in aliases and name not in needed:
            needed.add(name)
            # an alias alone in a Selection: the names its expression uses (branches or other aliases)
            todo.extend(Selection(None, {name: aliases[name]}).branches([name], cut=False))
    return {name: expression for name, expression in aliases.items() if name in needed}


def _cut_names(cut: str | None) -> list[str]:
    """The names (branches or aliases) a cut uses."""
    return [] if cut is None else Selection(cut).branches()


@dataclass(frozen=True)
class Preprocessing:
    """What turns a tree's events into a model's inputs: saved with the model, applied to any file.

    Made from a sequence's prepared data (:meth:`from_prepared`, or
    ``RootSequence.save_preprocessing(path)``) and written as JSON
    (:meth:`save`); :meth:`load` reads it back. The same flattener
    (:meth:`flattener`) then makes the same matrix, bit for bit, from the same
    events, and :meth:`options` gives the options of a dataset that serves
    every entry of other files in order, as scoring needs.

    Attributes
    ----------
    specs : Specs
        The statistics of the feature branches the model was trained with
        (the normalization's offsets and scales come from them); they fix the
        columns: flat branches sorted by name, then jagged ones.
    widths : mapping of str to int
        Columns of each jagged branch (longer lists are clipped, shorter ones padded).
    normalization : {"minmax", "standard", None}
        See :class:`~mlaas4hep.JaggedFlattener`.
    pad_value : float
        Value of padded slots and of non-finite inputs.
    mask_output : bool
        Whether the model takes ``{"features": X, "mask": M}`` rather than ``X``.
    aliases : mapping of str to str
        Derived branches the features (and the training cut) are computed from.
    cut : str or None
        The cut the model was trained with, for the record (scoring applies the cut it is given).
    tree : str
        The tree trained on (the default tree of files that do not name one).
    layout : str
        ``"flat"``: one ``(batch, num_features)`` matrix; ``"collections"``: a
        dict of per-collection tensors (:mod:`mlaas4hep.transform.tensors`).
    collections : mapping of str to tuple of str
        With the collections layout, each collection's branches (each branch's
        width in ``widths`` is its collection's).
    folds, fold, fold_by : int, int, str, or None
        With k-fold by event number (:mod:`mlaas4hep.inputs.folds`), the
        number of folds, the fold the model did not train on (its test
        fold) and the expression giving each event's fold; None when the
        model was trained without folds.

    Examples
    --------
    >>> train.save_preprocessing("model.preprocessing.json")  # doctest: +SKIP
    >>> loaded = Preprocessing.load("model.preprocessing.json")  # doctest: +SKIP
    >>> loaded.num_features == train.num_features  # doctest: +SKIP
    True
    """

    specs: Specs
    widths: Mapping[str, int]
    normalization: str | None = "minmax"
    pad_value: float = 0.0
    mask_output: bool = False
    aliases: Mapping[str, str] = field(default_factory=dict)
    cut: str | None = None
    tree: str = DEFAULT_TREE
    layout: str = "flat"
    collections: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    folds: int | None = None
    fold: int | None = None
    fold_by: str | None = None

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            msg = f"layout {self.layout!r} is not supported by this version of mlaas4hep; supported: {LAYOUTS}"
            raise ParameterError(msg)
        jagged = set(self.specs.jagged)
        if set(self.widths) != jagged:
            msg = f"widths must name every jagged branch {sorted(jagged)}, got {sorted(self.widths)}"
            raise SpecsError(msg)
        object.__setattr__(self, "widths", {name: int(self.widths[name]) for name in self.specs.jagged})
        object.__setattr__(self, "collections", {k: tuple(v) for k, v in self.collections.items()})
        if (self.layout == "collections") != bool(self.collections) and self.specs.jagged:
            msg = f"the collections layout names its collections, the flat one none: got {dict(self.collections)}"
            raise SpecsError(msg)
        object.__setattr__(self, "aliases", dict(self.aliases))
        Selection(self.cut, self.aliases)  # the expressions parse and the aliases have no cycle
        folding = (self.folds, self.fold, self.fold_by)
        if folding != (None, None, None) and not (
            isinstance(self.folds, int) and isinstance(self.fold, int) and 0 <= self.fold < self.folds
        ):
            msg = f"folds, fold and fold_by must all be None or give a fold in [0, folds), got {folding}"
            raise SpecsError(msg)

    # -- making one -------------------------------------------------------------------------------
    @classmethod
    def from_prepared(cls, prepared: PreparedData) -> Preprocessing:
        """The preprocessing of the inputs that ``prepared`` (a sequence's ``prepared``) makes.

        The specs keep only the statistics of the features: neither the
        training files nor the cut's result on them.
        """
        options, flattener = prepared.options, prepared.flattener
        layout = getattr(options, "layout", "flat")  # datasets made before layouts were an option are flat
        if layout not in LAYOUTS:
            msg = f"saving the preprocessing of layout={layout!r} is not supported yet; supported: {LAYOUTS}"
            raise ParameterError(msg)
        specs = Specs({name: prepared.specs[name] for name in flattener.branches})
        widths = dict(flattener.widths)
        widths = {name: widths[name] for name in specs.jagged}
        collections = {g.name: tuple(g.branches) for g in flattener.collections}
        folds = getattr(options, "folds", None)  # datasets made before folds were an option have none
        cut = prepared.selection.cut if folds is None else options.cut  # the user's cut, without the folds'
        fold_by = _cut_names(f"({options.fold_by}) % 2") if folds is not None else []  # scoring computes the folds
        aliases = _aliases_needed(prepared.selection.aliases, [*specs.names, *_cut_names(cut), *fold_by])
        return cls(
            specs,
            widths,
            normalization=flattener.normalization,
            pad_value=flattener.pad_value,
            mask_output=bool(options.mask_output),
            aliases=aliases,
            cut=cut,
            tree=options.tree,
            layout=layout,
            collections=collections,
            folds=folds,
            fold=options.fold if folds is not None else None,
            fold_by=options.fold_by if folds is not None else None,
        )

    # -- what it makes ----------------------------------------------------------------------------
    @property
    def branches(self) -> list[str]:
        """The feature branches (and aliases) in column order."""
        return self.specs.names

    def flattener(self) -> JaggedFlattener:
        """The :class:`~mlaas4hep.JaggedFlattener` that makes the model's inputs."""
        kw: dict[str, Any] = {"normalization": self.normalization, "pad_value": self.pad_value}
        if self.layout == "collections":
            from .transform.tensors import CollectionsFlattener

            return CollectionsFlattener(self.specs, max_lengths=dict(self.widths), groups=self.collections, **kw)
        return JaggedFlattener(self.specs, max_lengths=dict(self.widths), **kw)

    @property
    def num_features(self) -> int:
        """Columns of the feature matrix: the model's input size (flat layout)."""
        return int(self.flattener().num_features)

    @property
    def input_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Name -> shape (without the batch axis) and dtype of each input the model takes."""
        flattener = self.flattener()
        if self.layout == "collections":
            from .transform.tensors import CollectionsFlattener

            assert isinstance(flattener, CollectionsFlattener)
            return dict(flattener.input_spec)
        inputs: dict[str, tuple[tuple[int, ...], str]] = {"features": ((flattener.num_features,), "float32")}
        if self.mask_output:
            inputs["mask"] = ((flattener.num_features,), "float32")
        return inputs

    @property
    def feature_names(self) -> list[str]:
        """Name of each column."""
        return self.flattener().feature_names

    def selection(self, cut: str | None = None) -> Selection:
        """``cut`` with the aliases that the features and ``cut`` need (none of those only the training cut used)."""
        return Selection(cut, _aliases_needed(self.aliases, [*self.branches, *_cut_names(cut)]))

    def options(self, *, cut: str | None = None, tree: str | None = None, **kwargs: Any) -> Options:
        """Options of a dataset that makes these inputs from every event of its files, in order.

        Parameters
        ----------
        cut : str, optional
            Serve only the events where it is true (default: every entry).
        tree : str, optional
            Tree of files that do not name one (default: the tree trained on).
        **kwargs
            Other :class:`~mlaas4hep.options.Options` (``batch_size``,
            ``chunk_size``, ``prefetch``, ``retries``...); not those that
            change the inputs, nor ``shuffle`` or a split.
        """
        fixed = {"specs", "branches", "exclude", "aliases", "normalization", "pad_value", "max_lengths"}
        fixed |= {"length_quantile", "mask_output", "shuffle", "validation_split", "test_split", "subset"}
        fixed |= {"layout", "collections"}
        fixed &= set(kwargs)
        if fixed:
            msg = f"the preprocessing fixes {sorted(fixed)}; they cannot be given"
            raise ParameterError(msg)
        return Options(
            tree=self.tree if tree is None else tree,
            specs=self.specs,
            branches=self.branches,
            cut=cut,
            aliases=self.selection(cut).aliases,
            normalization=self.normalization,
            pad_value=self.pad_value,
            max_lengths=dict(self.widths),
            mask_output=self.mask_output,
            shuffle=False,
            layout=self.layout,
            collections=dict(self.collections) or None,
            **kwargs,
        )

    def check_file(self, info: FileInfo, cut: str | None = None) -> None:
        """Raise :class:`~mlaas4hep.errors.BranchError` unless the file holds what the inputs (and ``cut``) read.

        ``info`` comes from :func:`~mlaas4hep.inputs.contents.inspect_file`: the
        branches the features, their aliases and the cut read must be there,
        each flat or jagged as in the specs.
        """
        where, kinds = str(info.source), info.kinds
        selection = self.selection(cut)
        selection.check(kinds, where)
        missing = [name for name in selection.branches(self.branches, cut=False) if name not in kinds]
        if missing:
            msg = f"{where} lacks the branches {missing} that the preprocessing reads"
            raise BranchError(msg)
        other = [f"{n!r} is {kinds[n]}" for n in self.branches if n in kinds and kinds[n] != self.specs[n].kind]
        if other:
            msg = f"in {where}, {', '.join(other)}, unlike in the preprocessing"
            raise BranchError(msg)

    # -- JSON -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (the columns' names and count included for people reading it)."""
        pad = self.pad_value if math.isfinite(self.pad_value) else str(self.pad_value)  # JSON has no NaN
        return {
            "format": FORMAT,
            "version": VERSION,
            "layout": self.layout,
            **({"collections": {k: list(v) for k, v in self.collections.items()}} if self.collections else {}),
            "tree": self.tree,
            "branches": self.branches,
            "aliases": dict(self.aliases),
            "cut": self.cut,
            "normalization": self.normalization,
            "pad_value": pad,
            "widths": dict(self.widths),
            "mask_output": self.mask_output,
            "num_features": self.num_features,
            "feature_names": self.feature_names,
            **({"folds": self.folds, "fold": self.fold, "fold_by": self.fold_by} if self.folds is not None else {}),
            "specs": self.specs.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessing:
        """Inverse of :meth:`to_dict`; checks the format, the version and the layout."""
        if data.get("format") != FORMAT:
            msg = f"not a saved preprocessing: its 'format' is {data.get('format')!r}, not {FORMAT!r}"
            raise SpecsError(msg)
        version = data.get("version")
        if not isinstance(version, int) or not 1 <= version <= VERSION:
            msg = f"preprocessing version {version!r} is not one this mlaas4hep reads (1 to {VERSION}); upgrade it"
            raise SpecsError(msg)
        loaded = cls(
            Specs.from_dict(data["specs"]),
            dict(data["widths"]),
            normalization=data["normalization"],
            pad_value=float(data["pad_value"]),
            mask_output=bool(data["mask_output"]),
            aliases=dict(data.get("aliases") or {}),
            cut=data.get("cut"),
            tree=str(data.get("tree", DEFAULT_TREE)),
            layout=str(data["layout"]),
            collections={k: tuple(v) for k, v in dict(data.get("collections") or {}).items()},
            folds=data.get("folds"),
            fold=data.get("fold"),
            fold_by=data.get("fold_by"),
        )
        if list(data["branches"]) != loaded.branches or int(data["num_features"]) != loaded.num_features:
            msg = (
                f"its branches {list(data['branches'])} and {data['num_features']} features do not match "
                f"its specs ({loaded.branches}, {loaded.num_features} features)"
            )
            raise SpecsError(msg)
        return loaded

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the preprocessing as JSON, atomically (a temporary file renamed into place); return the path."""
        target = write_json(path, self.to_dict(), "preprocessing")
        log.info("wrote the preprocessing (%d features) to %s", self.num_features, target)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Preprocessing:
        """Read a preprocessing written by :meth:`save`.

        Raises
        ------
        SpecsError
            If the file is missing, not JSON, not a saved preprocessing, of a
            newer version, or malformed (the message names the file).
        ParameterError
            If it names a layout this version does not support.
        """
        return load_json(path, "preprocessing file", cls.from_dict, SpecsError)
