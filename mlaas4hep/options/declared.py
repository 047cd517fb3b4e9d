"""The options of the faces, declared once: :class:`Options` checks every option when made, before any file is opened,
and each step of the data path reads its own options from it."""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from .._checks import (
    check_choice,
    check_file_weights,
    check_finite,
    check_flag,
    check_int,
    check_mapping,
    check_names,
    check_number,
    check_shard,
    check_text,
    check_widths,
    known_names,
)
from ..errors import ParameterError
from ..inputs.folds import check_folding
from ..inputs.generator import check_generator
from ..inputs.selection import Selection
from ..inputs.sources import DEFAULT_TREE
from ..specs.values import Specs
from ..transform.flatten import NORMALIZATIONS

__all__ = ["FACES", "LAYOUTS", "SUBSETS", "Options"]

SUBSETS = ("training", "validation", "test")
"""Values of ``subset``."""

LAYOUTS = ("flat", "collections")
"""Values of ``layout``: a padded vector per event, or a tensor per collection (:mod:`mlaas4hep.transform.tensors`)."""

FACES = ("RootSequence", "RootDataset")
"""The faces that take options: the Keras face and the PyTorch face."""

_FLAGS = ("common_branches", "balance_classes", "one_hot", "mask_output", "use_multiprocessing", "drop_nonfinite")

# field metadata: the faces that take an option (default: every face)
_SEQUENCE_ONLY = MappingProxyType({"faces": ("RootSequence",)})  # Keras' own and the shards (RootDataset: ranks)
_NO_FACE = MappingProxyType({"faces": ()})  # set by a saved preprocessing, not by hand

_EXPRESSION = functools.partial(check_text, what="an expression (a non-empty string)")
_MEMBERS = functools.partial(check_names, lone=False, empty=False)  # the branches of a collection


@dataclass(frozen=True, kw_only=True)
class Options:
    """Every option of the faces, checked when made: a frozen, picklable value.

    A face (:class:`~mlaas4hep.RootSequence`, :class:`~mlaas4hep.torch.RootDataset`) takes its files and labels, then
    these options by keyword, each checked here before any file is opened: a bad value raises
    :class:`~mlaas4hep.errors.ParameterError` naming the option and quoting the value. The faces' signatures, their
    ``help()`` and their attributes (``seq.batch_size``) are made from these fields and entries.

    Parameters
    ----------
    tree : str
        Tree (TTree or RNTuple) for files that do not name one (``"file.root:tree"`` does).
    branches : sequence of str, optional
        Feature branches: names or glob patterns (``"Jet_*"``), or names of ``aliases``. Default: every numeric flat
        or jagged branch, and every alias.
    exclude : sequence of str, optional
        Branches or patterns left out. Default: ``("run", "event", "luminosityBlock")`` when the specs are made by a
        first pass; with a ready :class:`~mlaas4hep.Specs` (``specs=train.specs``), nothing more than the specs
        hold, unless given. Each must match a branch of the files or an alias (but those three): a typo is a
        :class:`~mlaas4hep.errors.BranchError`.
    common_branches : bool
        When the files' branches differ, use those common to all files instead of raising
        :class:`~mlaas4hep.errors.BranchError`.
    cut : str, optional
        Serve only the events where this expression is true, in uproot's expression language, e.g. ``"(nMuon >= 1) &
        (MET_pt > 20)"``; jagged branches are reduced to one value per event with ``any(...)``, ``all(...)``,
        ``sum(...)``, ``count(...)``, ``min(...)`` or ``max(...)`` (see
        :class:`~mlaas4hep.inputs.selection.Selection`). ``len()``, ``nevts``, the chunks and the splits all count
        surviving events.
    aliases : mapping of str to str, optional
        Derived branches, e.g. ``{"log_Jet_pt": "log(Jet_pt)", "HT": "sum(Jet_pt)"}``: features with their own specs
        (flat or jagged by their values) unless ``exclude`` names them; usable in ``cut``, ``targets``,
        ``weights`` and as the label branch (``labels="is_sig"``, ``{"is_sig": "nMuon >= 2"}``: True is 1).
    targets : str or sequence of str, optional
        Regression: ``y`` is this branch, shape ``(batch,)``, or these branches, ``(batch, n)``, instead of labels.
        Targets are never features.
    weights : str, optional
        Branch holding each event's weight (e.g. ``"genWeight"``), served as Keras' ``sample_weight``: batches
        become ``(x, y, w)``. Never a feature.
    allow_leaks : sequence of str
        Branches (names or patterns) that may feed both a feature and a label, target or weight computed by
        ``aliases``, e.g. ``["NMuon"]`` with ``targets="two_mu"``, ``aliases={"two_mu": "NMuon >= 2"}`` and
        ``NMuon`` a feature. By default any such branch is a :class:`~mlaas4hep.errors.BranchError` naming it and
        the output it feeds: the model would learn the answer from its inputs. A cut is never a leak.
    file_weights : sequence of float, optional
        A finite, non-negative factor per entry of ``files`` (a pattern's goes to every file it matches) multiplying
        its events' weights (e.g. cross-section x luminosity / generated events); batches become ``(x, y, w)``.
    cross_sections : sequence of float, optional
        Per entry of ``files``: its events weigh this x ``luminosity`` x ``weights`` / the entry's generator sum.
    luminosity : float, optional
        Integrated luminosity of ``cross_sections`` (see :mod:`mlaas4hep.inputs.generator`; not with file_weights).
    balance_classes : bool
        Scale the weights so that every class carries the same total weight over the epoch (the mean weight stays
        1); batches become ``(x, y, w)``.
    one_hot : bool
        Serve integer labels ``0 .. K-1`` one-hot, shape ``(batch, K)``, for ``categorical_crossentropy``. Several
        files may share a label.
    num_classes : int, optional
        ``K``, at least 2; default the largest per-file label plus one. Needed with ``one_hot`` and a label branch.
    mask_output : bool
        Serve ``x`` as ``{"features": X, "mask": M}`` (``M`` float32, 1 where ``X`` holds a real value, 0 for
        padding), for a model with two named inputs. The flat layout's: the collections layout has its masks in
        ``x``.
    batch_size : int
        Events per batch, as the original's; only the last batch may be smaller (with shards, each shard's last).
    chunk_size : int
        Events per chunk read from the files, mixing the files in proportion to their entries; ``-1``: every event
        in one chunk. At least ``batch_size``.
    nevts : int
        Events to use over all files, split across files in proportion to their entries (each file's first events);
        ``-1`` uses all.
    shuffle : bool, optional
        Shuffle the events within each chunk, and where the epoch starts, anew every epoch. Default: True, but False
        for ``subset="validation"`` and ``"test"``, and for a face given neither labels nor ``targets`` (made for
        ``predict``): those are served in the files' order, so that predictions line up with the entries. Chunks
        are read in the files' order, from a random chunk in a random direction, wrapping around, so that each
        cluster of the files is decompressed once per epoch.
    seed : int, optional
        Seed of the shuffling: the same seed gives the same batches. Default: drawn at random; required with shards
        (or ranks) and shuffling, as every shard must draw the same shuffling.
    specs : Specs, path, or None
        Branch statistics: a :class:`~mlaas4hep.Specs` (``train.specs`` for a validation set), a JSON file to reuse
        (rebuilt with a warning if it does not match the files; written if missing), or None to make them with a
        first pass over the files.
    validation_split : float, optional
        Fraction in [0, 1) of each file's events kept for validation (its last entries, or those just before the
        test part); requires ``subset``.
    test_split : float, optional
        Fraction in [0, 1) of each file's events held out as a test set: its last entries. Each file's events are
        cut in order: training, then validation, then test. Requires ``subset``.
    subset : {"training", "validation", "test"}, optional
        Which part of the split is served; only with a split.
    folds : int, optional
        k-fold by event number (:mod:`mlaas4hep.inputs.folds`): each event's fold is ``fold_by % folds``. Needs subset.
    fold : int, optional
        The fold in ``[0, folds)`` that ``subset="test"`` serves; ``"training"`` the others (and ``validation_split``).
    fold_by : str, optional
        Branch, alias or expression of integer value giving each event's fold (default ``"event"``; ``-1 % 5`` is 4).
    normalization : {"minmax", "standard", None}
        ``"minmax"`` maps ``[min, max]`` to ``[0, 1]`` (the original's), ``"standard"`` gives mean 0 and standard
        deviation 1, None keeps raw values (see :class:`~mlaas4hep.JaggedFlattener`).
    pad_value : float
        Value of padded slots and of non-finite inputs: a finite number, or NaN (for a model that masks NaN itself).
    max_lengths : int or mapping of str to int, optional
        Cap on the columns of jagged branches: one for all, or per branch (``{"Jet_pt": 10}``; in the collections
        layout also per collection, ``{"Jet": 10}``). Default: each branch's longest list. Not with
        ``length_quantile``.
    length_quantile : float, optional
        Cap each jagged branch at this quantile of its lengths, in (0, 1], e.g. ``0.999``, instead of a rare
        maximum.
    layout : {"flat", "collections"}
        ``"flat"``: ``x`` is one padded vector per event. ``"collections"``: ``x`` is a dict, ``x["Jet"]`` float32
        ``(batch, L, F)`` for each collection of jagged branches sharing their counts (``Jet_pt``, ``Jet_eta``,
        ...), ``x["Jet_mask"]`` ``(batch, L)`` and ``x["event"]`` the flat branches, with the flat layout's numbers
        (see :mod:`mlaas4hep.transform.tensors` and ``input_spec``).
    collections : mapping of str to sequence of str, optional
        The collections layout's collections (name -> branches), instead of finding them by the branches' names: as
        a saved :class:`~mlaas4hep.preprocessing.Preprocessing` gives them. No face takes it.
    redirector : str
        Prefix put before bare file names, e.g. an XRootD redirector ``"root://cms-xrd-global.cern.ch/"``.
    retries : int
        Times a failed read of a remote file is tried again, reopening the file. If every try fails,
        :class:`~mlaas4hep.errors.FileAccessError` names the URL; an epoch never silently ends short.
    retry_backoff : float
        Seconds before the first retry, doubling after each (0.5, 1, 2 s).
    timeout : float
        Seconds (at least 1) to wait for a remote server, to connect and for each read: an unreachable server fails
        within about this time with a :class:`~mlaas4hep.errors.FileAccessError` naming the URL.
    drop_nonfinite : bool
        Leave out the events whose label, target or weight is NaN or infinite. By default such events are an error,
        raised when the face is made, naming the file, the branch and how many entries hold one.
    workers : int
        RootSequence only: processes that read and flatten chunks (1: two background threads of this process), or
        Keras' fetching threads (see the note on workers of :class:`~mlaas4hep.RootSequence`). RootDataset reads on
        as many cores as its ``DataLoader`` has workers.
    use_multiprocessing : bool
        RootSequence only: forwarded to :class:`keras.utils.PyDataset`, whose processes then fetch batches (the
        sequence is picklable and reopens its files after a fork). TensorFlow backend only (see ``workers``).
    max_queue_size : int
        RootSequence only: batches Keras keeps ready, forwarded to :class:`keras.utils.PyDataset`.
    cache_chunks : int
        Flattened chunks kept in memory once served (the current one and the one before, by default), in each
        process that reads.
    prefetch : int
        Chunks read ahead (3), 0 for none, in two background threads: one reads the chunks after next while the other
        flattens the next one, and near the end of an epoch they read the next epoch's first chunks. Only the next
        chunk is flattened ahead; the others wait as read, several times smaller than flattened. With worker
        processes, each chunk ahead is flattened into a shared buffer of its own.
    shard_index : int
        RootSequence only (RootDataset shards by its ``rank``): the shard served, in ``[0, num_shards)``.
    num_shards : int
        RootSequence only (RootDataset: ``world_size``): shards of each epoch's stream, for data-parallel training.
        They are consecutive blocks whose sizes differ by at most one event
        (:func:`~mlaas4hep.stream.plan.shard_bounds`): every event is in exactly one shard per epoch, and every
        shard serves the same number of batches. Every shard needs the same files, options and ``seed``.
    files_per_chunk : int, optional
        Files one chunk mixes (default: all): with thousands of files, groups of this many files, dealt round-robin
        (see :meth:`~mlaas4hep.ChunkPlan.build`), so that a chunk opens only its group.
    max_open_files : int
        Files kept open between chunk reads; the others are closed after use. At least ``2 * files_per_chunk``
        avoids reopening files between the chunks of a group.

    Examples
    --------
    >>> Options(batch_size=64, seed=1).chunk_size
    10000
    >>> Options(validation_split=0.2, subset="validation").shuffle  # validation is served in order
    False
    >>> Options(normalization="minmx")
    Traceback (most recent call last):
    ...
    mlaas4hep.errors.ParameterError: normalization must be one of ('minmax', 'standard', None), got 'minmx'
    """

    tree: str = DEFAULT_TREE
    branches: Sequence[str] | None = None
    exclude: Sequence[str] | None = None
    common_branches: bool = False
    cut: str | None = None
    aliases: Mapping[str, str] | None = None
    targets: str | Sequence[str] | None = None
    weights: str | None = None
    allow_leaks: Sequence[str] = ()
    file_weights: Sequence[float] | None = None
    cross_sections: Sequence[float] | None = None
    luminosity: float | None = None
    balance_classes: bool = False
    one_hot: bool = False
    num_classes: int | None = None
    mask_output: bool = False
    batch_size: int = 100
    chunk_size: int = 10_000
    nevts: int = -1
    shuffle: bool | None = None
    seed: int | None = None
    specs: Specs | str | os.PathLike[str] | None = None
    validation_split: float | None = None
    test_split: float | None = None
    subset: str | None = None
    folds: int | None = None
    fold: int | None = None
    fold_by: str | None = None
    normalization: str | None = "minmax"
    pad_value: float = 0.0
    max_lengths: int | Mapping[str, int] | None = None
    length_quantile: float | None = None
    layout: str = "flat"
    collections: Mapping[str, Sequence[str]] | None = field(default=None, metadata=_NO_FACE)
    redirector: str = ""
    retries: int = 3
    retry_backoff: float = 0.5
    timeout: float = 30.0
    drop_nonfinite: bool = False
    workers: int = field(default=1, metadata=_SEQUENCE_ONLY)
    use_multiprocessing: bool = field(default=False, metadata=_SEQUENCE_ONLY)
    max_queue_size: int = field(default=10, metadata=_SEQUENCE_ONLY)
    cache_chunks: int = 2
    prefetch: int = 3
    shard_index: int = field(default=0, metadata=_SEQUENCE_ONLY)
    num_shards: int = field(default=1, metadata=_SEQUENCE_ONLY)
    files_per_chunk: int | None = None
    max_open_files: int = 8

    def __post_init__(self) -> None:
        for name in _FLAGS:
            check_flag(getattr(self, name), name)
        self._check_sizes()
        for name, value in check_folding(self, SUBSETS).items():  # the split, and the folds (none without folds)
            self._set(name, value)
        if self.shuffle is None:  # validation and test sets are served in order: predictions line up with files
            self._set("shuffle", self.subset not in ("validation", "test"))
        if not isinstance(self.shuffle, (bool, np.bool_)):
            msg = f"shuffle must be True, False or None (in order for validation and test), got {self.shuffle!r}"
            raise ParameterError(msg)
        shard_index, num_shards = check_shard(self.shard_index, self.num_shards)
        self._set("shard_index", shard_index)
        self._set("num_shards", num_shards)
        if num_shards > 1 and self.shuffle and self.seed is None:
            msg = (
                f"seed is required with num_shards={num_shards} (RootDataset: world_size) and shuffle=True: every "
                "shard must draw the same shuffling"
            )
            raise ParameterError(msg)
        if self.seed is None:
            self._set("seed", int(np.random.default_rng().integers(2**31)))
        self._set("seed", check_int(self.seed, "seed", minimum=0))
        self._check_inputs()
        self._check_outputs()
        self._check_features()
        self._check_layout()

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def _check_sizes(self) -> None:
        for name in ("batch_size", "cache_chunks", "max_queue_size", "max_open_files", "workers"):
            self._set(name, check_int(getattr(self, name), name))
        self._set("prefetch", check_int(self.prefetch, "prefetch", minimum=0))
        self._set("retries", check_int(self.retries, "retries", minimum=0))
        backoff = check_number(self.retry_backoff, "retry_backoff", what="a non-negative number of seconds")
        self._set("retry_backoff", backoff)
        self._set("timeout", check_number(self.timeout, "timeout", minimum=1.0, what="a number of seconds >= 1"))
        self._set("chunk_size", check_int(self.chunk_size, "chunk_size", special=(-1,), hint="-1 (one chunk)"))
        self._set("nevts", check_int(self.nevts, "nevts", special=(-1,), hint="-1 (all events)"))
        if self.files_per_chunk is not None:
            self._set("files_per_chunk", check_int(self.files_per_chunk, "files_per_chunk", hint="None (all files)"))
        if self.chunk_size != -1 and self.batch_size > self.chunk_size:
            msg = (
                f"batch_size={self.batch_size} is larger than chunk_size={self.chunk_size}; "
                "use a chunk_size of at least batch_size"
            )
            raise ParameterError(msg)

    def _check_inputs(self) -> None:
        """Where the events come from: files, trees, branches, the cut and the specs."""
        self._set("tree", check_text(self.tree, "tree", what="a tree name (a non-empty string)"))
        if not isinstance(self.redirector, str):
            msg = f"redirector must be a string (a prefix of bare file names), got {self.redirector!r}"
            raise ParameterError(msg)
        for name in ("branches", "exclude"):
            if getattr(self, name) is not None:
                self._set(name, check_names(getattr(self, name), name))
        if self.cut is not None:
            check_text(self.cut, "cut", what="an expression (a non-empty string) or None")
        aliases = check_mapping(self.aliases or {}, "aliases", _EXPRESSION, what="branch names to expressions")
        self._set("aliases", aliases)
        Selection(self.cut, aliases)  # the expressions parse, the aliases are names and refer to no cycle
        if not (self.specs is None or isinstance(self.specs, (Specs, str, os.PathLike))):
            msg = f"specs must be a Specs, the path of a specs JSON file, or None, got {self.specs!r}"
            raise ParameterError(msg)

    def _check_outputs(self) -> None:
        """What ``y`` and the weights hold: the type of each option (the files decide the rest)."""
        if self.targets is not None:  # one name stays a string: y is then (batch,), not (batch, 1)
            names = check_names(self.targets, "targets", empty=False)
            self._set("targets", self.targets if isinstance(self.targets, str) else names)
        if self.weights is not None:
            check_text(self.weights, "weights", what="the name of a branch holding each event's weight")
        self._set("allow_leaks", check_names(self.allow_leaks, "allow_leaks"))
        if self.file_weights is not None:
            self._set("file_weights", check_file_weights(self.file_weights))
        self._set("cross_sections", check_generator(self))
        if self.num_classes is not None:
            self._set("num_classes", check_int(self.num_classes, "num_classes", minimum=2))

    def _check_features(self) -> None:
        """How ``x`` is made: normalization, padding and the widths of jagged branches."""
        check_choice(self.normalization, "normalization", NORMALIZATIONS)
        self._set("pad_value", check_finite(self.pad_value, "pad_value", nan=True, what="a finite number or NaN"))
        widths, quantile = check_widths(self.max_lengths, self.length_quantile)
        self._set("max_lengths", widths)
        self._set("length_quantile", quantile)

    def _check_layout(self) -> None:
        check_choice(self.layout, "layout", LAYOUTS)
        if self.layout == "collections" and self.mask_output:
            msg = (
                "mask_output=True is the flat layout's mask; with layout='collections', x holds each "
                "collection's mask already (x['Jet_mask']): leave mask_output False"
            )
            raise ParameterError(msg)
        if self.collections is not None:
            groups = check_mapping(self.collections, "collections", _MEMBERS, what="names to branch names")
            if self.layout != "collections":
                msg = f"collections needs layout='collections', got layout={self.layout!r}"
                raise ParameterError(msg)
            self._set("collections", groups)

    @classmethod
    def names(cls, face: str | None = None) -> tuple[str, ...]:
        """The names of the options, in order: all of them, or those that ``face`` takes.

        Examples
        --------
        >>> "workers" in Options.names("RootSequence"), "workers" in Options.names("RootDataset")
        (True, False)
        """
        return tuple(f.name for f in dataclasses.fields(cls) if face is None or face in _faces(f))

    @classmethod
    def for_face(cls, face: str, given: Mapping[str, Any], *, labeled: bool = True, **fixed: Any) -> Options:
        """The options that ``face`` was given by keyword, and ``fixed`` (set by the face itself).

        ``labeled``: whether the face was given labels; without them (nor
        ``targets``) it serves for ``predict``, in the files' order unless
        ``shuffle`` says otherwise.

        Raises
        ------
        ParameterError
            For a keyword that is not an option of ``face`` (the closest option
            is suggested), or an option that is bad.

        Examples
        --------
        >>> Options.for_face("RootSequence", {"batch_size": 64, "seed": 1}).batch_size
        64
        >>> Options.for_face("RootDataset", {"shard_index": 1})
        Traceback (most recent call last):
        ...
        mlaas4hep.errors.ParameterError: 'shard_index' is an option of RootSequence only, not of RootDataset
        """
        mine = cls.names(face)
        for name in given:
            if name in cls.names() and name not in mine:
                faces = _faces(cls.__dataclass_fields__[name])
                where = f"of {' and '.join(faces)} only" if faces else "that no face takes"
                msg = f"{name!r} is an option {where}, not of {face}"
                raise ParameterError(msg)
        known_names(given, mine, face)
        if not labeled and given.get("shuffle") is None and given.get("targets") is None:
            given = {**given, "shuffle": False}  # predictions line up with the entries
        return cls(**given, **fixed)


def _faces(option: dataclasses.Field[Any]) -> tuple[str, ...]:
    return tuple(option.metadata.get("faces", FACES))
