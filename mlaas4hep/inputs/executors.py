"""Running one task per file in parallel: a local thread pool, or a Dask cluster.

The first pass (:class:`~mlaas4hep.SpecBuilder`) scans every file independently
and merges the per-file results in file order. :func:`map_files` runs such a
per-file function on

* ``"threads"`` (the default): a local thread pool; uproot releases the GIL
  while it decompresses, so threads scale with the cores of one machine;
* ``"serial"``: the calling thread, one file after another;
* a :class:`concurrent.futures.Executor` (e.g. a ``ThreadPoolExecutor`` with more
  threads for remote files, or a ``ProcessPoolExecutor``);
* a ``dask.distributed.Client``, or anything with ``submit(fn, *args)`` that
  returns futures with ``result()``: a ``LocalCluster``, dask-jobqueue on
  HTCondor or Slurm, coffea-casa. Dask is an optional extra:
  ``pip install mlaas4hep[dask]``.

Results come back in the order of the inputs, whatever order the tasks finish
in, so a result that merges them in that order does not depend on the engine.

Progress: with ``progress=True`` (or ``None`` and a long scan on a terminal) a
tqdm bar counts the files done, when tqdm is installed; without tqdm, or when
the bar is off, progress is logged at INFO level by ``mlaas4hep.inputs.executors``
about every tenth of the files.
"""

from __future__ import annotations

import concurrent.futures
import functools
import importlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from ..errors import ParameterError
from .formats.decompression import chosen_zlib, use_zlib

__all__ = ["EXECUTORS", "map_files"]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

EXECUTORS = ("threads", "serial")
"""Executors named by a string; any object with ``submit`` works too."""

PROGRESS_MIN_FILES = 20
"""With ``progress=None``, scans of at least this many files show a bar (on a terminal)."""


def _is_dask(executor: Any) -> bool:
    return type(executor).__module__.split(".")[0] == "distributed"


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError as err:  # pragma: no cover - only without the extra
        msg = "a Dask executor needs dask.distributed: pip install 'mlaas4hep[dask]'"
        raise ParameterError(msg) from err
    return distributed


def _check(executor: Any) -> None:
    if executor is None or executor in EXECUTORS:
        return
    if isinstance(executor, str) or not callable(getattr(executor, "submit", None)):
        msg = (
            f"executor must be one of {EXECUTORS}, a concurrent.futures.Executor or a dask.distributed.Client "
            f"(anything with submit), got {executor!r}"
        )
        raise ParameterError(msg)


def _bar(total: int, desc: str, progress: bool | None) -> Any:
    """A tqdm bar, or None when there is to be none (or tqdm is not installed)."""
    if progress is False:
        return None
    if progress is None and (total < PROGRESS_MIN_FILES or not sys.stderr.isatty()):
        return None
    try:
        tqdm_auto: Any = importlib.import_module("tqdm.auto")  # tqdm ships no type information
    except ImportError:
        return None
    return tqdm_auto.tqdm(total=total, desc=desc, unit="file")


def _completed(futures: list[Any], executor: Any) -> Iterator[Any]:
    """The futures as they finish (in submission order for an unknown kind of future)."""
    if _is_dask(executor):
        return iter(_import_distributed().as_completed(futures))
    if all(isinstance(f, concurrent.futures.Future) for f in futures):
        return concurrent.futures.as_completed(futures)
    return iter(futures)


def map_files(
    fn: Callable[..., R],
    items: Sequence[T],
    *args: Any,
    executor: Any = None,
    progress: bool | None = None,
    desc: str = "files",
) -> list[R]:
    """Return ``[fn(item, *args) for item in items]``, computed by ``executor``.

    Parameters
    ----------
    fn : callable
        The per-file task. For Dask or a process pool it must be picklable: a
        top-level function, with picklable arguments and result.
    items : sequence
        One item per task (a :class:`~mlaas4hep.FileSource`, say).
    *args
        Passed to every call after the item.
    executor : {"threads", "serial"}, Executor, dask.distributed.Client, or None
        Where to run the tasks; None means ``"threads"``: a thread pool with one
        thread per core (at most one per item), shut down on return.
    progress : bool or None
        Show a bar over the items (tqdm); None shows one for at least
        ``PROGRESS_MIN_FILES`` items when stderr is a terminal.
    desc : str
        What the bar and the log lines call the items.

    Returns
    -------
    list
        The results in the order of ``items``. The first task to fail raises
        its exception here (the others still pending are cancelled).
    """
    _check(executor)
    items = list(items)
    if not items:
        return []
    t0 = time.perf_counter()
    bar = _bar(len(items), desc, progress)
    every = max(len(items) // 10, 1)
    level = logging.INFO if len(items) >= PROGRESS_MIN_FILES else logging.DEBUG  # a long scan's progress is news
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if bar is not None:
            bar.update(1)
        elif done % every == 0 or done == len(items):
            log.log(level, "%s: %d of %d done in %.1f s", desc, done, len(items), time.perf_counter() - t0)

    try:
        if executor == "serial" or (executor in (None, "threads") and len(items) == 1):
            results = []
            for item in items:
                results.append(fn(item, *args))
                tick()
            return results
        own = executor in (None, "threads")
        library = chosen_zlib()
        if library and not own and not isinstance(executor, concurrent.futures.ThreadPoolExecutor):
            fn = functools.partial(_with_zlib, library, fn)  # another process: the user's choice goes along
        pool: Any = (
            concurrent.futures.ThreadPoolExecutor(
                min(len(items), os.cpu_count() or 1), thread_name_prefix="mlaas4hep-scan"
            )
            if own
            else executor
        )
        extra = {"pure": False} if _is_dask(pool) else {}
        futures = [pool.submit(fn, item, *args, **extra) for item in items]
        try:
            for future in _completed(futures, pool):
                future.result()  # raises the task's error as soon as it is known
                tick()
            return [future.result() for future in futures]
        finally:
            for future in futures:
                future.cancel()
            if own:
                pool.shutdown(wait=True)
    finally:
        if bar is not None:
            bar.close()


def _with_zlib(library: str, fn: Callable[..., R], *args: Any) -> R:
    """``fn(*args)`` after choosing the ZLIB library the caller's process uses (in a process of its own)."""
    use_zlib(library)
    return fn(*args)
