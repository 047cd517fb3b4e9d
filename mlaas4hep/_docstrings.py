"""Private helpers: the Parameters section of numpy-style docstrings, read and written.

:class:`~mlaas4hep.options.Options` documents each option once, in its
docstring; the faces' signatures and ``help()`` text are made from it.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence

__all__ = ["docstring_parameters", "with_parameters"]


def docstring_parameters(doc: str | None) -> dict[str, tuple[str, list[str]]]:
    """The entries of the Parameters section of the numpy-style docstring ``doc``: name -> (type, lines of text).

    Examples
    --------
    >>> docstring_parameters("Add.\\n\\nParameters\\n----------\\nn : int\\n    How many.\\n")
    {'n': ('int', ['How many.'])}
    """
    lines = inspect.cleandoc(doc or "").splitlines()
    entries: dict[str, tuple[str, list[str]]] = {}
    start = lines.index("Parameters") + 2 if "Parameters" in lines else len(lines)
    for i in range(start, len(lines)):
        line = lines[i]
        if i + 1 < len(lines) and line and set(lines[i + 1]) == {"-"}:
            break  # the next section
        if line and not line.startswith(" "):  # "name : type"
            name, _, kind = line.partition(" : ")
            entries[name] = (kind, [])
        elif line and entries:
            entries[next(reversed(entries))][1].append(line.strip())
    return entries


def with_parameters(doc: str | None, after: str, entries: Mapping[str, tuple[str, Sequence[str]]]) -> str | None:
    """``doc`` with ``entries`` (name -> (type, lines of text)) in its Parameters section, after the entry ``after``.

    Examples
    --------
    >>> print(with_parameters("f\\n\\nParameters\\n----------\\n**kw\\n    More.\\n", "**kw", {"n": ("int", ["N."])}))
    f
    <BLANKLINE>
    Parameters
    ----------
    **kw
        More.
    n : int
        N.
    """
    if doc is None:
        return None
    lines = doc.splitlines()
    mark = next((i for i, line in enumerate(lines) if line.strip().partition(" ")[0] == after), None)
    if mark is None:
        msg = f"the docstring has no parameter {after!r} to add the parameters after"
        raise ValueError(msg)
    indent = lines[mark][: len(lines[mark]) - len(lines[mark].lstrip())]
    end = mark + 1
    while end < len(lines) and lines[end].startswith(indent + " "):  # the description of ``after``
        end += 1
    added: list[str] = []
    for name, (kind, text) in entries.items():
        added += [f"{indent}{name} : {kind}" if kind else f"{indent}{name}", *(f"{indent}    {t}" for t in text)]
    return "\n".join([*lines[:end], *added, *lines[end:]])
