"""Private helpers that pull numpy buffers out of awkward arrays without copies."""

from __future__ import annotations

import awkward as ak
import numpy as np

__all__ = ["flat_values", "jagged_parts"]


def flat_values(array: ak.Array) -> np.ndarray:
    """One number per event as a numpy array (booleans become uint8)."""
    values = ak.to_numpy(array, allow_missing=False)
    if values.dtype == np.bool_:
        values = values.view(np.uint8)
    return values


def jagged_parts(array: ak.Array) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(counts, content)`` of a list-of-numbers array.

    ``counts[i]`` is the length of event ``i``'s list and ``content`` holds the
    values of all lists one after another (only the part the array uses).
    """
    layout = ak.to_layout(array)
    while isinstance(layout, ak.contents.IndexedArray):
        layout = layout.project()
    if not isinstance(layout, ak.contents.ListOffsetArray):
        layout = layout.to_ListOffsetArray64(True)
    offsets = np.asarray(layout.offsets.data)
    content = layout.content
    if not isinstance(content, ak.contents.NumpyArray):
        content = ak.to_layout(ak.to_numpy(ak.Array(content)))
    values = np.asarray(content.data)[offsets[0] : offsets[-1]]
    if values.dtype == np.bool_:
        values = values.view(np.uint8)
    return np.diff(offsets), values
