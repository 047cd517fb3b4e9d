"""Private helpers: a user's JSON file read, or written atomically, with errors that name the file.

One place for what the specs, the saved preprocessing, ``params.json`` and
``preproc.json`` share: a missing file, text that is not JSON, JSON that is not
an object, and a value that cannot be built from it are told the same way for
each of them, naming the file (and the option it was given as).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from .errors import FileAccessError, MLaaS4HEPError, ParameterError

__all__ = ["load_json", "read_json", "write_json"]

T = TypeVar("T")


def read_json(
    path: str | os.PathLike[str],
    what: str,
    *,
    option: str = "",
    missing: type[MLaaS4HEPError] = FileAccessError,
    invalid: type[MLaaS4HEPError] = ParameterError,
) -> Any:
    """Parse the JSON file ``path``, a ``what`` (e.g. ``"params file"``), given as ``option`` (e.g. ``--params``).

    A missing file raises ``missing``, text that is not JSON ``invalid``; both
    messages name the file (and the option).

    Examples
    --------
    >>> read_json("nope.json", "params file", option="--params")
    Traceback (most recent call last):
    ...
    mlaas4hep.errors.FileAccessError: --params: params file 'nope.json' does not exist
    """
    where = f"{option}: {what} {os.fspath(path)!r}" if option else f"{what} {os.fspath(path)!r}"
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as err:
        msg = f"{where} does not exist"
        raise missing(msg) from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        msg = f"{where} is not valid JSON: {err}"
        raise invalid(msg) from err


def load_json(
    path: str | os.PathLike[str], what: str, build: Callable[[Mapping[str, Any]], T], error: type[MLaaS4HEPError]
) -> T:
    """``build`` applied to the JSON object in ``path``, a ``what`` (e.g. ``"specs file"``); faults raise ``error``.

    A missing file, text that is not JSON, JSON that is not an object, and an
    object ``build`` cannot use (a missing key, a wrong type) all raise
    ``error`` naming the file; an error of the library that ``build`` raises
    keeps its class, its message prefixed with the file.
    """
    where = f"{what} {os.fspath(path)!r}"
    data = read_json(path, what, missing=error, invalid=error)
    if not isinstance(data, dict):
        msg = f"{where} holds a {type(data).__name__}, not a JSON object"
        raise error(msg)
    try:
        return build(data)
    except MLaaS4HEPError as err:
        msg = f"{where}: {err}"
        raise type(err)(msg) from err
    except (KeyError, TypeError, ValueError) as err:
        msg = f"{where} is malformed: {type(err).__name__}: {err}"
        raise error(msg) from err


def write_json(path: str | os.PathLike[str], data: Any, what: str, default: Callable[[Any], Any] | None = None) -> Path:
    """Write ``data`` as JSON to ``path`` atomically; return the path.

    The text goes to a temporary file in the same directory, which then
    replaces ``path`` in one step (:func:`os.replace`): a reader sees the old
    file or the new one, never a partial one. A failed write raises
    :class:`~mlaas4hep.errors.FileAccessError` naming the ``what`` and the path.
    """
    target = Path(path)
    text = json.dumps(data, indent=1, allow_nan=False, default=default)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, target)
    except OSError as err:
        msg = f"cannot write the {what} to {os.fspath(path)!r}: {err.strerror or err}"
        raise FileAccessError(msg) from err
    finally:
        tmp.unlink(missing_ok=True)
    return target
