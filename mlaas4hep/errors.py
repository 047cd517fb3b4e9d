"""Exceptions raised by mlaas4hep.

Every error derives from :class:`MLaaS4HEPError` and also from the builtin
exception that matches it, so ``except FileNotFoundError`` keeps working.
Messages name the file, tree, branch or parameter at fault.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = [
    "BranchError",
    "DataWarning",
    "FileAccessError",
    "MLaaS4HEPError",
    "ParameterError",
    "SkippedBranchWarning",
    "SpecsError",
    "SpecsMismatchWarning",
    "TreeError",
    "reraise",
    "reraise_from",
]


class MLaaS4HEPError(Exception):
    """Base class of every error raised by mlaas4hep."""


class FileAccessError(MLaaS4HEPError, FileNotFoundError):
    """A file is missing, unreadable, or not a ROOT file."""


class TreeError(MLaaS4HEPError, KeyError):
    """A tree is missing from a file, is not a TTree/RNTuple, or is empty."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class BranchError(MLaaS4HEPError, KeyError):
    """A branch is missing, unsupported, or cannot be used as asked."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ParameterError(MLaaS4HEPError, ValueError):
    """A parameter has a value that cannot work."""


class SpecsError(MLaaS4HEPError, ValueError):
    """A specs file is corrupt, or does not describe the files or branches used."""


class SkippedBranchWarning(UserWarning):
    """Branches were left out because they cannot become fixed-width numeric features."""


class SpecsMismatchWarning(UserWarning):
    """A specs file did not match the input files and was rebuilt, or could not be verified."""


class DataWarning(UserWarning):
    """The data will train a model, but likely not as meant: a branch with no finite value, an oversized chunk."""


@contextlib.contextmanager
def reraise(*sequences: Any) -> Iterator[None]:
    """Raise the library's own error when ``fit`` (or ``evaluate``, ``predict``) fails while reading.

    The TensorFlow backend hands ``fit``'s caller an ``UnknownError`` of its own
    for any error raised while a batch is read: within this block, the
    :class:`~mlaas4hep.errors.MLaaS4HEPError` that a sequence raised (a
    :class:`~mlaas4hep.errors.FileAccessError` naming the file, say) is raised
    instead, chained to TensorFlow's. The other backends raise it as it is.

    Examples
    --------
    >>> from mlaas4hep import reraise
    >>> with reraise(train, val):  # doctest: +SKIP
    ...     model.fit(train, validation_data=val, epochs=5)
    """
    try:
        yield
    except Exception as err:
        reraise_from(err, sequences)
        raise


def reraise_from(error: BaseException | None, sequences: Iterable[Any]) -> None:
    """Raise the last error one of ``sequences`` kept (``last_error``) from ``error``, unless that is the library's."""
    if error is None or isinstance(error, MLaaS4HEPError):
        return
    for seq in sequences:
        if seq.last_error is not None:
            raise seq.last_error from error
