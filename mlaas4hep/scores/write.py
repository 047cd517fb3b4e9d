"""Scoring files: :func:`write_scores`, one task per output file, each tree's entries scored by their model."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import uproot

from ..errors import ParameterError
from ..inputs.contents import FileInfo, inspect_file
from ..inputs.executors import map_files
from ..inputs.folds import check_fold_values, fold_cut
from ..inputs.selection import encode_mask
from ..inputs.sources import FileSource, parse_sources
from ..preprocessing import Preprocessing
from ..specs.first_pass import scan_selection
from ..specs.values import FileSpec
from ..stream.pipeline import Pipeline
from ..stream.plan import EpochPlan
from ..stream.prepare import prepare
from .folds import entry_folds, paired, warn_single_fold
from .friends import FOLD_BRANCH, FriendWriter, Job, branch_names, check_outputs, friend_name, output_paths
from .models import Scorer, in_process, output_width, resolve_model

__all__ = ["write_scores"]

log = logging.getLogger(__name__)


def write_scores(
    model: Any | Sequence[Any],
    files: str | os.PathLike[str] | Iterable[str | os.PathLike[str] | FileSource],
    *,
    preprocessing: Preprocessing | str | os.PathLike[str] | Sequence[Preprocessing | str | os.PathLike[str]],
    output_dir: str | os.PathLike[str],
    name: str = "score",
    tree: str | None = None,
    cut: str | None = None,
    batch_size: int | None = None,
    chunk_size: int = 10_000,
    prefetch: int = 2,
    executor: Any = None,
    overwrite: bool = False,
    rntuple: bool = False,
) -> list[Path]:
    """Apply ``model`` to every entry of ``files``; write its scores as friend trees in ``output_dir``.

    For each input file, a ROOT file ``output_dir/<input stem>_<name>.root``
    holds, for each of its trees given, a tree of the same name (:func:`~mlaas4hep.scores.friend_name`)
    with exactly the input tree's entries, in the same order, so that ROOT's
    ``tree->AddFriend("Events", "sig_score.root")`` and uproot can read the
    scores beside the original branches. Two trees of one file
    (``["f.root:sig", "f.root:bkg"]``) give one file ``f_score.root`` with
    the trees ``sig`` and ``bkg``.

    Parameters
    ----------
    model : keras.Model, path of a ``.keras`` file, or a list of them
        The trained model; a path is loaded (``compile=False``), here and in
        every Dask task. A live model needs an executor of this process (threads).
        A list: the ``k`` models of a k-fold training (one per fold, in any
        order, paired with ``preprocessing`` by position); each entry is
        scored by the model of its fold (``fold_by % k``), which never saw it,
        and its fold is written in a branch ``fold`` (int32) beside its score.
    files : path, URL, or sequence of them
        Input files; ``"file.root:tree"`` names the tree (``"file.root:dir/Events"``
        one in a directory). Several trees of one file may be given; one tree twice is an error.
    preprocessing : Preprocessing, path of its JSON file, or a list of them
        What turns events into the model's inputs, as saved at training
        (``RootSequence.save_preprocessing``, ``model.preprocessing.json``).
        With a list of models, one per model: folds 0 to ``k - 1`` each once,
        all of the same ``folds`` (``k``), ``fold_by`` and layout (each model
        uses its own normalization and widths, measured on its own folds). A single model whose
        preprocessing is of a fold scores every entry, those it trained on
        too, with a :class:`~mlaas4hep.errors.DataWarning`.
    output_dir : path
        A local directory (made if missing); never an input file's place under an input's name.
    name : str
        The scores' branch: ``name`` for a model with one output, ``name_0 .. name_{K-1}``
        for ``K`` outputs (a one-hot classifier). Also the suffix of the output files.
    tree : str, optional
        Tree of files that do not name one; default the tree trained on.
    cut : str, optional
        Entries where it is false get NaN (the friend keeps every entry); in
        uproot's expression language, with the preprocessing's aliases.
        Default: every entry is scored. The training cut is the preprocessing's.
        With folds, an entry that fails it gets NaN and its fold still.
    batch_size, chunk_size : int
        Events per prediction (default 1000, at most ``chunk_size``), and per chunk read (and per block written).
    prefetch : int
        Chunks read ahead in the background.
    executor : {"serial", "threads"}, Executor, dask.distributed.Client, or None
        Where the tasks (one per output file, its trees one after another) run
        (see :func:`~mlaas4hep.inputs.executors.map_files`).
        Default (None, ``"serial"``): one file after another in this process,
        each read and flattened in background threads while the model
        predicts (on a few cores, scoring files side by side only adds
        contention); ``"threads"`` or an executor score several at once.
        With Dask, give the model as a path.
    overwrite : bool
        Replace existing output files (default: an existing one is an error).
    rntuple : bool
        Write an RNTuple instead of a TTree (ROOT's friends are TTrees).

    Returns
    -------
    list of Path
        The file holding each input's scores, in the order of ``files`` (the
        trees of one file share theirs).

    Raises
    ------
    ParameterError, BranchError, TreeError, FileAccessError, SpecsError
        Before anything is written: a file that lacks a branch the
        preprocessing reads, a model whose input size does not match, an
        output directory that cannot be written, an existing output, a tree given twice,
        models that are not one k-fold set (a fold missing or twice, another ``folds``,
        ``fold_by`` or input shape, an unfolded preprocessing among them)...

    Examples
    --------
    >>> from mlaas4hep import write_scores
    >>> path = "model.preprocessing.json"
    >>> write_scores("model.keras", ["data.root"], preprocessing=path, output_dir="scores")  # doctest: +SKIP
    [PosixPath('scores/data_score.root')]
    >>> trees = ["f.root:sig_tree", "f.root:bkg_tree"]
    >>> write_scores("model.keras", trees, preprocessing=path, output_dir="scores")  # doctest: +SKIP
    [PosixPath('scores/f_score.root'), PosixPath('scores/f_score.root')]
    >>> models = [f"model_fold{j}.keras" for j in range(5)]
    >>> recipes = [f"model_fold{j}.preprocessing.json" for j in range(5)]
    >>> write_scores(models, ["data.root"], preprocessing=recipes, output_dir="scores")  # doctest: +SKIP
    [PosixPath('scores/data_score.root')]
    """
    models, loaded = paired(model, preprocessing)
    if batch_size is None:
        batch_size = min(1000, chunk_size) if isinstance(chunk_size, int) and chunk_size > 0 else 1000
    if not isinstance(name, str) or not name.isidentifier() or (len(models) > 1 and name == FOLD_BRANCH):
        msg = f"name must be a branch name (letters, digits and _) other than {FOLD_BRANCH!r}, got {name!r}"
        raise ParameterError(msg)
    kwargs = {"batch_size": batch_size, "chunk_size": chunk_size, "prefetch": prefetch}
    first = loaded[0].options(cut=cut, tree=tree, **kwargs)
    cuts = [fold_cut(cut, p, test=True) if len(loaded) > 1 else cut for p in loaded]  # each model's events
    options = [p.options(cut=c, tree=first.tree, **kwargs) for p, c in zip(loaded, cuts, strict=True)]
    sources = parse_sources(files, first.tree)
    if not sources:
        msg = "no input files given"
        raise ParameterError(msg)
    outputs = output_paths(sources, output_dir, name)
    check_outputs(sources, outputs, output_dir, overwrite)
    resolved, width = _checked_models(models, loaded, executor)
    infos = map_files(inspect_file, sources, executor=executor, desc="files")
    for info in infos:
        for p, o in zip(loaded, options, strict=True):
            p.check_file(info, o.cut)
    if len(loaded) > 1:
        p = loaded[0]
        check_fold_values(
            sources, infos, SimpleNamespace(folds=p.folds, fold_by=p.fold_by, aliases=p.aliases, timeout=first.timeout)
        )
    elif loaded[0].folds is not None:
        given = preprocessing[0] if isinstance(preprocessing, (list, tuple)) else preprocessing
        warn_single_fold(loaded[0], repr(os.fspath(given)) if isinstance(given, (str, os.PathLike)) else "given")
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    share = in_process(executor)
    branches = branch_names(name, width)
    scorers = tuple(
        Scorer(p, o, branches, bool(rntuple), path, cut=cut, model=live if share else None)
        for p, o, (live, path) in zip(loaded, options, resolved, strict=True)
    )
    groups: dict[Path, list[FileInfo]] = {}
    for info, output in zip(infos, outputs, strict=True):
        groups.setdefault(output, []).append(info)  # the trees of one file (checked: no other file's)
    jobs = [Job(tuple(group), output) for output, group in groups.items()]
    map_files(_score_file, jobs, scorers, executor="serial" if executor is None else executor, desc="scores")
    return outputs


def _checked_models(
    models: Sequence[Any], loaded: Sequence[Preprocessing], executor: Any
) -> tuple[list[tuple[Any, str | None]], int]:
    """Each model loaded (and its path) and checked against its preprocessing; their one output width."""
    resolved, widths = [], []
    for position, (model, p) in enumerate(zip(models, loaded, strict=True)):
        try:
            live, path = resolve_model(model, executor)
            widths.append(output_width(live, p))
        except ParameterError as err:
            if len(models) == 1:
                raise
            msg = f"model[{position}] (of fold {p.fold}): {err}"
            raise ParameterError(msg) from None
        resolved.append((live, path))
    if len(set(widths)) > 1:
        msg = f"the models give {widths} scores per event (by position): the models of one training give as many"
        raise ParameterError(msg)
    return resolved, widths[0]


def _score_file(job: Job, scorers: tuple[Scorer, ...]) -> Path:
    """Score the trees of one input file into ``job.output``: one temporary file, renamed into place when complete."""
    tmp = job.output.with_name(f".{job.output.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with uproot.recreate(tmp) as out:
            for info in job.infos:
                _score_tree(info, out, scorers)
        os.replace(tmp, job.output)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("wrote %s (%s)", job.output, ", ".join(friend_name(info.source.tree) for info in job.infos))
    return job.output


def _score_tree(info: FileInfo, out: Any, scorers: tuple[Scorer, ...]) -> None:
    """Score one input tree into its friend in the open output file ``out``: each entry by its fold's model."""
    source, entries = info.source, info.entries
    first = scorers[0]
    selection = first.preprocessing.selection(first.cut)
    mask = scan_selection([source], selection)[0] if selection.cut is not None else None
    folds = None if len(scorers) == 1 else entry_folds(source, first.preprocessing, first.options.timeout)
    block = first.options.chunk_size if first.options.chunk_size > 0 else max(entries, 1)
    types: dict[str, Any] = {branch: np.float32 for branch in first.branches}
    if folds is not None:
        types[FOLD_BRANCH] = np.int32
    name = friend_name(source.tree)
    made = out.mkrntuple(name, types) if first.rntuple else out.mktree(name, types)
    with contextlib.ExitStack() as stack:
        parts: list[tuple[np.ndarray | None, Iterator[np.ndarray]]] = []
        for scorer in scorers:
            ours = mask if folds is None else (folds == scorer.preprocessing.fold) & (True if mask is None else mask)
            n_events = entries if ours is None else int(np.count_nonzero(ours))
            batches = _predictions(source, entries, ours, scorer) if n_events else iter(())
            stack.callback(getattr(batches, "close", lambda: None))  # its pipeline, closed on the way out
            parts.append((ours, batches))
        FriendWriter(made, first.branches, entries, block, folds).write(parts)
    n_scored = entries if mask is None else int(np.count_nonzero(mask))
    log.info("scored %d of the %d entries of %s into its friend %r", n_scored, entries, source, name)


def _predictions(source: FileSource, entries: int, mask: np.ndarray | None, scorer: Scorer) -> Iterator[np.ndarray]:
    """The scores of the events of ``source`` (those where ``mask`` is true), batch by batch, in order."""
    options = scorer.options
    if mask is not None:  # the cut's result for this file, recorded as the specs record it: not evaluated again
        selection = scorer.preprocessing.selection(options.cut)
        file = FileSpec(source.location, source.tree, entries, selected=int(mask.sum()), mask=encode_mask(mask))
        specs = replace(scorer.preprocessing.specs, files=(file,), selection=selection.to_dict())
        options = replace(options, specs=specs)
    prepared = prepare([source], None, options)
    assert options.seed is not None  # filled in by Options
    plan = EpochPlan(prepared.plan.sizes, batch_size=options.batch_size, shuffle=False, seed=options.seed, epochs=1)
    pipeline = Pipeline(prepared, plan)
    try:
        for slot in range(plan.batches):
            batch = pipeline.batch(0, slot)
            yield scorer.predict(batch.inputs, len(batch))
    finally:
        pipeline.close()
