"""What the faces make of the options' declaration: their signatures, documentation and attributes.

:func:`takes_options` gives a face the signature and documentation of its
options (``inspect.signature``, ``help()``), :class:`OptionView` an
attribute per option (``seq.batch_size``), both from :class:`Options`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, TypeVar

from .._docstrings import docstring_parameters, with_parameters
from .declared import Options

__all__ = ["OptionView", "option_docs", "takes_options"]

C = TypeVar("C", bound=type)


@functools.cache
def option_docs() -> dict[str, tuple[str, list[str]]]:
    """Each option's type and lines of text, from the docstring of :class:`Options` (none with ``python -OO``)."""
    return docstring_parameters(Options.__doc__)


def takes_options(cls: C) -> C:
    """Class decorator of a face whose ``__init__`` takes ``**options``: the signature and docs of its options.

    ``inspect.signature(cls)``, ``help(cls)`` and Jupyter then show every option the face takes, by keyword, with its
    default, type and documentation from :class:`Options`; ``__init__`` makes them with :meth:`Options.for_face`.
    """
    names, docs = Options.names(cls.__name__), option_docs()
    init = cls.__init__  # type: ignore[misc]  # a face defines its own
    own = [p for p in inspect.signature(init).parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    options = [
        inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY, default=option.default, annotation=option.type)
        for option in dataclasses.fields(Options)
        if option.name in names
    ]
    init.__signature__ = inspect.Signature([*own, *options])
    cls.__doc__ = with_parameters(cls.__doc__, "**options", {name: docs[name] for name in names if name in docs})
    return cls


class OptionView:
    """A face's read-only attribute that is one of its options, documented with it.

    The attribute's name is the option's: ``batch_size = OptionView()`` in a
    face's class body makes ``seq.batch_size`` read ``seq.options.batch_size``.

    Examples
    --------
    >>> class Face:
    ...     batch_size = OptionView()
    ...     options = Options(batch_size=64)
    >>> Face().batch_size
    64
    """

    name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        if name not in Options.names():
            msg = f"{owner.__name__}.{name}: no option is named {name!r}"
            raise TypeError(msg)
        self.name = name
        kind, text = option_docs().get(name, ("", []))
        self.__doc__ = " ".join([f"{kind}:", *text]) if kind else None

    def __get__(self, instance: object | None, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return getattr(instance.options, self.name)  # type: ignore[attr-defined]  # a face holds its options

    def __set__(self, instance: object, value: Any) -> None:
        msg = f"{self.name} is an option, fixed when the face is made; make another with {self.name}={value!r}"
        raise AttributeError(msg)
