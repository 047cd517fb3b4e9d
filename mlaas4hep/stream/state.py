"""A loader's place in its epochs as a value: what ``state_dict()`` returns and ``load_state_dict`` takes.

A state is a small dict of JSON types (it is saved beside a model's weights,
and ``torch.distributed.checkpoint`` and torchdata's ``StatefulDataLoader``
keep it as it is): which data it is of, in which arrangement (batches, shards,
seed, shuffling), and the place: ``epoch`` and ``position``, the batches of the
epoch's stream served before it. It never holds the data. :func:`place` reads
the place back after checking that the state is one of this loader: data
and arrangement must be the same, or the batches of the epoch would not be
the same batches, and the resumed epoch would not serve each event once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from ..errors import ParameterError
from .prepare import PreparedData

__all__ = ["STATE_VERSION", "fingerprint", "make_state", "place"]

STATE_VERSION = 1
"""The version of the states this code writes and reads."""

_PLACE = ("epoch", "position")


def fingerprint(prepared: PreparedData) -> str:
    """A short digest of the events an epoch serves and of their chunks: the same for the same data anywhere.

    It covers each file's name (not its directory: files copied to a batch
    node's scratch are the same data), tree and entries, the cut and aliases,
    the subset's entry ranges and the chunk plan. Cheap: no file is opened.
    Two loaders whose fingerprints differ serve other events, or the same
    events in other chunks; a state of one is refused by the other.

    >>> fingerprint(prepared)  # doctest: +SKIP
    '5f3c0d9a1b2e4c67'
    """
    files = [
        [PurePosixPath(source.path.replace("\\", "/")).name, source.tree, int(entries)]
        for source, entries in zip(prepared.sources, prepared.entries, strict=True)
    ]
    selection = {"cut": prepared.selection.cut, "aliases": sorted(dict(prepared.selection.aliases).items())}
    head = {"files": files, "selection": selection, "ranges": [list(r) for r in prepared.ranges]}
    digest = hashlib.sha256(json.dumps(head, sort_keys=True, default=str).encode())
    digest.update(np.ascontiguousarray(prepared.plan.counts, dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


def make_state(kind: str, arrangement: Mapping[str, Any], *, epoch: int, position: int) -> dict[str, Any]:
    """The state of a loader of ``kind`` (its class) with ``arrangement`` at ``position`` of ``epoch``.

    >>> make_state("RootSequence", {"batches": 30}, epoch=2, position=7)
    {'version': 1, 'kind': 'RootSequence', 'batches': 30, 'epoch': 2, 'position': 7}
    """
    return {"version": STATE_VERSION, "kind": kind, **dict(arrangement), "epoch": int(epoch), "position": int(position)}


def place(state: Any, kind: str, arrangement: Mapping[str, Any]) -> tuple[int, int]:
    """The ``(epoch, position)`` of ``state``, checked to be a state of a loader of ``kind`` with ``arrangement``.

    Raises :class:`~mlaas4hep.errors.ParameterError` naming the field that
    differs, with both values: a state of other data, or of another
    arrangement (other batches, shards, workers), cannot resume this loader
    exactly.

    >>> place({"version": 1, "kind": "RootSequence", "batches": 30, "epoch": 2, "position": 7},
    ...       "RootSequence", {"batches": 30})
    (2, 7)
    >>> place({"version": 1, "kind": "RootSequence", "batches": 30, "epoch": 2, "position": 7},
    ...       "RootSequence", {"batches": 31})
    Traceback (most recent call last):
    ...
    mlaas4hep.errors.ParameterError: the state was saved with batches=30, this RootSequence has batches=31: ...
    """
    if not isinstance(state, Mapping):
        msg = f"a state is the dict that state_dict() returned, got {type(state).__name__}"
        raise ParameterError(msg)
    if state.get("version") != STATE_VERSION or state.get("kind") != kind:
        msg = (
            f"not a state of a {kind} of this version (version {STATE_VERSION}): "
            f"got kind={state.get('kind')!r}, version={state.get('version')!r}"
        )
        raise ParameterError(msg)
    for key, value in arrangement.items():
        if state.get(key) != value:
            msg = (
                f"the state was saved with {key}={state.get(key)!r}, this {kind} has {key}={value!r}: "
                "it cannot resume the epoch exactly (the same data, batches and arrangement are needed)"
            )
            raise ParameterError(msg)
    epoch, position = (state.get(name) for name in _PLACE)
    if not (isinstance(epoch, int) and isinstance(position, int) and epoch >= 0 and position >= 0):
        msg = f"the state's epoch and position must be integers >= 0, got epoch={epoch!r}, position={position!r}"
        raise ParameterError(msg)
    return epoch, position
