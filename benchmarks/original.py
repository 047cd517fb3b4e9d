"""The original MLaaS4HEP per-event conversion, re-implemented as the reference of target 2.

The original ``RootDataReader.next()`` turned one event at a time into a
row: for every branch it built a Python list of normalized values
(``x if max == min else (x - min) / (max - min)``), padded each jagged
branch's list to its fixed length ``jdim`` with NaN through a numpy array,
chained the pieces into one row, took the mask from ``isnan`` and replaced
NaN with the pad value. Rows were then stacked into the chunk's matrix.

This is a faithful, slightly favourable, re-implementation for uproot 5: the
chunk is first laid out as uproot 3 handed it over (a numpy array per flat
branch, a numpy view per event for jagged ones), and that layout is built
outside the timed part (:func:`event_layout`). Only
:func:`convert_events` is the per-event algorithm.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from typing import Any

import awkward as ak
import numpy as np

__all__ = ["EventLayout", "convert_events", "event_layout"]


@dataclass
class EventLayout:
    """A chunk as the original reader had it: per flat branch an array, per jagged branch one array per event."""

    flat: list[tuple[np.ndarray, float, float]]
    jagged: list[tuple[list[np.ndarray], float, float, int]]
    n_events: int


def event_layout(pieces: list[ak.Array], specs: Any, widths: dict[str, int], n_events: int) -> EventLayout:
    """Lay out the first ``n_events`` events of ``pieces`` (awkward arrays, one per file) for :func:`convert_events`.

    Branches are taken in the original's order: flat ones sorted by name, then
    jagged ones sorted by name; ``widths`` gives each jagged branch's ``jdim``.
    """
    flat, jagged = [], []
    for name in sorted(specs.flat):
        values = np.concatenate([ak.to_numpy(p[name]) for p in pieces])[:n_events].astype(np.float64)
        flat.append((values, float(specs[name].min), float(specs[name].max)))
    for name in sorted(specs.jagged):
        array = ak.concatenate([p[name] for p in pieces])[:n_events]
        content = ak.to_numpy(ak.flatten(array)).astype(np.float64)
        counts = ak.to_numpy(ak.num(array))
        per_event = np.split(content, np.cumsum(counts)[:-1])
        jagged.append((per_event, float(specs[name].min), float(specs[name].max), widths[name]))
    return EventLayout(flat, jagged, n_events)


def _normalize(x: float, lo: float, hi: float) -> float:
    return x if hi == lo else (x - lo) / (hi - lo)


def convert_events(layout: EventLayout, pad_value: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Convert event by event, as the original ``next()``: return ``X`` (float32) and the mask ``M`` (bool)."""
    rows, masks = [], []
    for i in range(layout.n_events):
        flat_part = [_normalize(float(values[i]), lo, hi) for values, lo, hi in layout.flat]
        jagged_parts = []
        for per_event, lo, hi, jdim in layout.jagged:
            vals = [_normalize(float(v), lo, hi) for v in per_event[i][:jdim]]
            padded = np.full(jdim, np.nan)
            padded[: len(vals)] = vals
            jagged_parts.append(padded)
        row = np.array(list(chain(flat_part, *jagged_parts)))
        mask = ~np.isnan(row)
        row[~mask] = pad_value
        rows.append(row)
        masks.append(mask)
    return np.array(rows, dtype=np.float32), np.array(masks, dtype=bool)
