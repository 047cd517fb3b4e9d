"""Private helper: read a user's JSON file with errors that name the option and the file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import FileAccessError, ParameterError

__all__ = ["read_json"]


def read_json(path: str | os.PathLike[str], option: str, what: str) -> Any:
    """Parse the JSON file ``path`` given as ``option`` (e.g. ``--params``), a ``what`` (e.g. "params file")."""
    where = os.fspath(path)
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as err:
        msg = f"{option}: {what} {where!r} not found"
        raise FileAccessError(msg) from err
    except json.JSONDecodeError as err:
        msg = f"{option}: {where!r} is not valid JSON: {err}"
        raise ParameterError(msg) from err
