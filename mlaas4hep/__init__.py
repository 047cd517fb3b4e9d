"""mlaas4hep: train Keras models on ROOT files, streamed chunk by chunk.

>>> from mlaas4hep import RootSequence
>>> train = RootSequence(["sig.root", "bkg.root"], labels=[1, 0])  # doctest: +SKIP
>>> model.fit(train, epochs=5)  # doctest: +SKIP

Importing the package is light: Keras (and TensorFlow) load only when
:class:`RootSequence`, :class:`LoaderStats` or :class:`BackupAndRestore` is first used.
"""

from __future__ import annotations

import logging
from typing import Any

from .deploy import export
from .errors import (
    BranchError,
    DataWarning,
    FileAccessError,
    MLaaS4HEPError,
    ParameterError,
    SkippedBranchWarning,
    SpecsError,
    SpecsMismatchWarning,
    TreeError,
    reraise,
)
from .inputs.formats.decompression import use_zlib, zlib_library
from .inputs.selection import Selection
from .inputs.sources import FileSource
from .preprocessing import Preprocessing
from .scores import write_scores
from .specs.first_pass import SpecBuilder
from .specs.values import BranchSpec, Specs
from .stream.plan import ChunkPlan
from .stream.reader import ChunkReader
from .transform.flatten import JaggedFlattener
from .workflow.preproc import load_preproc, translate_preproc

__version__ = "0.2.0"  # the one place the version is written: pyproject.toml reads it

__all__ = [
    "BackupAndRestore",
    "BranchError",
    "BranchSpec",
    "ChunkPlan",
    "ChunkReader",
    "DataWarning",
    "FileAccessError",
    "FileSource",
    "JaggedFlattener",
    "LoaderStats",
    "MLaaS4HEPError",
    "ParameterError",
    "Preprocessing",
    "RootSequence",
    "Selection",
    "SkippedBranchWarning",
    "SpecBuilder",
    "Specs",
    "SpecsError",
    "SpecsMismatchWarning",
    "TreeError",
    "__version__",
    "export",
    "load_preproc",
    "reraise",
    "translate_preproc",
    "use_zlib",
    "write_scores",
    "zlib_library",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())

# XRootD.client imported after TensorFlow crashes the process; before it, it is safe (mlaas4hep.inputs.remote)
from .inputs.remote import preload_xrootd  # noqa: E402

preload_xrootd()


def __getattr__(name: str) -> Any:
    if name == "RootSequence":  # imports Keras, so only on first use
        from .sequence import RootSequence

        return RootSequence
    if name == "BackupAndRestore":  # a Keras callback
        from .resume import BackupAndRestore

        return BackupAndRestore
    if name == "LoaderStats":  # a Keras callback
        from .loader_stats import LoaderStats

        return LoaderStats
    if name == "InputRecipe":  # the name of Preprocessing before 0.2
        import warnings

        warnings.warn("InputRecipe is now called Preprocessing", DeprecationWarning, stacklevel=2)
        return Preprocessing
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted(__all__)
