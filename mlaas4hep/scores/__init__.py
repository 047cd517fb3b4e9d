"""Scoring: a trained model applied to ROOT files, its scores written back beside the input trees.

:func:`write_scores` is the inference face of the data path. For each input
tree it prepares a :class:`~mlaas4hep.stream.prepare.PreparedData` from the file and the
saved preprocessing (:class:`~mlaas4hep.preprocessing.Preprocessing`): the same
branches, aliases, normalization and widths the model was trained with, every
entry in order (``shuffle=False``, no split). The
:class:`~mlaas4hep.stream.pipeline.Pipeline` reads and flattens it chunk by chunk
in the background, the model predicts batch by batch, and the scores are
written block by block into a tree of the input tree's name with exactly its
entries, in the same order: a *friend tree* (entries that fail a cut get NaN).
Memory stays bounded by the pipeline's cached and prefetched chunks.

The trees of one input file scored in one call share one output file, one
friend tree each, named by the input tree's path in its file (``dir/Events``
stays in a directory ``dir``: :func:`friend_name`). Each output file is one
task, its trees scored one after another: the tasks run one after another by
default, or on a thread pool or a Dask cluster
(:func:`~mlaas4hep.inputs.executors.map_files`). Everything that can be checked
is checked before anything is written; each output is written to one temporary
name in the output directory and renamed into place once all its trees are
written (an error leaves nothing of it).

The ``k`` models of a k-fold training (:mod:`mlaas4hep.inputs.folds`) are
given together: each entry is scored by the model of its fold, which never
saw it, and its fold is written beside its score (:mod:`.folds`).

The modules: :mod:`.write` (:func:`write_scores` and its tasks),
:mod:`.friends` (output names, checks and the block writer), :mod:`.models`
(loading and checking the models), :mod:`.folds` (the models of k folds).
"""

from __future__ import annotations

from .friends import FOLD_BRANCH, friend_name, output_paths
from .models import MODEL_SUFFIXES
from .models import load_model as _load_model  # noqa: F401  (the name tests and older code import)
from .write import write_scores

__all__ = ["FOLD_BRANCH", "MODEL_SUFFIXES", "friend_name", "output_paths", "write_scores"]
