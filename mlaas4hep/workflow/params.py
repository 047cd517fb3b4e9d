"""params.json: every key of the original MLaaS4HEP workflow and the new ones, checked.

:func:`load_params` reads a params.json file; :meth:`WorkflowParams.from_dict`
checks an already parsed one. Either names the key at fault, and for a
misspelt key the closest valid one. :func:`save_params` writes the params a run
used (its seed included) as a params.json that repeats the run.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._checks import is_int
from .._json import read_json, write_json
from ..errors import ParameterError
from ..options import LAYOUTS
from ..specs.values import DEFAULT_EXCLUDE

__all__ = ["DEFAULT_PARAMS", "DEFAULT_SEED", "WorkflowParams", "load_params", "params_path", "save_params"]

DEFAULT_SEED = 1
"""The seed of a run whose params.json names none: runs are reproducible unless ``"seed": null`` asks otherwise."""

DEFAULT_PARAMS: dict[str, Any] = {
    "nevts": -1,
    "shuffle": True,
    "chunk_size": 10_000,
    "epochs": 5,
    "batch_size": 100,
    "identifier": "",
    "branch": "Events",
    "selected_branches": "",
    "exclude_branches": list(DEFAULT_EXCLUDE),
    "hist": "",
    "redirector": "",
    "verbose": 1,
    "validation_split": 0.2,
    "test_split": 0.2,
    "seed": DEFAULT_SEED,
    "normalization": "minmax",
    "layout": "flat",
    "folds": None,
    "fold_by": None,
}
"""Every key params.json may hold, with its default (the first twelve are the original's)."""


@dataclass(frozen=True)
class WorkflowParams:
    """Contents of params.json, checked; see :data:`DEFAULT_PARAMS` and the user guide."""

    nevts: int = -1
    shuffle: bool = True
    chunk_size: int = 10_000
    epochs: int = 5
    batch_size: int = 100
    identifier: tuple[str, ...] = ()
    branch: str = "Events"
    selected_branches: tuple[str, ...] = ()
    exclude_branches: tuple[str, ...] = DEFAULT_EXCLUDE
    hist: str = ""
    redirector: str = ""
    verbose: int = 1
    validation_split: float = 0.2
    test_split: float = 0.2
    seed: int | None = DEFAULT_SEED
    normalization: str | None = "minmax"
    layout: str = "flat"
    folds: int | None = None
    fold_by: str | None = None

    @property
    def exclude(self) -> list[str]:
        """Branches left out of the features: ``exclude_branches`` and ``identifier``."""
        return list(dict.fromkeys([*self.exclude_branches, *self.identifier]))

    def to_dict(self) -> dict[str, Any]:
        """Every key as params.json holds it (lists for the branch names); ``from_dict`` reads it back.

        Examples
        --------
        >>> WorkflowParams(epochs=2).to_dict()["epochs"]
        2
        >>> WorkflowParams.from_dict(WorkflowParams(seed=7).to_dict()) == WorkflowParams(seed=7)
        True
        """
        data = dataclasses.asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in data.items()}

    def with_seed(self) -> WorkflowParams:
        """These params with a seed: their own, or one drawn at random for ``"seed": null``.

        Examples
        --------
        >>> WorkflowParams(seed=3).with_seed().seed
        3
        >>> WorkflowParams(seed=None).with_seed().seed is not None
        True
        """
        if self.seed is not None:
            return self
        return dataclasses.replace(self, seed=int(np.random.default_rng().integers(2**31)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "params") -> WorkflowParams:
        """Check ``data`` (a parsed params.json) and fill in defaults.

        Raises
        ------
        ParameterError
            For an unknown key (naming the closest valid one) or a value of the wrong type.
        """
        _check_keys(data, where)
        merged = {**DEFAULT_PARAMS, **data}
        shuffle = _flag(merged, "shuffle", where)
        seed = _seed(merged, where)
        normalization = _normalization(merged, where)
        folding = _folding(data, merged, where)  # with folds, test_split is 0 (each fold is the test part in turn)
        params = cls(
            nevts=_integer(merged, "nevts", where, 1, allow_minus_one=True),
            shuffle=shuffle,
            chunk_size=_integer(merged, "chunk_size", where, 1, allow_minus_one=True),
            epochs=_integer(merged, "epochs", where, 1),
            batch_size=_integer(merged, "batch_size", where, 1),
            identifier=_names(merged, "identifier", where),
            branch=_text(merged, "branch", where) or "Events",
            selected_branches=_names(merged, "selected_branches", where),
            exclude_branches=_names(merged, "exclude_branches", where),
            hist=_text(merged, "hist", where),
            redirector=_text(merged, "redirector", where),
            verbose=_integer(merged, "verbose", where, 0),
            validation_split=_fraction(merged, "validation_split", where),
            test_split=0.0 if folding else _fraction(merged, "test_split", where),
            seed=seed,
            normalization=normalization,
            layout=_layout(merged, where),
            **folding,
        )
        if params.validation_split + params.test_split >= 1:
            msg = (
                f"{where}: validation_split + test_split must be below 1, got "
                f"{params.validation_split} + {params.test_split}"
            )
            raise ParameterError(msg)
        return params


def load_params(path: str | os.PathLike[str]) -> WorkflowParams:
    """Read and check a params.json file.

    Parameters
    ----------
    path : path
        JSON object with the keys of :data:`DEFAULT_PARAMS` (any subset).

    Returns
    -------
    WorkflowParams

    Raises
    ------
    FileAccessError
        If the file does not exist.
    ParameterError
        If it is not a JSON object, or a key is unknown or has a wrong value.
    """
    where = os.fspath(path)
    data = read_json(path, "params file", option="--params")
    if not isinstance(data, dict):
        msg = f"--params: {where!r} holds a {type(data).__name__}, not a JSON object"
        raise ParameterError(msg)
    return WorkflowParams.from_dict(data, where)


def params_path(model_path: str | os.PathLike[str]) -> Path:
    """Where the params of a saved model's run go: ``model.keras`` -> ``model.params.json``.

    Examples
    --------
    >>> params_path("out/model.keras").as_posix()
    'out/model.params.json'
    """
    return Path(model_path).with_suffix(".params.json")


def save_params(params: WorkflowParams, path: str | os.PathLike[str]) -> Path:
    """Write ``params`` as a params.json (every key, the seed included): ``--params`` repeats the run.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    FileAccessError
        If the file cannot be written.

    Examples
    --------
    >>> save_params(WorkflowParams(seed=7), "model.params.json")  # doctest: +SKIP
    PosixPath('model.params.json')
    """
    return write_json(path, params.to_dict(), "params")


# -- checks of one key each: the merged params, the key, and where they come from (for messages) ----------


def _check_keys(data: Mapping[str, Any], where: str) -> None:
    """Raise for the first key that is not in :data:`DEFAULT_PARAMS`, naming the closest valid key."""
    unknown = [k for k in data if k not in DEFAULT_PARAMS]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, list(DEFAULT_PARAMS), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {sorted(DEFAULT_PARAMS)}"
        msg = f"{where}: unknown key {key!r}{hint}"
        raise ParameterError(msg)


def _integer(merged: Mapping[str, Any], key: str, where: str, minimum: int, allow_minus_one: bool = False) -> int:
    """An integer (not a bool) of at least ``minimum``, or -1 where ``allow_minus_one``."""
    value = merged[key]
    if not is_int(value) or (value < minimum and not (allow_minus_one and value == -1)):
        extra = " or -1" if allow_minus_one else ""
        msg = f"{where}: {key!r} must be an integer >= {minimum}{extra}, got {value!r}"
        raise ParameterError(msg)
    return int(value)


def _fraction(merged: Mapping[str, Any], key: str, where: str) -> float:
    """A number (not a bool) in [0, 1)."""
    value = merged[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        msg = f"{where}: {key!r} must be a number in [0, 1), got {value!r}"
        raise ParameterError(msg)
    return float(value)


def _names(merged: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    """Branch names from a comma-separated string or a list of strings; None for none."""
    value = merged[key]
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(v.strip() for v in value if v.strip())
    msg = f"{where}: {key!r} must be a comma-separated string or a list of strings, got {value!r}"
    raise ParameterError(msg)


def _text(merged: Mapping[str, Any], key: str, where: str) -> str:
    """A string; None for the empty one."""
    value = merged[key]
    if value is None:
        return ""
    if not isinstance(value, str):
        msg = f"{where}: {key!r} must be a string, got {value!r}"
        raise ParameterError(msg)
    return value


def _flag(merged: Mapping[str, Any], key: str, where: str) -> bool:
    """true or false, nothing else."""
    value = merged[key]
    if not isinstance(value, bool):
        msg = f"{where}: {key!r} must be true or false, got {value!r}"
        raise ParameterError(msg)
    return value


def _seed(merged: Mapping[str, Any], where: str) -> int | None:
    """An integer (not a bool), or None."""
    seed: int | None = merged["seed"]
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        msg = f"{where}: 'seed' must be an integer or null, got {seed!r}"
        raise ParameterError(msg)
    return seed


def _normalization(merged: Mapping[str, Any], where: str) -> str | None:
    """``"minmax"``, ``"standard"`` or None."""
    normalization: str | None = merged["normalization"]
    if normalization not in ("minmax", "standard", None):
        msg = f'{where}: \'normalization\' must be "minmax", "standard" or null, got {normalization!r}'
        raise ParameterError(msg)
    return normalization


def _folding(data: Mapping[str, Any], merged: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``folds`` (an integer >= 2) and ``fold_by`` (``"event"`` by default) by name; empty without folds.

    With folds the test part is each fold in turn: a ``test_split`` that
    params.json gives (other than 0) is refused, naming both keys.
    """
    folds = merged["folds"]
    fold_by = merged["fold_by"]
    if folds is None:
        if fold_by is not None:
            msg = f"{where}: 'fold_by' ({fold_by!r}) needs 'folds', the number of folds (an integer >= 2)"
            raise ParameterError(msg)
        return {}
    if not is_int(folds) or folds < 2:
        msg = f"{where}: 'folds' must be an integer >= 2 (or null for no folds), got {folds!r}"
        raise ParameterError(msg)
    if data.get("test_split"):
        msg = (
            f"{where}: 'test_split' ({data['test_split']!r}) does not go with 'folds' ({folds}): "
            "each fold in turn is the test part; leave test_split out"
        )
        raise ParameterError(msg)
    if fold_by is None:
        fold_by = "event"
    elif not isinstance(fold_by, str) or not fold_by.strip():
        msg = f"{where}: 'fold_by' must be a branch name or an expression (a non-empty string), got {fold_by!r}"
        raise ParameterError(msg)
    return {"folds": int(folds), "fold_by": fold_by.strip()}


def _layout(merged: Mapping[str, Any], where: str) -> str:
    """``"flat"`` or ``"collections"``."""
    layout: str = merged["layout"]
    if layout not in LAYOUTS:
        msg = f"{where}: 'layout' must be one of {LAYOUTS}, got {layout!r}"
        raise ParameterError(msg)
    return layout
