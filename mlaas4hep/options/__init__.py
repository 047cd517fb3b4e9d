"""The options of the faces, declared once (:class:`Options`), and what the faces make of them.

:class:`Options` (:mod:`.declared`) checks every option when made, before any
file is opened, and each step of the data path reads its own options from it.
:func:`takes_options` gives a face the signature and documentation of its
options (``inspect.signature``, ``help()``), :class:`OptionView` an attribute
per option (``seq.batch_size``) (:mod:`.faces`).
"""

from __future__ import annotations

from .declared import FACES, LAYOUTS, SUBSETS, Options
from .faces import OptionView, option_docs, takes_options

__all__ = ["FACES", "LAYOUTS", "SUBSETS", "OptionView", "Options", "option_docs", "takes_options"]
