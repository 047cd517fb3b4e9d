"""One step of the first pass: the steps of a file up to an entry, the cut applied to one, its statistics.

:class:`~mlaas4hep.specs.first_pass.SpecBuilder` reads each file in steps of
bounded size; :func:`steps_until` ends the reading at an entry (the one after
the file's last training event, so that held-out events never shape the
specs), :func:`apply_selection` keeps the events passing the cut and computes
the aliases, and :func:`step_specs` gives the statistics of one step.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from .._arrays import flat_values, jagged_parts
from ..inputs.formats import BranchInfo
from ..inputs.selection import Selection, kind_of
from .values import BranchSpec

__all__ = ["apply_selection", "step_specs", "steps_until"]


def steps_until(steps: Iterable[Any], stop: int | None) -> Iterator[Any]:
    """The steps of a file (arrays of consecutive entries from entry 0), ended before entry ``stop``.

    ``stop=None`` yields every step. Otherwise the step holding entry ``stop``
    is cut there and no later step is read; at least one step is yielded
    (empty when ``stop`` is 0), so that the kinds of the aliases are known.

    Parameters
    ----------
    steps : iterable of arrays
        The steps, in entry order (as ``table.iterate`` yields them).
    stop : int or None
        The entry before which to end.

    Yields
    ------
    arrays
        Each step, the last one cut at ``stop``.

    Examples
    --------
    >>> [s.tolist() for s in steps_until([np.arange(3), np.arange(3, 6), np.arange(6, 9)], 4)]
    [[0, 1, 2], [3]]
    >>> [s.tolist() for s in steps_until([np.arange(3)], 0)]
    [[]]
    """
    if stop is None:
        yield from steps
        return
    position = 0
    for arrays in steps:
        n = len(arrays)
        yield arrays if position + n <= stop else arrays[: max(stop - position, 0)]
        position += n
        if position >= stop:
            return


def step_specs(arrays: Any, kinds: Mapping[str, BranchInfo]) -> Iterable[tuple[str, BranchSpec]]:
    """The statistics of one step of the first pass, branch by branch.

    Examples
    --------
    >>> import awkward as ak
    >>> step = ak.Array({"x": [1.0, 2.0, 3.0]})
    >>> [(name, spec.count) for name, spec in step_specs(step, {"x": BranchInfo("x", "flat", "float64")})]
    [('x', 3)]
    """
    for name, info in kinds.items():
        if info.kind == "jagged":
            counts, values = jagged_parts(arrays[name])
            yield name, BranchSpec.from_values(name, "jagged", info.dtype, values, counts)
        else:  # flat, or a fixed-size array: the statistics of all its numbers
            yield name, BranchSpec.from_values(name, info.kind, info.dtype, flat_values(arrays[name]))


def apply_selection(
    cuts: Selection, arrays: Any, kinds: Mapping[str, BranchInfo], derived: Sequence[str]
) -> tuple[dict[str, Any], dict[str, BranchInfo], np.ndarray]:
    """One step of the first pass after the cut, with the derived branches: (arrays, kinds, mask).

    Examples
    --------
    >>> import awkward as ak
    >>> step = ak.Array({"x": [1.0, 2.0, 3.0]})
    >>> kept, kinds, mask = apply_selection(Selection("x > 1"), step, {"x": BranchInfo("x", "flat", "float64")}, [])
    >>> kept["x"].tolist(), mask.tolist()
    ([2.0, 3.0], [False, True, True])
    """
    n = len(arrays)
    keep = cuts.mask(arrays, n)
    everything = keep.all()
    kept: dict[str, Any] = {name: arrays[name] if everything else arrays[name][keep] for name in kinds}
    step_kinds = dict(kinds)
    for name, values in cuts.derive(arrays, derived, n).items():
        kind, dtype = kind_of(name, values)
        kept[name] = values if everything else values[keep]
        step_kinds[name] = BranchInfo(name, kind, dtype)
    return kept, step_kinds, keep
