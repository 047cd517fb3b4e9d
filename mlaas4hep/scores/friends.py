"""The friend trees: where they go, what they are named, and how their entries are written block by block."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ..errors import MLaaS4HEPError, ParameterError
from ..inputs.contents import FileInfo
from ..inputs.sources import FileSource

__all__ = ["FOLD_BRANCH", "FriendWriter", "Job", "branch_names", "check_outputs", "friend_name", "output_paths"]

FOLD_BRANCH = "fold"
"""The branch of each entry's fold, written beside the scores of the models of a k-fold training."""


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
class Job:
    """One output file to write: the input trees of one file that it holds (as inspected), in order."""

    infos: tuple[FileInfo, ...]
    output: Path


def check_outputs(
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


def branch_names(name: str, width: int) -> tuple[str, ...]:
    """``name`` for one score per event, ``name_0 .. name_{K-1}`` for ``K``."""
    return (name,) if width == 1 else tuple(f"{name}_{k}" for k in range(width))


class _Scores:
    """The scores of one model, pulled from its batches as the blocks need them."""

    def __init__(self, batches: Iterator[np.ndarray], width: int):
        self.batches, self.width = batches, width
        self.pending: list[np.ndarray] = []
        self.have = 0  # scores pulled and not taken yet
        self.taken = 0

    def take(self, n: int) -> np.ndarray:
        """The next ``n`` scores, in entry order."""
        while self.have < n:
            batch = next(self.batches, None)
            if batch is None:
                msg = f"got {self.taken + self.have} scores for {self.taken + n} events"
                raise MLaaS4HEPError(msg)
            self.pending.append(batch)
            self.have += len(batch)
        if not n:
            return np.zeros((0, self.width), dtype=np.float32)
        scores = np.concatenate(self.pending) if len(self.pending) != 1 else self.pending[0]
        self.pending = [scores[n:]] if n < len(scores) else []
        self.have -= n
        self.taken += n
        return scores[:n]

    def finish(self) -> None:
        """Raise unless every score was taken."""
        extra = self.have + sum(len(batch) for batch in self.batches)
        if extra:
            msg = f"got {self.taken + extra} scores for {self.taken} events"
            raise MLaaS4HEPError(msg)


@dataclass
class FriendWriter:
    """Every entry of a tree written block by block: each its model's score, NaN where none; its fold.

    Each part is a model's scores (batches, in entry order) and which entries
    they belong to (a boolean mask; None: every entry). The parts' masks are
    disjoint; an entry in none gets NaN. ``folds`` (each entry's fold, or
    None) is written as :data:`FOLD_BRANCH`.
    """

    tree: Any
    branches: Sequence[str]
    entries: int
    block: int
    folds: np.ndarray | None = None

    def write(self, parts: Sequence[tuple[np.ndarray | None, Iterator[np.ndarray]]]) -> None:
        """Pull the parts' scores and write every entry; raise if a part gives too few or too many."""
        pulled = [(mask, _Scores(batches, len(self.branches))) for mask, batches in parts]
        for start in range(0, self.entries, self.block):
            stop = min(start + self.block, self.entries)
            values = np.full((stop - start, len(self.branches)), np.nan, dtype=np.float32)
            for mask, scores in pulled:
                if mask is None:
                    values[:] = scores.take(stop - start)
                else:
                    rows = mask[start:stop]
                    values[rows] = scores.take(int(np.count_nonzero(rows)))
            data = {b: values[:, j] for j, b in enumerate(self.branches)}
            if self.folds is not None:
                data[FOLD_BRANCH] = self.folds[start:stop].astype(np.int32)
            self.tree.extend(data)
        for _, scores in pulled:
            scores.finish()
