"""Private helpers: checks of arguments, with messages that name the parameter and quote the value."""

from __future__ import annotations

import numbers
from collections.abc import Collection
from typing import TypeGuard

from .errors import ParameterError

__all__ = ["check_fraction", "check_int", "check_number", "is_int"]


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
