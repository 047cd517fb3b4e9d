"""The inputs of an exported model: weaver-style groups, and where each of the model's numbers comes from.

A consumer outside Python (CMSSW's ONNX Runtime, a Triton client) builds one
float32 tensor ``(batch, len(var_names), var_length)`` per input group, from
raw branch values, with weaver-core's per-variable formula
``clip((x - median) * norm_factor, lower_bound, upper_bound)`` (a NaN or inf
``x`` replaced by ``replace_inf_value`` first), padded to ``var_length`` with
``pad``. :func:`plan_inputs` chooses those groups for a
:class:`~mlaas4hep.preprocessing.Preprocessing` and says, for every number of
every input of the Keras model, which element of which group it is, so that
the exported graph only has to move numbers (:mod:`.graph`); and
:func:`preprocess_json` writes the groups and each variable's numbers in
weaver-core's ``preprocess.json`` form.

The groups:

* ``event``: the flat branches, ``var_length`` 1;
* a fixed-size array (``double p3[3]``) alone in a group of its name,
  ``var_length`` its size (C order);
* the jagged branches of one collection (``Jet_pt``, ``Jet_eta``): a group
  named after it, ``var_length`` its width; in the collections layout it also
  holds the variable ``<collection>_mask``, 1 for each element the event
  has and padded with 0. In the flat layout jagged branches of one collection
  with different widths go into one group per width (``Jet_4``, ``Jet_6``).

mlaas4hep's normalization is ``(x - offset) * scale`` with no clipping, and a
value whose result is not finite becomes ``pad_value``: so ``median`` is the
offset, ``norm_factor`` the scale, the bounds are weaver-core's "no clipping"
(``-1e32``, ``1e32``), and ``replace_inf_value`` is the raw value that
normalizes to ``pad_value``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ParameterError
from ..preprocessing import Preprocessing
from ..specs.values import BranchSpec
from ..transform.columns import scaling
from ..transform.tensors import EVENT, collection_name
from .aliases import check_aliases, cpp_aliases, ordered_aliases

__all__ = [
    "NO_BOUND",
    "PRECISION",
    "RESERVED",
    "InputGroup",
    "InputPlan",
    "VarInfo",
    "cancellation_error",
    "plan_inputs",
    "preprocess_json",
]

NO_BOUND = 1e32
"""weaver-core's bounds of a variable that is not clipped (``lower_bound = -NO_BOUND``)."""

PRECISION = 1e-6
"""The largest error float32 arithmetic in a consumer may add to a normalized input (:func:`cancellation_error`)."""

RESERVED = ("input_names", "output_names", "mlaas4hep")
"""The keys of ``preprocess.json`` that are not input groups."""

_EPSILON32 = 2.0**-24  # float32's relative rounding error


@dataclass(frozen=True)
class VarInfo:
    """One variable's numbers in ``preprocess.json`` (weaver-core's ``var_infos`` entry)."""

    median: float
    norm_factor: float
    replace_inf_value: float
    pad: float
    lower_bound: float = -NO_BOUND
    upper_bound: float = NO_BOUND

    def to_dict(self) -> dict[str, float]:
        """weaver-core's keys, in its order.

        Examples
        --------
        >>> VarInfo(median=5.0, norm_factor=0.5, replace_inf_value=5.0, pad=0.0).to_dict()["lower_bound"]
        -1e+32
        """
        return {
            "median": self.median,
            "norm_factor": self.norm_factor,
            "replace_inf_value": self.replace_inf_value,
            "lower_bound": self.lower_bound,
            "upper_bound": self.upper_bound,
            "pad": self.pad,
        }


@dataclass(frozen=True)
class InputGroup:
    """One input of the exported model: ``(batch, len(var_names), var_length)`` float32."""

    name: str
    var_names: tuple[str, ...]
    var_length: int
    var_infos: Mapping[str, VarInfo]
    mask: str | None = None  # the variable ``<collection>_mask``, in the collections layout

    @property
    def size(self) -> int:
        """Numbers per event."""
        return len(self.var_names) * self.var_length


@dataclass(frozen=True)
class InputPlan:
    """The groups, and where each number of each of the Keras model's inputs comes from.

    ``sources[name]`` has the shape of the model's input ``name`` without the
    batch axis; each element is the index of its number in the concatenation
    of the groups, each flattened in C order (``group[v, j]`` at
    ``offset + v * var_length + j``).
    """

    groups: tuple[InputGroup, ...]
    sources: Mapping[str, np.ndarray]
    flat_input: bool  # the model takes one tensor (the flat layout), not a dict

    @property
    def input_names(self) -> list[str]:
        """The groups' names, in the order of the exported model's inputs."""
        return [g.name for g in self.groups]


def cancellation_error(spec: BranchSpec, offset: float, scale: float) -> float:
    """The largest error float32 arithmetic adds to ``(x - offset) * scale`` beyond rounding the result to float32.

    A consumer rounds ``x`` and ``offset`` to float32 (a relative error of
    2**-24 each) before subtracting them; mlaas4hep subtracts in float64 and
    rounds only the normalized value, as float32 rounds every number. What
    remains is the cancellation: ``(|x| + |offset| - |x - offset|) * 2**-24 *
    |scale|``, never negative, largest at the branch's ``min`` or ``max``, and
    large only where the values sit far from 0 compared with their spread
    about ``offset`` (a timestamp, not a standardized energy).

    Examples
    --------
    >>> met = BranchSpec("MET_pt", "flat", "float32", count=10, min=0.0, max=1000.0)
    >>> cancellation_error(met, offset=40.0, scale=1 / 40.0) < 1e-6
    True
    >>> stamp = BranchSpec("timestamp", "flat", "int64", count=10, min=1.7e9, max=1.7e9 + 99)
    >>> round(cancellation_error(stamp, offset=1.7e9, scale=1 / 99.0), 2)
    2.05
    """
    ends = [v for v in (spec.min, spec.max) if math.isfinite(v)]
    if not math.isfinite(offset) or not ends:
        return 0.0
    worst = max(abs(x) + abs(offset) - abs(x - offset) for x in ends)
    return worst * _EPSILON32 * abs(scale)


def _var_info(spec: BranchSpec, normalization: str | None, pad: float) -> VarInfo:
    """The variable of branch ``spec``: its normalization, and the raw value that normalizes to ``pad``."""
    offset, scale, _, _ = scaling(spec, normalization)
    if scale != 0:
        replace = offset + pad / scale
    elif pad == 0:  # a constant branch: every finite value gives 0, as the pad
        replace = offset
    else:
        msg = (
            f"branch {spec.name!r} is constant in the training specs (norm_factor 0): a NaN or inf in it gives "
            f"pad_value={pad} in mlaas4hep, which weaver-core's formula cannot give (replace_inf_value is "
            "normalized too); train with pad_value=0 or without the branch"
        )
        raise ParameterError(msg)
    error = cancellation_error(spec, offset, scale)
    if error > PRECISION:
        largest = max((abs(v) for v in (spec.min, spec.max) if math.isfinite(v)), default=0.0)
        msg = (
            f"branch {spec.name!r} holds values up to {largest:.6g}, normalized about {offset:.6g} by {scale:.6g}: "
            f"a consumer computing (x - median) * norm_factor in float32 would be off by up to {error:.3g} in "
            f"the model's input beyond float32's own rounding of it (more than {PRECISION}); leave it out of "
            "the features (exclude=) or derive a smaller variable from it"
        )
        raise ParameterError(msg)
    return VarInfo(float(offset), float(scale), float(replace), pad)


def _mask_info() -> VarInfo:
    return VarInfo(0.0, 1.0, 0.0, 0.0)


def _group_keys(preprocessing: Preprocessing) -> dict[str, tuple[str, int]]:
    """Jagged branch -> (its group's name, width), for the branches that take columns."""
    widths = preprocessing.widths
    if preprocessing.layout == "collections":
        return {
            b: (name, widths[b]) for name, members in preprocessing.collections.items() for b in members if widths[b]
        }
    keys = {b: (collection_name(b) or b, widths[b]) for b in preprocessing.specs.jagged if widths[b]}
    names: dict[str, set[int]] = {}
    for base, width in keys.values():
        names.setdefault(base, set()).add(width)
    return {b: ((base if len(names[base]) == 1 else f"{base}_{width}"), width) for b, (base, width) in keys.items()}


def _groups(preprocessing: Preprocessing) -> tuple[list[tuple[str, list[str], int]], dict[tuple[str, int], int]]:
    """The groups (name, variables, length), and each (variable, element)'s place in their concatenation."""
    specs = preprocessing.specs
    layout: list[tuple[str, list[str], int]] = []
    scalars = [b for b in specs.flat if not specs[b].is_fixed]
    if scalars:
        layout.append((EVENT, scalars, 1))
    layout += [(b, [b], specs[b].width) for b in specs.flat if specs[b].is_fixed]
    jagged: dict[str, tuple[list[str], int]] = {}
    for branch, (name, width) in _group_keys(preprocessing).items():
        jagged.setdefault(name, ([], width))[0].append(branch)
    for name, (members, width) in sorted(jagged.items()):
        mask = [f"{name}_mask"] if preprocessing.layout == "collections" else []
        layout.append((name, sorted(members) + mask, width))
    names = [name for name, _, _ in layout]
    clash = sorted({n for n in names if names.count(n) > 1 or n in RESERVED})
    doubled = sorted({v for _, members, _ in layout for v in members if members.count(v) > 1})
    if clash or doubled:
        msg = (
            f"the exported inputs would repeat the names {clash or doubled} (a fixed-size array, a collection, "
            "'event' or a '<collection>_mask' variable): rename the branches with aliases"
        )
        raise ParameterError(msg)
    place, offset = {}, 0
    for _, members, length in layout:
        for v, var in enumerate(members):
            for j in range(length):
                place[(var, j)] = offset + v * length + j
        offset += len(members) * length
    return layout, place


def _column_sources(preprocessing: Preprocessing, place: Mapping[tuple[str, int], int]) -> np.ndarray:
    """For each column of the flattener's matrix, its number's place in the groups' concatenation."""
    flattener = preprocessing.flattener()
    n = flattener.num_features
    source = np.full(n, -1, dtype=np.int64)
    cells = np.arange(n)
    for branch in flattener.branches:
        for j, cell in enumerate(cells[flattener.columns(branch)]):
            source[cell] = place[(branch, j)]
    for g in flattener.collections:
        for j in range(g.width):
            source[g.mask_start + j] = place[(f"{g.name}_mask", j)]
    assert (source >= 0).all(), "every column has a source"
    return source


def plan_inputs(preprocessing: Preprocessing) -> InputPlan:
    """The exported model's input groups for ``preprocessing``, and where the Keras model's numbers come from.

    Raises
    ------
    ParameterError
        What cannot be exported exactly: ``mask_output=True`` (its mask also
        marks NaN and inf values, which weaver-core's formula cannot tell), a
        non-finite ``pad_value``, an alias a consumer cannot compute from
        branches (:func:`~mlaas4hep.deploy.aliases.check_aliases`), a branch
        whose float32 normalization is off by more than :data:`PRECISION`,
        names that clash.

    Examples
    --------
    >>> plan = plan_inputs(Preprocessing.load("model.preprocessing.json"))  # doctest: +SKIP
    >>> [(g.name, g.var_names, g.var_length) for g in plan.groups]  # doctest: +SKIP
    [('event', ('MET_pt', 'nPV'), 1), ('Jet', ('Jet_eta', 'Jet_pt'), 4)]
    """
    if preprocessing.mask_output:
        msg = (
            "mask_output=True cannot be exported: its mask marks NaN and inf values as well as padding, which "
            "preprocess.json's formula cannot give a consumer; train with mask_output=False, or with "
            "layout='collections' (whose masks mark the elements an event has)"
        )
        raise ParameterError(msg)
    pad = float(preprocessing.pad_value)
    if not math.isfinite(pad):
        msg = f"pad_value={pad} cannot be exported: preprocess.json's pad is a finite number"
        raise ParameterError(msg)
    check_aliases(preprocessing.selection().aliases)
    layout, place = _groups(preprocessing)
    specs = preprocessing.specs
    groups = []
    for name, members, length in layout:
        infos = {
            v: _mask_info() if v not in specs.names else _var_info(specs[v], preprocessing.normalization, pad)
            for v in members
        }
        mask = next((v for v in members if v not in specs.names), None)
        groups.append(InputGroup(name, tuple(members), length, infos, mask))
    source = _column_sources(preprocessing, place)
    columns = np.arange(source.size).reshape(1, -1)
    views = preprocessing.flattener().inputs(columns)  # the model's inputs, made of column numbers
    flat_input = not isinstance(views, dict)
    by_name = {"features": views} if not isinstance(views, dict) else views
    sources = {name: source[np.asarray(view)[0]] for name, view in by_name.items()}
    return InputPlan(tuple(groups), sources, flat_input)


def preprocess_json(plan: InputPlan, output_names: list[str], preprocessing: Preprocessing) -> dict[str, Any]:
    """``preprocess.json`` in weaver-core's ``DataConfig.export_json`` form, and what a consumer needs beside it.

    One key is beyond weaver-core's (CMSSW's readers ignore it): ``mlaas4hep``,
    with ``new_variables``, the aliases the variables are computed from, in
    C++ (name -> expression of :func:`~mlaas4hep.deploy.aliases.cpp_expression`,
    element by element, in an order where each uses only branches and the
    aliases before it), ``aliases``, the same as mlaas4hep evaluates them
    (uproot's syntax, numpy's meaning), ``tree``, the tree trained on, and the
    ``layout`` and ``normalization`` exported.

    Examples
    --------
    >>> recipe = Preprocessing.load("model.preprocessing.json")  # doctest: +SKIP
    >>> config = preprocess_json(plan_inputs(recipe), ["score"], recipe)  # doctest: +SKIP
    >>> config["event"]["var_infos"]["MET_pt"]["median"] == recipe.specs["MET_pt"].min  # doctest: +SKIP
    True
    """
    out: dict[str, Any] = {"output_names": list(output_names), "input_names": plan.input_names}
    for g in plan.groups:
        out[g.name] = {
            "var_names": list(g.var_names),
            "var_infos": {v: g.var_infos[v].to_dict() for v in g.var_names},
            "var_length": g.var_length,
        }
    out["mlaas4hep"] = {
        "new_variables": cpp_aliases(preprocessing.selection().aliases),
        "aliases": ordered_aliases(preprocessing.selection().aliases),
        "tree": preprocessing.tree,
        "layout": preprocessing.layout,
        "normalization": preprocessing.normalization,
    }
    return out
