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
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import uproot

from .errors import MLaaS4HEPError, ParameterError
from .inputs.contents import FileInfo, inspect_file
from .inputs.executors import map_files
from .inputs.selection import encode_mask
from .inputs.sources import FileSource, parse_sources
from .options import Options
from .preprocessing import Preprocessing
from .specs.first_pass import scan_selection
from .specs.values import FileSpec
from .stream.pipeline import Pipeline
from .stream.plan import EpochPlan
from .stream.prepare import prepare

__all__ = ["friend_name", "output_paths", "write_scores"]

log = logging.getLogger(__name__)

MODEL_SUFFIXES = (".keras", ".h5")
"""Suffixes of the model files :func:`write_scores` loads."""


def output_paths(sources: Sequence[FileSource], output_dir: str | os.PathLike[str], name: str) -> list[Path]:
    """Where the scores of each input go: ``output_dir / "<input stem>_<name>.root"``.

    The trees of one file share its output (one friend tree each).

    Examples
    --------
    >>> [p.name for p in output_paths([FileSource("data/sig.root")], "out", "score")]
    ['sig_score.root']
    """
    return [Path(output_dir) / f"{PurePosixPath(s.path.split('?')[0]).stem}_{name}.root" for s in sources]


def friend_name(tree: str) -> str:
    """The name of an input tree's friend in the output file: its path in its file, no cycle, no outer ``/``.

    A tree in a directory keeps it (``dir/Events`` is the tree ``Events`` of a
    directory ``dir``), as ``AddFriend("dir/Events", "f_score.root")`` looks for it.

    Examples
    --------
    >>> friend_name("Events"), friend_name("/dir/Events;1")
    ('Events', 'dir/Events')
    """
    return "/".join(part for part in re.sub(r";\d+$", "", tree).split("/") if part)


@dataclass(frozen=True)
class _Job:
    """One output file to write: the input trees of one file that it holds (as inspected), in order."""

    infos: tuple[FileInfo, ...]
    output: Path


@dataclass
class _Scorer:
    """The model and how to apply it, as every task needs it.

    In this process (threads) the loaded model is shared and its calls are
    serialized; a pickled copy (a Dask task) carries only the model's path and
    loads the model when first used.
    """

    preprocessing: Preprocessing
    options: Options
    branches: tuple[str, ...]
    rntuple: bool
    model_path: str | None
    model: Any = field(default=None)
    lock: Any = field(default_factory=threading.Lock)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "model": None, "lock": None}

    def loaded(self) -> Any:
        """The model, loaded from its path on first use in this process."""
        if self.model is None:
            assert self.model_path is not None  # a live model is never pickled (checked by write_scores)
            self.model = _load_model(self.model_path)
        return self.model

    def predict(self, x: Any, n: int) -> np.ndarray:
        """The model's scores of one batch of ``n`` events, shape ``(n, len(branches))``."""
        model = self.loaded()
        with self.lock if self.lock is not None else contextlib.nullcontext():
            out = model.predict_on_batch(x)
        return np.asarray(_single_output(out), dtype=np.float32).reshape(n, len(self.branches))


def _load_model(path: str | os.PathLike[str]) -> Any:
    import keras  # a library call: Keras is imported as it is, its logging left to the user

    log.info("loading the model %s", os.fspath(path))
    return keras.models.load_model(path, compile=False)


def _in_process(executor: Any) -> bool:
    """Whether the tasks run in threads of this process (where a live model can be shared)."""
    if executor is None or isinstance(executor, concurrent.futures.ThreadPoolExecutor):
        return True
    return isinstance(executor, str) and executor in ("threads", "serial")


def _resolve_model(model: Any, executor: Any) -> tuple[Any, str | None]:
    """The model loaded here (for the checks and threads), and its path (for tasks elsewhere)."""
    if not isinstance(model, (str, os.PathLike)):
        if not _in_process(executor):
            msg = (
                f"with executor={executor!r} the tasks run in other processes: give the model as the path "
                f"of its {'/'.join(MODEL_SUFFIXES)} file (model.save(path)), which each task loads"
            )
            raise ParameterError(msg)
        if not callable(getattr(model, "predict_on_batch", None)):
            msg = (
                f"model must be a Keras model or the path of a saved one, got a {type(model).__module__}."
                f"{type(model).__name__} (no predict_on_batch); for a PyTorch module, export it to ONNX or score "
                "its batches with mlaas4hep.torch.RootDataset"
            )
            raise ParameterError(msg)
        return model, None
    path = Path(model)
    if path.suffix not in MODEL_SUFFIXES or not path.is_file():
        found = "not found" if not path.exists() else f"is not a {' or '.join(MODEL_SUFFIXES)} file"
        msg = f"model {os.fspath(model)!r} {found}"
        raise ParameterError(msg)
    return _load_model(path), str(path.resolve())


def _output_width(model: Any, preprocessing: Preprocessing) -> int:
    """How many scores the model gives per event, checking that it takes the preprocessing's inputs."""
    spec = preprocessing.input_spec
    features = preprocessing.num_features
    try:
        inputs = list(model.inputs)  # functional and sequential models; a subclassed one may not know them
    except (AttributeError, TypeError, ValueError):
        inputs = []
    expected = tuple(spec)
    if inputs and len(inputs) != len(expected):
        msg = f"the model takes {len(inputs)} inputs; the preprocessing makes {len(expected)}: {expected}"
        raise ParameterError(msg)
    sizes = [t.shape[-1] for t in inputs if t.shape and t.shape[-1] is not None]
    if preprocessing.layout == "flat" and any(int(size) != features for size in sizes):
        msg = (
            f"the model takes inputs of {sizes[0]} features, but the preprocessing makes {features} "
            f"({len(preprocessing.branches)} branches): was it trained with this preprocessing?"
        )
        raise ParameterError(msg)
    zeros = {name: np.zeros((1, *shape), dtype=np.float32) for name, (shape, _) in spec.items()}
    try:
        out = model.predict_on_batch(zeros if len(zeros) > 1 or preprocessing.layout != "flat" else zeros["features"])
    except (ValueError, TypeError) as err:
        msg = f"the model cannot take the preprocessing's inputs ({features} features): {err}"
        raise ParameterError(msg) from err
    out = np.asarray(_single_output(out))
    if out.ndim > 2 or out.shape[0] != 1:
        msg = f"the model gives scores of shape {out.shape[1:]} per event; expected one number or one per class"
        raise ParameterError(msg)
    return 1 if out.ndim == 1 else int(out.shape[1])


def _single_output(out: Any) -> Any:
    """The one output of a model's prediction (a named output comes in a dict or a list of one)."""
    if isinstance(out, (list, tuple, dict)):
        if len(out) != 1:
            msg = f"the model has {len(out)} outputs; scores are written for a model with one output"
            raise ParameterError(msg)
        return next(iter(out.values())) if isinstance(out, dict) else out[0]
    return out


def _check_outputs(
    sources: Sequence[FileSource], outputs: Sequence[Path], output_dir: str | os.PathLike[str], overwrite: bool
) -> None:
    """The output directory can be written; no output overwrites an input or (unasked) a file; no tree is given twice.

    The trees of one input file share its output; two files never share one.
    """
    directory = Path(output_dir)
    if "://" in os.fspath(output_dir):
        msg = f"output_dir {os.fspath(output_dir)!r} must be a local directory"
        raise ParameterError(msg)
    existing = next(p for p in (directory, *directory.resolve().parents) if p.exists())
    if not existing.is_dir():
        msg = f"output_dir {os.fspath(output_dir)!r} cannot be made: {os.fspath(existing)!r} is not a directory"
        raise ParameterError(msg)
    if not os.access(existing, os.W_OK | os.X_OK):
        msg = f"output_dir {os.fspath(output_dir)!r} cannot be written: no permission to write in {str(existing)!r}"
        raise ParameterError(msg)
    inputs = {s.location: s for s in sources if not s.is_remote}
    seen: dict[Path, FileSource] = {}
    trees: dict[tuple[str, str], FileSource] = {}
    for source, output in zip(sources, outputs, strict=True):
        target = output.resolve()
        if str(target) in inputs:
            msg = (
                f"the scores of {source} would overwrite the input file {inputs[str(target)].path!r}; "
                "choose another output_dir or name"
            )
            raise ParameterError(msg)
        key = (source.location, friend_name(source.tree) if source.format == "root" else "")
        if key in trees:
            msg = f"{source.what} is given twice ({trees[key]} and {source}): each tree is scored once"
            raise ParameterError(msg)
        trees[key] = source
        if target in seen and seen[target].location != source.location:
            msg = (
                f"the scores of {seen[target]} and of {source} would both go to {os.fspath(output)!r}; "
                "score them into different output_dirs"
            )
            raise ParameterError(msg)
        if target not in seen and output.exists() and not overwrite:
            msg = f"{os.fspath(output)!r} exists; pass overwrite=True (--overwrite) to replace it"
            raise ParameterError(msg)
        seen.setdefault(target, source)


def _branch_names(name: str, width: int) -> tuple[str, ...]:
    """``name`` for one score per event, ``name_0 .. name_{K-1}`` for ``K``."""
    return (name,) if width == 1 else tuple(f"{name}_{k}" for k in range(width))


def write_scores(
    model: Any,
    files: str | os.PathLike[str] | Iterable[str | os.PathLike[str] | FileSource],
    *,
    preprocessing: Preprocessing | str | os.PathLike[str],
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
    holds, for each of its trees given, a tree of the same name (:func:`friend_name`)
    with exactly the input tree's entries, in the same order, so that ROOT's
    ``tree->AddFriend("Events", "sig_score.root")`` and uproot can read the
    scores beside the original branches. Two trees of one file
    (``["f.root:sig", "f.root:bkg"]``) give one file ``f_score.root`` with
    the trees ``sig`` and ``bkg``.

    Parameters
    ----------
    model : keras.Model, or path of a ``.keras`` file
        The trained model; a path is loaded (``compile=False``), here and in
        every Dask task. A live model needs an executor of this process (threads).
    files : path, URL, or sequence of them
        Input files; ``"file.root:tree"`` names the tree (``"file.root:dir/Events"``
        one in a directory). Several trees of one file may be given; one tree twice is an error.
    preprocessing : Preprocessing, or path of its JSON file
        What turns events into the model's inputs, as saved at training
        (``RootSequence.save_preprocessing``, ``model.preprocessing.json``).
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
        output directory that cannot be written, an existing output, a tree given twice...

    Examples
    --------
    >>> from mlaas4hep import write_scores
    >>> path = "model.preprocessing.json"
    >>> write_scores("model.keras", ["data.root"], preprocessing=path, output_dir="scores")  # doctest: +SKIP
    [PosixPath('scores/data_score.root')]
    >>> trees = ["f.root:sig_tree", "f.root:bkg_tree"]
    >>> write_scores("model.keras", trees, preprocessing=path, output_dir="scores")  # doctest: +SKIP
    [PosixPath('scores/f_score.root'), PosixPath('scores/f_score.root')]
    """
    loaded = preprocessing if isinstance(preprocessing, Preprocessing) else Preprocessing.load(preprocessing)
    if batch_size is None:
        batch_size = min(1000, chunk_size) if isinstance(chunk_size, int) and chunk_size > 0 else 1000
    options = loaded.options(cut=cut, tree=tree, batch_size=batch_size, chunk_size=chunk_size, prefetch=prefetch)
    if not isinstance(name, str) or not name.isidentifier():
        msg = f"name must be a branch name (letters, digits and _), got {name!r}"
        raise ParameterError(msg)
    sources = parse_sources(files, options.tree)
    if not sources:
        msg = "no input files given"
        raise ParameterError(msg)
    outputs = output_paths(sources, output_dir, name)
    _check_outputs(sources, outputs, output_dir, overwrite)
    live, path = _resolve_model(model, executor)
    branches = _branch_names(name, _output_width(live, loaded))
    infos = map_files(inspect_file, sources, executor=executor, desc="files")
    for info in infos:
        loaded.check_file(info, cut)
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    in_process = _in_process(executor)
    scorer = _Scorer(loaded, options, branches, bool(rntuple), path, live if in_process else None)
    groups: dict[Path, list[FileInfo]] = {}
    for info, output in zip(infos, outputs, strict=True):
        groups.setdefault(output, []).append(info)  # the trees of one file (checked: no other file's)
    jobs = [_Job(tuple(group), output) for output, group in groups.items()]
    map_files(_score_file, jobs, scorer, executor="serial" if executor is None else executor, desc="scores")
    return outputs


class _FriendWriter:
    """Scores written block by block into a tree of every entry: NaN for the entries without a score.

    ``selected`` (sorted entry numbers, None for all) says which entries the
    scores, given in order, belong to.
    """

    def __init__(self, tree: Any, branches: Sequence[str], entries: int, selected: np.ndarray | None, block: int):
        self.tree, self.branches, self.entries, self.selected, self.block = tree, branches, entries, selected, block
        self.start = 0  # first entry not written yet
        self.used = 0  # scores written so far
        self.pending: list[np.ndarray] = []
        self.have = 0  # scores given and not written yet

    def add(self, scores: np.ndarray) -> None:
        """The next scores, in entry order."""
        self.pending.append(scores)
        self.have += len(scores)
        self._flush(final=False)

    def finish(self) -> None:
        """Write the rest (every score must have been given)."""
        self._flush(final=True)
        if self.have:
            msg = f"got {self.used + self.have} scores for {self.used} events"
            raise MLaaS4HEPError(msg)

    def _flush(self, *, final: bool) -> None:
        while self.start < self.entries:
            stop = min(self.start + self.block, self.entries)
            need = stop - self.start if self.selected is None else int(np.searchsorted(self.selected, stop)) - self.used
            if need > self.have:
                if final:
                    msg = f"got {self.used + self.have} scores for {self.used + need} events"
                    raise MLaaS4HEPError(msg)
                return
            scores = self._take(need)
            values = np.full((stop - self.start, len(self.branches)), np.nan, dtype=np.float32)
            rows = slice(None) if self.selected is None else self.selected[self.used : self.used + need] - self.start
            values[rows] = scores
            self.tree.extend({b: values[:, j] for j, b in enumerate(self.branches)})
            self.start, self.used = stop, self.used + need

    def _take(self, n: int) -> np.ndarray:
        """The next ``n`` scores given."""
        if not n:
            return np.zeros((0, len(self.branches)), dtype=np.float32)
        scores = np.concatenate(self.pending) if len(self.pending) != 1 else self.pending[0]
        self.pending = [scores[n:]] if n < len(scores) else []
        self.have -= n
        return scores[:n]


def _score_file(job: _Job, scorer: _Scorer) -> Path:
    """Score the trees of one input file into ``job.output``: one temporary file, renamed into place when complete."""
    tmp = job.output.with_name(f".{job.output.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with uproot.recreate(tmp) as out:
            for info in job.infos:
                _score_tree(info, out, scorer)
        os.replace(tmp, job.output)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("wrote %s (%s)", job.output, ", ".join(friend_name(info.source.tree) for info in job.infos))
    return job.output


def _score_tree(info: FileInfo, out: Any, scorer: _Scorer) -> None:
    """Score one input tree into its friend in the open output file ``out``."""
    source, entries = info.source, info.entries
    selection = scorer.preprocessing.selection(scorer.options.cut)
    mask = scan_selection([source], selection)[0] if selection.cut is not None else None
    selected = None if mask is None else np.flatnonzero(mask)
    n_events = entries if selected is None else len(selected)
    block = scorer.options.chunk_size if scorer.options.chunk_size > 0 else max(entries, 1)
    types = {branch: np.float32 for branch in scorer.branches}
    name = friend_name(source.tree)
    made = out.mkrntuple(name, types) if scorer.rntuple else out.mktree(name, types)
    writer = _FriendWriter(made, scorer.branches, entries, selected, block)
    if n_events:
        for scores in _predictions(source, entries, mask, scorer):
            writer.add(scores)
    writer.finish()
    log.info("scored %d of the %d entries of %s into its friend %r", n_events, entries, source, name)


def _predictions(source: FileSource, entries: int, mask: np.ndarray | None, scorer: _Scorer) -> Iterator[np.ndarray]:
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
