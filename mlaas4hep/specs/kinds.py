"""The kinds of branches, and which of them become numeric features.

A branch is ``"flat"`` (one number per event), ``"jagged"`` (a list of numbers
of any length per event) or a fixed-size array of numbers, whose kind is
``"fixed"`` followed by its shape as C writes it: ``"fixed[3]"`` for a ROOT
branch of type ``double[3]``, ``"fixed[2][3]"`` for ``double[2][3]``. Every
event holds exactly that many numbers, which become as many columns (the
shape flattened in C order). Any other kind (``"string"``, ``"doubly-jagged"``,
``"object"``, ``"fixed-size array"`` of anything but numbers) cannot become
features.
"""

from __future__ import annotations

import math
import re

from ..inputs.formats.table import fixed_kind  # where the formats name their kinds

__all__ = ["WHY_NOT", "fixed_kind", "fixed_shape", "fixed_width", "is_usable"]

WHY_NOT = {
    "string": "strings",
    "doubly-jagged": "lists of lists",
    "object": "objects (records or classes)",
    "fixed-size array": "fixed-size arrays of anything but numbers",
    "empty": "no value on any line",
}
"""What a branch of each unusable kind holds, for the messages."""

_FIXED = re.compile(r"fixed((?:\[[1-9][0-9]*\])+)")


def fixed_shape(kind: str) -> tuple[int, ...] | None:
    """The shape of a fixed-size array's ``kind`` (``"fixed[2][3]"``: ``(2, 3)``); None for any other kind.

    Examples
    --------
    >>> fixed_shape("fixed[2][3]"), fixed_shape("fixed[4]"), fixed_shape("jagged")
    ((2, 3), (4,), None)
    """
    match = _FIXED.fullmatch(kind)
    if match is None:
        return None
    return tuple(int(n) for n in re.findall(r"[0-9]+", match.group(1)))


def fixed_width(kind: str) -> int:
    """Numbers per event of a fixed-size array's ``kind`` (``"fixed[2][3]"``: 6); 0 for any other kind."""
    shape = fixed_shape(kind)
    return math.prod(shape) if shape is not None else 0


def is_usable(kind: str) -> bool:
    """Whether branches of ``kind`` become numeric features: flat, jagged, or fixed-size arrays of numbers."""
    return kind in ("flat", "jagged") or fixed_shape(kind) is not None
