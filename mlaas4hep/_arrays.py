"""Private helpers that pull numpy buffers out of awkward arrays without copies."""

from __future__ import annotations

import awkward as ak
import numpy as np

__all__ = ["branch_parts", "flat_values", "jagged_parts"]


def flat_values(array: ak.Array) -> np.ndarray:
    """One number per event as a numpy array (booleans become uint8)."""
    values = ak.to_numpy(array, allow_missing=False)
    if values.dtype == np.bool_:
        values = values.view(np.uint8)
    return values


def jagged_parts(array: ak.Array) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(counts, content)`` of a list-of-numbers array.

    ``counts[i]`` is the length of event ``i``'s list and ``content`` holds the
    values of all lists one after another (only the part the array uses). A
    missing list counts as empty and a missing value as NaN.
    """
    layout = ak.to_layout(array)
    while isinstance(layout, ak.contents.IndexedArray):
        layout = layout.project()
    if layout.is_option:  # a missing list counts as empty
        layout = ak.to_layout(ak.fill_none(layout, [], axis=0))
    if layout.is_list and layout.content.is_option:  # a missing value is not finite: padded and masked
        layout = ak.to_layout(ak.fill_none(layout, np.nan, axis=-1))
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


def branch_parts(arrays: object, name: str) -> tuple[np.ndarray | None, np.ndarray] | None:
    """``(offsets, content)`` of a list-of-numbers field, ``(None, values)`` of a numbers field.

    Read straight from the layout of a record array, without the high-level
    ``arrays[name]`` (which costs far more than the numpy work on a branch).
    ``offsets`` index ``content`` (they need not start at 0). Returns None for
    anything else (a mapping, an option type, a missing field...): the caller
    then takes the general path.
    """
    if not isinstance(arrays, ak.Array):
        return None
    layout = arrays.layout
    if not isinstance(layout, ak.contents.RecordArray) or layout.backend.name != "cpu":
        return None
    if not layout.has_field(name):
        return None
    field = layout.content(name)
    if isinstance(field, ak.contents.NumpyArray) and field.data.ndim == 1:
        return None, field.data
    if (
        isinstance(field, ak.contents.ListOffsetArray)
        and isinstance(field.content, ak.contents.NumpyArray)
        and field.content.data.ndim == 1
    ):
        return field.offsets.data, field.content.data
    return None
