"""Branch names and patterns given by hand must each name something: a typo is an error, never a silent no-op.

``branches`` patterns are checked by :func:`~mlaas4hep.specs.first_pass.select_branches`;
:func:`check_patterns` checks the others (``exclude``, ``allow_leaks``) against
the branches of every file and the aliases. ``exclude=["Nmuon"]`` for the
branch ``NMuon`` would otherwise leave ``NMuon`` among the features without a
word.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable, Sequence

from ..errors import BranchError
from ..inputs.contents import FileInfo
from .values import DEFAULT_EXCLUDE

__all__ = ["check_patterns", "unmatched"]


def unmatched(patterns: Iterable[str], names: Iterable[str]) -> list[str]:
    """The names or glob patterns of ``patterns`` that match none of ``names``, in order.

    Examples
    --------
    >>> unmatched(["Muon_*", "Nmuon", "MET_pt"], ["NMuon", "MET_pt"])
    ['Muon_*', 'Nmuon']
    """
    known = list(dict.fromkeys(names))
    return [p for p in dict.fromkeys(patterns) if not any(fnmatch.fnmatchcase(n, p) for n in known)]


def _closest(pattern: str, names: Sequence[str]) -> list[str]:
    """Names that ``pattern`` matches but for case, or else the few that are spelled most alike."""
    folded = [n for n in names if fnmatch.fnmatchcase(n.lower(), pattern.lower())]
    return folded[:3] or difflib.get_close_matches(pattern, names, n=3)


def _where(infos: Sequence[FileInfo]) -> str:
    if len(infos) == 1:
        return str(infos[0].source)
    return f"any of the {len(infos)} files ({infos[0].source}, ...)"


def check_patterns(
    patterns: Iterable[str],
    infos: Sequence[FileInfo],
    aliases: Iterable[str],
    what: str,
    *,
    exempt: Iterable[str] = DEFAULT_EXCLUDE,
) -> None:
    """Raise :class:`BranchError` for a name or pattern of option ``what`` that matches no branch nor alias.

    A name or pattern may match a branch of any of the files (of any kind, also
    one skipped as a string) or an alias. The names in ``exempt`` are not
    checked: by default the event identifiers ``run``, ``event`` and
    ``luminosityBlock``, left out by default and lacking from many files.

    Parameters
    ----------
    patterns : iterable of str
        Names or glob patterns (``"Muon_*"``), as the user gave them.
    infos : sequence of FileInfo
        The files, described by :func:`~mlaas4hep.inputs.contents.inspect_file`.
    aliases : iterable of str
        The names of the aliases.
    what : str
        The option, for the message: ``"exclude"``, ``"allow_leaks"``.
    exempt : iterable of str
        Names never checked.

    Examples
    --------
    >>> from mlaas4hep.inputs.formats import BranchInfo
    >>> from mlaas4hep.inputs.sources import FileSource
    >>> info = FileInfo(FileSource("m.root", "Events"), 10, (BranchInfo("NMuon", "flat", "int32"),))
    >>> check_patterns(["NMuon", "run"], [info], [], "exclude")
    >>> check_patterns(["Nmuon"], [info], [], "exclude")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mlaas4hep.errors.BranchError: exclude 'Nmuon' matches no branch of m.root:Events nor an alias; did you mean ...
    """
    names = list(dict.fromkeys([*(b.name for info in infos for b in info.branches), *aliases]))
    skip = set(exempt)
    missing = [p for p in unmatched(patterns, names) if p not in skip]
    if not missing:
        return
    p = missing[0]
    close = _closest(p, names)
    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else "."
    more = f" (and {len(missing) - 1} more: {missing[1:]})" if len(missing) > 1 else ""
    msg = (
        f"{what} {p!r}{more} matches no branch of {_where(infos)} nor an alias{hint} "
        "A name that matches nothing does nothing: correct it or remove it"
    )
    raise BranchError(msg)
