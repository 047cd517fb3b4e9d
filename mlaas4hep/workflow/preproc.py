"""The original MLaaS4HEP's ``preproc.json``, translated into a cut, aliases and excluded branches.

The original (``workflow --preproc=preproc.json``) defines new branches and cuts
in three sections::

    {"new_branch": {"log_partonE": {"def": "log(partonE)", "type": "jagged",
                                     "cut_1": ["log_partonE<6.31", "any"],
                                     "cut_2": ["log_partonE>5.85", "all"],
                                     "remove": "False", "keys_to_remove": ["partonE"]}},
     "flat_cut": {"nLeptons": {"cut": "0<=nLeptons<=2", "remove": "False"}},
     "jagged_cut": {"partonPt": {"cut": ["partonPt>200", "all"], "remove": "False"}}}

:func:`translate_preproc` turns this into what :class:`~mlaas4hep.RootSequence`
takes: ``aliases`` (each ``def``), one ``cut`` (every cut joined with ``&``;
a jagged cut ``[expr, "any"]`` becomes ``any(expr)``), and ``exclude`` (a new
branch with ``"remove": "True"``, a cut branch with ``"remove": "True"``, and
every name in ``keys_to_remove``: used for the cut or the definition, then
dropped from the features).
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .._json import read_json
from ..errors import ParameterError
from ..inputs.selection import Selection

__all__ = ["Preproc", "load_preproc", "translate_preproc"]

SECTIONS = ("new_branch", "flat_cut", "jagged_cut")
"""Top-level keys of preproc.json."""

_ENTRY_KEYS = {
    "new_branch": ("def", "type", "remove", "keys_to_remove"),
    "flat_cut": ("remove",),
    "jagged_cut": ("remove",),
}
_CUT_KEY = re.compile(r"^cut(_(\d+))?$")


@dataclass(frozen=True)
class Preproc:
    """A preproc.json as library arguments.

    Use it as ``RootSequence(..., cut=p.cut, aliases=p.aliases, exclude=[..., *p.exclude])``.
    """

    cut: str | None = None
    aliases: Mapping[str, str] = field(default_factory=dict)
    exclude: tuple[str, ...] = ()

    def selection(self) -> Selection:
        """The cut and aliases, checked (a :class:`~mlaas4hep.inputs.selection.Selection`)."""
        return Selection(self.cut, self.aliases)


def _flag(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    msg = f'{where} must be "True" or "False", got {value!r}'
    raise ParameterError(msg)


def _cuts(entry: Mapping[str, Any], where: str, jagged: bool | None) -> list[str]:
    """The cuts of one entry (``cut``, or ``cut_1``, ``cut_2``, ... in order) as expressions."""
    found = []
    for key, value in entry.items():
        match = _CUT_KEY.match(key)
        if match:
            found.append((int(match.group(2) or 0), key, value))
    out = []
    for _, key, value in sorted(found):
        here = f"{where}[{key!r}]"
        if isinstance(value, str):
            if jagged:
                msg = f'{here} = {value!r} cuts a jagged branch: give ["{value}", "any"] or ["{value}", "all"]'
                raise ParameterError(msg)
            out.append(value.strip())
        elif isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, str) for v in value):
            expression, mode = value[0].strip(), value[1].strip().lower()
            if mode not in ("any", "all"):
                msg = f'{here}: the second item must be "any" or "all", got {value[1]!r}'
                raise ParameterError(msg)
            if jagged is False:
                msg = f"{here} = {value!r}: any/all apply to jagged branches; a flat cut is a plain string"
                raise ParameterError(msg)
            out.append(f"{mode}({expression})")
        else:
            msg = f'{here} must be a string, or ["expression", "any" | "all"] for a jagged branch; got {value!r}'
            raise ParameterError(msg)
    return out


def translate_preproc(data: Mapping[str, Any], where: str = "preproc") -> Preproc:
    """Translate the contents of a preproc.json.

    Parameters
    ----------
    data : mapping
        The parsed JSON object, with any of the sections ``new_branch``,
        ``flat_cut`` and ``jagged_cut``.
    where : str
        Name of the file, for error messages.

    Returns
    -------
    Preproc
        ``cut`` (None if there is none), ``aliases`` and ``exclude``.

    Raises
    ------
    ParameterError
        For an unknown section or key, a malformed cut, or an expression that
        does not parse (naming the section, the branch and the key).
    """
    if not isinstance(data, Mapping):
        msg = f"{where} must hold a JSON object, got {type(data).__name__}"
        raise ParameterError(msg)
    aliases: dict[str, str] = {}
    cuts: list[str] = []
    exclude: list[str] = []
    for section, entries in data.items():
        if section not in SECTIONS:
            close = difflib.get_close_matches(str(section), SECTIONS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; sections are {list(SECTIONS)}"
            msg = f"{where}: unknown section {section!r}{hint}"
            raise ParameterError(msg)
        if not isinstance(entries, Mapping):
            msg = f"{where}[{section!r}] must be an object of branch names, got {entries!r}"
            raise ParameterError(msg)
        for name, entry in entries.items():
            here = f"{where}[{section!r}][{name!r}]"
            if not isinstance(entry, Mapping):
                msg = f"{here} must be an object, got {entry!r}"
                raise ParameterError(msg)
            unknown = [k for k in entry if k not in _ENTRY_KEYS[section] and not _CUT_KEY.match(k)]
            if unknown:
                msg = f"{here}: unknown key {unknown[0]!r}; keys are {[*_ENTRY_KEYS[section], 'cut', 'cut_1', '...']}"
                raise ParameterError(msg)
            if section == "new_branch":
                if "def" not in entry:
                    msg = f'{here} needs a "def", the expression that defines the new branch'
                    raise ParameterError(msg)
                kind = entry.get("type")
                if kind not in (None, "flat", "jagged"):
                    msg = f'{here}[\'type\'] must be "flat" or "jagged", got {kind!r}'
                    raise ParameterError(msg)
                aliases[str(name)] = str(entry["def"])
                jagged = None if kind is None else kind == "jagged"
                keys = entry.get("keys_to_remove", [])
                if isinstance(keys, str):
                    keys = [keys]
                if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                    msg = f"{here}['keys_to_remove'] must be a list of branch names, got {keys!r}"
                    raise ParameterError(msg)
                exclude.extend(keys)
            else:
                jagged = section == "jagged_cut"
            cuts.extend(_cuts(entry, here, jagged))
            if _flag(entry.get("remove", False), f"{here}['remove']"):
                exclude.append(str(name))
    cut = " & ".join(f"({c})" for c in cuts) if cuts else None
    result = Preproc(cut, aliases, tuple(dict.fromkeys(exclude)))
    result.selection()  # every expression parses, no cycles
    return result


def load_preproc(path: str | os.PathLike[str]) -> Preproc:
    """Read and translate a preproc.json file (``--preproc``).

    Raises
    ------
    FileAccessError
        If the file does not exist.
    ParameterError
        If it is not valid JSON or not a valid preproc.json.
    """
    data = read_json(path, "preproc file", option="--preproc")
    return translate_preproc(data, f"--preproc {os.fspath(path)!r}")
