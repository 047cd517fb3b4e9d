"""The plotting libraries, imported in one place: a missing one is an ImportError that says what to install.

matplotlib draws, :mod:`hist` fills the histograms and :mod:`mplhep` draws
them; all three come with ``pip install 'mlaas4hep[plot]'``. Figures are
:class:`matplotlib.figure.Figure` objects, never registered with pyplot.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from typing import Any

__all__ = ["INSTALL_HINT", "figure", "require", "save"]

log = logging.getLogger(__name__)

INSTALL_HINT = "plotting needs matplotlib, hist and mplhep: pip install 'mlaas4hep[plot]'"


def require(*modules: str) -> None:
    """Import the plotting libraries named (matplotlib by default), or raise an ImportError that says what to install.

    Examples
    --------
    >>> require("matplotlib", "hist", "mplhep")  # doctest: +SKIP
    """
    for name in modules or ("matplotlib",):
        try:
            importlib.import_module(name)
        except ImportError as err:
            msg = f"{INSTALL_HINT} ({name} is missing)"
            raise ImportError(msg) from err


def figure(**kwargs: Any) -> Any:
    """A new matplotlib Figure (not registered with pyplot), with ``kwargs`` as ``Figure`` takes them.

    Examples
    --------
    >>> fig = figure(figsize=(5, 4), layout="constrained")  # doctest: +SKIP
    """
    require()
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def save(fig: Any, path: str | os.PathLike[str] | None) -> None:
    """Write ``fig`` to ``path`` (its format from the suffix), creating the directory; nothing for None."""
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
        log.debug("wrote %s", path)
