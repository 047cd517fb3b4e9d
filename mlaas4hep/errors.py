"""Exceptions raised by mlaas4hep.

Every error derives from :class:`MLaaS4HEPError` and also from the builtin
exception that matches it, so ``except FileNotFoundError`` keeps working.
Messages name the file, tree, branch or parameter at fault.
"""

from __future__ import annotations

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
