"""The workflow's inputs: list files (files.txt, labels.txt) and the model file (keras_model.py).

:func:`read_list` reads the original's list files, or comma-separated lists;
:func:`parse_labels` turns labels.txt into one number per file, or the name of
a label branch; :func:`load_model_function` loads ``model(idim)`` from a
Python file.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import FileAccessError, ParameterError
from ..inputs.sources import names_data

__all__ = ["load_model_function", "parse_labels", "read_list"]

log = logging.getLogger(__name__)


def read_list(value: str | Sequence[str], what: str = "--files") -> list[str]:
    """Entries of a list file (one a line, ``#`` comments, blank lines ignored) or a comma-separated list.

    A data file's path (``.root``, ``.parquet``, ``.csv``, ``.jsonl``, ``.avro``, ...) is one entry, never a list file.

    Parameters
    ----------
    value : str or sequence of str
        Path of a text file, a comma-separated string, or already a list.
    what : str
        Name of the option or key, for error messages.

    Returns
    -------
    list of str

    Raises
    ------
    ParameterError
        If the list is empty, or ``value`` names a ``.txt`` file that does not exist.
    """
    if not isinstance(value, str):
        entries = [str(v).strip() for v in value]
    elif Path(value).is_file() and not names_data(value):
        try:
            text = Path(value).read_text()
        except UnicodeDecodeError as err:
            msg = f"{what}: {value!r} is not a text file with one entry a line"
            raise ParameterError(msg) from err
        entries = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    elif value.endswith(".txt") and "," not in value:
        msg = f"{what}: list file {value!r} not found"
        raise ParameterError(msg)
    else:
        entries = [v.strip() for v in value.split(",")]
    entries = [e for e in entries if e]
    if not entries:
        msg = f"{what}: {value!r} holds no entry"
        raise ParameterError(msg)
    return entries


def parse_labels(value: str | Sequence[str | float]) -> list[float] | str:
    """Labels as the original's labels.txt: one number per file, or the name of a label branch.

    Parameters
    ----------
    value : str or sequence
        A list file, a comma-separated list (``"1,0"``), a list of numbers, or
        one branch name (``"is_signal"``).

    Returns
    -------
    list of float, or str
        Per-file labels, or the branch name.
    """
    entries = read_list([str(v) for v in value] if not isinstance(value, str) else value, "--labels")
    numbers = []
    for entry in entries:
        try:
            numbers.append(float(entry))
        except ValueError:
            if len(entries) == 1:
                return entry
            msg = f"--labels: {entry!r} is not a number; give one number per file, or a single branch name"
            raise ParameterError(msg) from None
    return numbers


def load_model_function(path: str | os.PathLike[str]) -> Callable[[int], Any]:
    """Load ``model(idim)`` from a Python file, as the original's ``--model=keras_model.py``.

    Parameters
    ----------
    path : path
        Python file defining ``model(idim)`` that returns a compiled Keras model.

    Returns
    -------
    callable
        The file's ``model`` function.

    Raises
    ------
    FileAccessError
        If the file does not exist.
    ParameterError
        If it defines no callable ``model``.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"--model: model file {os.fspath(path)!r} not found"
        raise FileAccessError(msg)
    name = f"mlaas4hep_user_model_{abs(hash(path.resolve()))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        msg = f"--model: cannot load {os.fspath(path)!r} as a Python module"
        raise ParameterError(msg)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # pickling and Keras serialization look classes up here
    try:
        spec.loader.exec_module(module)
    except SyntaxError as err:
        msg = f"--model: {os.fspath(path)!r} line {err.lineno}: {err.msg}"
        raise ParameterError(msg) from None
    found = getattr(module, "model", None)
    if not callable(found):
        msg = f"--model: {os.fspath(path)!r} defines no function model(idim)"
        raise ParameterError(msg)
    function: Callable[[int], Any] = found
    doc = (function.__doc__ or "").strip().splitlines()
    log.info("load %s %s %s", path, function, doc[0] if doc else "")
    return function
