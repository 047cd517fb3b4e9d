"""Every argument of a face (:class:`~mlaas4hep.RootSequence`) but the files and labels, checked once.

:class:`Options` is a frozen, picklable value: made from a face's arguments,
it checks each of them when it is made (a :class:`~mlaas4hep.errors.ParameterError`
names the argument and quotes the value) and fills in the defaults that depend
on others (``shuffle`` and ``seed``). Each step of the data path reads its own
options from it: dataset preparation, flattening, the epoch layout, the pipeline.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._checks import check_fraction, check_int, check_number
from .errors import ParameterError
from .inputs.sources import DEFAULT_TREE
from .specs.values import Specs

__all__ = ["LAYOUTS", "SUBSETS", "Options"]

SUBSETS = ("training", "validation", "test")
"""Values of ``subset``."""

_FLAGS = ("common_branches", "balance_classes", "one_hot", "mask_output", "use_multiprocessing", "drop_nonfinite")

LAYOUTS = ("flat", "collections")
"""Values of ``layout``: a padded vector per event, or a tensor per collection (:mod:`mlaas4hep.transform.tensors`)."""


def _names(value: str | Sequence[str] | None, name: str) -> tuple[str, ...] | None:
    """A name or a sequence of names as a tuple (None stays None)."""
    if value is None:
        return None
    names = (value,) if isinstance(value, str) else tuple(value)
    if not all(isinstance(n, str) for n in names):
        msg = f"{name} must be a branch name or a sequence of branch names, got {value!r}"
        raise ParameterError(msg)
    return names


@dataclass(frozen=True)
class Options:
    """The arguments of :class:`~mlaas4hep.RootSequence` (see there) besides ``files`` and ``labels``.

    Examples
    --------
    >>> Options(batch_size=64, seed=1).chunk_size
    10000
    >>> Options(validation_split=0.2, subset="validation").shuffle  # validation is served in order
    False
    """

    tree: str = DEFAULT_TREE
    branches: Sequence[str] | None = None
    exclude: Sequence[str] | None = None
    common_branches: bool = False
    cut: str | None = None
    aliases: Mapping[str, str] | None = None
    targets: str | Sequence[str] | None = None
    weights: str | None = None
    file_weights: Sequence[float] | None = None
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
    normalization: str | None = "minmax"
    pad_value: float = 0.0
    max_lengths: int | Mapping[str, int] | None = None
    length_quantile: float | None = None
    layout: str = "flat"
    collections: Mapping[str, Sequence[str]] | None = None
    redirector: str = ""
    retries: int = 3
    retry_backoff: float = 0.5
    timeout: float = 30.0
    drop_nonfinite: bool = False
    workers: int = 1
    use_multiprocessing: bool = False
    max_queue_size: int = 10
    cache_chunks: int = 2
    prefetch: int = 2
    shard_index: int = 0
    num_shards: int = 1
    files_per_chunk: int | None = None
    max_open_files: int = 8

    def __post_init__(self) -> None:
        self._check_sizes()
        self._check_split()
        if self.shuffle is None:  # validation and test sets are served in order: predictions line up with files
            self._set("shuffle", self.subset not in ("validation", "test"))
        self._check_shards()
        self._set("branches", _names(self.branches, "branches"))
        self._set("exclude", _names(self.exclude, "exclude"))
        self._set("aliases", dict(self.aliases or {}))
        if self.seed is None:
            self._set("seed", int(np.random.default_rng().integers(2**31)))
        self._set("seed", check_int(self.seed, "seed", minimum=0))
        for name in _FLAGS:
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                msg = f"{name} must be True or False, got {getattr(self, name)!r}"
                raise ParameterError(msg)
        if not isinstance(self.shuffle, (bool, np.bool_)):
            msg = f"shuffle must be True, False or None (in order for validation and test), got {self.shuffle!r}"
            raise ParameterError(msg)
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

    def _check_split(self) -> None:
        validation = check_fraction(self.validation_split, "validation_split")
        test = check_fraction(self.test_split, "test_split")
        self._set("validation_split", validation)
        self._set("test_split", test)
        subset = self.subset
        if (validation or 0) + (test or 0) >= 1:
            msg = f"validation_split + test_split must be below 1, got {validation} + {test}"
            raise ParameterError(msg)
        if subset is not None and subset not in SUBSETS:
            msg = f"subset must be one of {SUBSETS}, got {subset!r}"
            raise ParameterError(msg)
        if subset is not None and not (validation or test):
            msg = f"subset={subset!r} needs a validation_split or test_split in (0, 1)"
            raise ParameterError(msg)
        if subset == "validation" and not validation:
            msg = 'subset="validation" needs a validation_split in (0, 1)'
            raise ParameterError(msg)
        if subset == "test" and not test:
            msg = 'subset="test" needs a test_split in (0, 1)'
            raise ParameterError(msg)
        if (validation or test) and subset is None:
            msg = 'validation_split and test_split need subset="training", "validation" or "test"'
            raise ParameterError(msg)

    def _check_layout(self) -> None:
        if self.layout not in LAYOUTS:
            msg = f"layout must be one of {LAYOUTS}, got {self.layout!r}"
            raise ParameterError(msg)
        if self.layout == "collections" and self.mask_output:
            msg = (
                "mask_output=True is the flat layout's mask; with layout='collections', x holds each "
                "collection's mask already (x['Jet_mask']): leave mask_output False"
            )
            raise ParameterError(msg)

    def _check_shards(self) -> None:
        num_shards = check_int(self.num_shards, "num_shards")
        shard_index = check_int(self.shard_index, "shard_index", minimum=0)
        if shard_index >= num_shards:
            msg = f"shard_index must be an integer in [0, num_shards={num_shards}), got {self.shard_index!r}"
            raise ParameterError(msg)
        if num_shards > 1 and self.shuffle and self.seed is None:
            msg = "seed is required with num_shards > 1 and shuffle=True: every shard must draw the same shuffling"
            raise ParameterError(msg)
        self._set("num_shards", num_shards)
        self._set("shard_index", shard_index)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The names of every option, in order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_arguments(cls, arguments: Mapping[str, Any]) -> Options:
        """The options among ``arguments`` (a face's ``locals()``; other names are ignored)."""
        return cls(**{name: arguments[name] for name in cls.names() if name in arguments})
