"""The command line's quiet Keras import: TensorFlow's start-up lines hidden, for the commands' own runs only.

TensorFlow prints C++ and absl log lines when it is first imported (oneDNN
notes, CUDA drivers looked for, absl's ``InitializeLog`` warning). The
``mlaas4hep`` and ``workflow`` commands import Keras through
:func:`import_keras` before any work, so that their output is theirs alone.

These functions set environment variables, absl's verbosity and, for a moment,
the process's file descriptor 2: only :mod:`mlaas4hep.workflow.cli` calls them.
Library calls (:func:`~mlaas4hep.workflow.run.run_workflow`,
:func:`~mlaas4hep.write_scores`) import Keras plainly and leave the process's
settings as they are.
"""

from __future__ import annotations

import os
import sys
from typing import Any

__all__ = ["import_keras", "quiet_tensorflow"]


def quiet_tensorflow(verbose: int = 0) -> None:
    """Silence TensorFlow's C++ and absl logging before Keras is imported.

    Parameters
    ----------
    verbose : int
        Below 2, TensorFlow's C++ log level is set to 3 (errors only) unless
        ``TF_CPP_MIN_LOG_LEVEL`` is already set, and absl logs errors only; at 2
        and above both are left at their defaults. ``KERAS_BACKEND`` defaults
        to ``tensorflow``.

    Examples
    --------
    >>> quiet_tensorflow(0)  # doctest: +SKIP
    >>> os.environ["TF_CPP_MIN_LOG_LEVEL"]  # doctest: +SKIP
    '3'
    """
    if verbose < 2:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    try:
        import absl.logging
    except ImportError:  # absl comes with TensorFlow; without it there is nothing to silence
        return
    absl.logging.set_verbosity(absl.logging.ERROR if verbose < 2 else absl.logging.INFO)


def import_keras(verbose: int = 0) -> Any:
    """Import Keras (and TensorFlow) after :func:`quiet_tensorflow`, hiding TensorFlow's start-up lines.

    TensorFlow's C++ start-up messages ignore ``TF_CPP_MIN_LOG_LEVEL`` in
    recent releases; below ``verbose`` 2 the process's stderr is sent to
    /dev/null while Keras is first imported. Python exceptions still propagate.

    Parameters
    ----------
    verbose : int
        The command's verbosity: 0 and 1 quiet, 2 and above TensorFlow's own lines.

    Returns
    -------
    module
        :mod:`keras`.

    Examples
    --------
    >>> keras = import_keras(verbose=1)  # doctest: +SKIP
    """
    quiet_tensorflow(verbose)
    if verbose >= 2 or "tensorflow" in sys.modules:
        import keras

        return keras
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2 to silence
        import keras

        return keras
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                import keras
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)
    return keras
