"""Private helpers for arguments: their checks, and their entries in numpy-style docstrings.

A check returns the value it checked (as the type it stands for) or raises
:class:`~mlaas4hep.errors.ParameterError` naming the argument and quoting the
value: "batch_size must be a positive integer, got 0".
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping
from typing import TypeGuard, TypeVar

import numpy as np

from .errors import ParameterError

__all__ = [
    "check_choice",
    "check_file_weights",
    "check_finite",
    "check_flag",
    "check_fraction",
    "check_int",
    "check_mapping",
    "check_names",
    "check_number",
    "check_real",
    "check_shard",
    "check_split",
    "check_text",
    "check_widths",
    "is_int",
    "known_names",
]

T = TypeVar("T")
V = TypeVar("V")


def is_int(value: object) -> TypeGuard[numbers.Integral]:
    """Whether ``value`` is an integer (Python or numpy), not a bool or a float."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(value: object, name: str, *, minimum: int = 1, special: Collection[int] = (), hint: str = "") -> int:
    """``value`` as an int if it is an integer ``>= minimum`` or one of ``special``.

    Raises
    ------
    ParameterError
        Naming ``name`` and quoting ``value``, e.g. "batch_size must be a
        positive integer, got 0"; ``hint`` says what the special values mean.

    Examples
    --------
    >>> check_int(-1, "nevts", special=(-1,), hint="-1 (all events)")
    -1
    """
    if is_int(value) and (int(value) >= minimum or int(value) in special):
        return int(value)
    what = {1: "a positive integer", 0: "a non-negative integer"}.get(minimum, f"an integer >= {minimum}")
    extra = f" or {hint}" if hint else ""
    msg = f"{name} must be {what}{extra}, got {value!r}"
    raise ParameterError(msg)


def check_number(value: object, name: str, *, minimum: float = 0.0, what: str = "") -> float:
    """``value`` as a float if it is a real number ``>= minimum`` (not a bool, not NaN)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value) >= minimum:
        return float(value)
    msg = f"{name} must be {what or f'a number >= {minimum:g}'}, got {value!r}"
    raise ParameterError(msg)


def check_fraction(value: object, name: str) -> float | None:
    """``value`` as a float in ``[0, 1)``, or None when it is None."""
    if value is None:
        return None
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 <= float(value) < 1:
        return float(value)
    msg = f"{name} must be a number in [0, 1), got {value!r}"
    raise ParameterError(msg)


def check_real(value: object, name: str, *, low: float, high: float, what: str, low_open: bool = False) -> float:
    """``value`` as a float in ``[low, high]`` (``(low, high]`` when ``low_open``); ``what`` names the range.

    Examples
    --------
    >>> check_real(0.999, "length_quantile", low=0, high=1, low_open=True, what="a number in (0, 1]")
    0.999
    """
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = float(value)  # NaN fails both comparisons
        if (low < number if low_open else low <= number) and number <= high:
            return number
    msg = f"{name} must be {what}, got {value!r}"
    raise ParameterError(msg)


def check_text(value: object, name: str, *, what: str = "a non-empty string") -> str:
    """``value`` if it is a non-empty string.

    Examples
    --------
    >>> check_text("Events", "tree")
    'Events'
    """
    if isinstance(value, str) and value:
        return value
    msg = f"{name} must be {what}, got {value!r}"
    raise ParameterError(msg)


def check_choice(value: T, name: str, choices: Collection[object]) -> T:
    """``value`` if it is one of ``choices``.

    Examples
    --------
    >>> check_choice("standard", "normalization", ("minmax", "standard", None))
    'standard'
    """
    if isinstance(value, Hashable) and value in choices:
        return value
    msg = f"{name} must be one of {tuple(choices)}, got {value!r}"
    raise ParameterError(msg)


def check_mapping(value: object, name: str, check: Callable[[object, str], V], *, what: str) -> dict[str, V]:
    """``value`` as a dict if it is a mapping of names (non-empty strings) to values that pass ``check``.

    ``check(item, label)`` checks each value; ``what`` says what the mapping holds.

    Examples
    --------
    >>> check_mapping({"Jet": 10}, "max_lengths", check_int, what="branch names to integers")
    {'Jet': 10}
    """
    if not isinstance(value, Mapping) or not all(isinstance(key, str) and key for key in value):
        msg = f"{name} must be a mapping of {what}, got {value!r}"
        raise ParameterError(msg)
    return {key: check(item, f"{name}[{key!r}]") for key, item in value.items()}


def known_names(given: Iterable[str], known: Collection[str], where: str) -> None:
    """Raise :class:`~mlaas4hep.errors.ParameterError` for the first of ``given`` not in ``known``.

    The message names it and suggests the closest known name, if one is close.

    Examples
    --------
    >>> known_names(["batchsize"], ["batch_size", "chunk_size"], "RootSequence")
    Traceback (most recent call last):
    ...
    mlaas4hep.errors.ParameterError: 'batchsize' is not an option of RootSequence; did you mean 'batch_size'?
    """
    for name in given:
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; the options are {sorted(known)}"
            msg = f"{name!r} is not an option of {where}{hint}"
            raise ParameterError(msg)


def check_flag(value: object, name: str) -> bool:
    """``value`` as a bool if it is True or False (numpy's too).

    Examples
    --------
    >>> check_flag(np.True_, "one_hot")
    True
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    msg = f"{name} must be True or False, got {value!r}"
    raise ParameterError(msg)


def check_finite(
    value: object, name: str, *, minimum: float = -math.inf, nan: bool = False, what: str = "a finite number"
) -> float:
    """``value`` as a float if it is a finite real number ``>= minimum`` (not a bool), or NaN when ``nan``.

    Examples
    --------
    >>> check_finite(np.float32(0.5), "pad_value")
    0.5
    """
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = float(value)
        if (math.isfinite(number) and number >= minimum) or (nan and math.isnan(number)):
            return number
    msg = f"{name} must be {what}, got {value!r}"
    raise ParameterError(msg)


def check_names(value: object, name: str, *, lone: bool = True, empty: bool = True) -> tuple[str, ...]:
    """``value`` as a tuple of names: a sequence of strings, or one string when ``lone``.

    ``empty=False`` refuses an empty sequence and empty names.

    Examples
    --------
    >>> check_names("Jet_pt", "branches")
    ('Jet_pt',)
    """
    if isinstance(value, str) and lone:
        value = (value,)
    if isinstance(value, Iterable) and not isinstance(value, (str, Mapping)):
        names = tuple(value)
        if all(isinstance(n, str) and (n or empty) for n in names) and (names or empty):
            return names
    what = "a branch name or a sequence of branch names" if lone else "a sequence of branch names"
    msg = f"{name} must be {what if empty else what.replace('a sequence', 'a non-empty sequence')}, got {value!r}"
    raise ParameterError(msg)


def check_split(validation: object, test: object, subset: object, subsets: Collection[str]) -> tuple[float | None, ...]:
    """The validation and test fractions, checked with the ``subset`` served (one of ``subsets``, or None).

    Examples
    --------
    >>> check_split(0.2, None, "training", ("training", "validation", "test"))
    (0.2, None)
    """
    validation, test = check_fraction(validation, "validation_split"), check_fraction(test, "test_split")
    if (validation or 0) + (test or 0) >= 1:
        msg = f"validation_split + test_split must be below 1, got {validation} + {test}"
        raise ParameterError(msg)
    if subset is not None:
        check_choice(subset, "subset", subsets)
        if not (validation or test):
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
    return validation, test


def check_widths(max_lengths: object, length_quantile: object) -> tuple[int | dict[str, int] | None, float | None]:
    """``max_lengths`` (a width for every jagged branch, or per name) or ``length_quantile`` (in (0, 1]).

    A width is a non-negative integer: 0 leaves a branch (or a collection) out.

    Examples
    --------
    >>> check_widths({"Jet": 10}, None)
    ({'Jet': 10}, None)
    """
    widths: int | dict[str, int] | None = None
    if isinstance(max_lengths, Mapping):
        widths = check_mapping(max_lengths, "max_lengths", _width, what="branch names to widths")
    elif max_lengths is not None:
        widths = _width(max_lengths, "max_lengths", "a non-negative integer or a mapping of branch names to them")
    quantile = None
    if length_quantile is not None:
        what = "a number in (0, 1]"
        quantile = check_real(length_quantile, "length_quantile", low=0, high=1, low_open=True, what=what)
    if widths is not None and quantile is not None:
        msg = "give either max_lengths or length_quantile, not both"
        raise ParameterError(msg)
    return widths, quantile


def _width(value: object, name: str, what: str = "a non-negative integer") -> int:
    if is_int(value) and int(value) >= 0:
        return int(value)
    msg = f"{name} must be {what}, got {value!r}"
    raise ParameterError(msg)


def check_file_weights(value: object) -> tuple[float, ...]:
    """``file_weights`` as a tuple: a finite, non-negative number per file.

    Examples
    --------
    >>> check_file_weights([0.5, 2])
    (0.5, 2.0)
    """
    if not isinstance(value, Iterable) or isinstance(value, (str, Mapping)):
        msg = f"file_weights must be a sequence of finite non-negative numbers, one per file, got {value!r}"
        raise ParameterError(msg)
    what = "a finite non-negative number"
    return tuple(check_finite(w, f"file_weights[{i}]", minimum=0, what=what) for i, w in enumerate(value))


def check_shard(
    shard_index: object, num_shards: object, names: tuple[str, str] = ("shard_index", "num_shards")
) -> tuple[int, int]:
    """``shard_index`` and ``num_shards`` as ints: shard ``shard_index`` of ``num_shards``; ``names`` for messages.

    Examples
    --------
    >>> check_shard(1, 2)
    (1, 2)
    >>> check_shard(2, 2, ("rank", "world_size"))
    Traceback (most recent call last):
    ...
    mlaas4hep.errors.ParameterError: rank must be an integer in [0, world_size=2), got 2
    """
    index_name, num_name = names
    num = check_int(num_shards, num_name)
    index = check_int(shard_index, index_name, minimum=0)
    if index >= num:
        msg = f"{index_name} must be an integer in [0, {num_name}={num}), got {shard_index!r}"
        raise ParameterError(msg)
    return index, num
