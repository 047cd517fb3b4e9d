"""Which branches the first pass may read: each selected branch holds one kind of values in every file."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from ..errors import BranchError
from ..inputs.contents import FileInfo
from ..inputs.formats import BranchInfo
from ..inputs.sources import FileSource
from .kinds import is_usable

__all__ = ["check_kinds"]


def check_kinds(
    infos: Sequence[FileInfo], include: Sequence[str] | None, exclude: Sequence[str], *, common_branches: bool = False
) -> None:
    """Raise :class:`BranchError` if a selected branch holds other kinds of values in two files, naming both.

    ``include`` and ``exclude`` are the first pass's patterns (``include=None``:
    every branch). Fixed-size arrays of two shapes (``fixed[3]`` and
    ``fixed[4]``) are two kinds. A branch usable in some files only (strings
    in one of them, say) is no error with ``common_branches``: it is left out,
    like any branch not in every file.
    """
    first: dict[str, tuple[BranchInfo, FileSource]] = {}
    for info in infos:
        for branch in info.branches:
            name = branch.name
            if (include is not None and not any(fnmatch.fnmatchcase(name, p) for p in include)) or any(
                fnmatch.fnmatchcase(name, p) for p in exclude
            ):
                continue
            seen, where = first.setdefault(name, (branch, info.source))
            usable = is_usable(seen.kind) and is_usable(branch.kind)
            if seen.kind != branch.kind and (usable or not common_branches):
                msg = (
                    f"branch {name!r} is {seen.kind} ({seen.dtype}) in {where.path!r} but {branch.kind} "
                    f"({branch.dtype}) in {info.source.path!r}: a branch holds one kind of values in every file"
                )
                raise BranchError(msg)
