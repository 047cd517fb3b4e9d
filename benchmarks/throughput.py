"""Targets 1, 1f, 6, 8, 10, 11 and 12: the speed of RootSequence's epochs, alone and through Keras' data adapter.

Each fresh sequence is timed three times: its construction (cached specs), its
first epoch, which waits for the files to open and the first chunk to be read
and flattened, and its second ("steady") epoch, which is what every later epoch
of a training costs. The first epoch of target 1f is that of a fresh process,
as a user's is (imports excluded: ``fresh_child.py``); the first epoch of a
fresh sequence in this warm process is reported beside it. The epochs are
compared with a raw single-threaded ``TTree.iterate`` of the same branches of
the files already opened, inflating ZLIB baskets with ISA-L (what mlaas4hep
itself uses: the goals) and with stock zlib (what a hand-written loop gets):
both ratios are printed. The steady epoch is also timed with batches asked for
in a random order, and with worker processes, whose CPU time gives the events
per CPU-second (12). :class:`mlaas4hep.LoaderStats` says where a steady epoch's
time went.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import TREE, Config, Result, median, ratios, zlib_as

__all__ = ["adapter_epoch", "bench_collections", "bench_parallel", "bench_throughput", "epoch"]

log = logging.getLogger("benchmarks")


def _events(x: Any) -> int:
    """Events in a batch's ``x``: an array, or the collections layout's dict of arrays."""
    return len(next(iter(x.values()))) if isinstance(x, dict) else len(x)


def epoch(seq: Any) -> int:
    """One epoch, as a plain loop: ``seq[i]`` for every batch, then ``on_epoch_end``; return the events served."""
    n = 0
    seq.on_epoch_begin()
    for i in range(len(seq)):
        n += _events(seq[i][0])
    seq.on_epoch_end()
    return n


def adapter_epoch(seq: Any) -> int:
    """One epoch through Keras' ``PyDatasetAdapter`` (where ``workers`` take effect), shuffling batch indices."""
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    adapter = PyDatasetAdapter(seq, shuffle=True)
    n = 0
    adapter.on_epoch_begin()
    for batch in adapter.get_numpy_iterator():
        n += _events(batch[0])
    adapter.on_epoch_end()
    return n


def _raw_opened(cfg: Config, zlib: str = "zlib", files: list[int] | None = None) -> float:
    """Seconds of a raw ``TTree.iterate`` (library "ak", step ``chunk_size``) over the files, opened beforehand.

    ZLIB baskets are inflated with ``zlib``: ``"zlib"`` is uproot's default (what a hand-written
    loop gets), ``"isal"`` what mlaas4hep uses (the baseline of the goals).
    """
    import uproot

    opened = [uproot.open(cfg.files[i]) for i in (range(len(cfg.files)) if files is None else files)]
    try:
        trees = [f[TREE] for f in opened]
        gc.collect()
        with zlib_as(zlib):
            t0 = time.perf_counter()
            n = 0
            for tree in trees:
                for arrays in tree.iterate(filter_name=list(cfg.specs.names), step_size=cfg.chunk_size, library="ak"):
                    n += len(arrays)
            dt = time.perf_counter() - t0
    finally:
        for f in opened:
            f.close()
    assert files is not None or n == cfg.specs.n_events
    return dt


def _raw_baskets(cfg: Config) -> float:
    """Seconds of a raw single-threaded read with mlaas4hep's BasketReader (ISA-L), step ``chunk_size``."""
    from mlaas4hep.inputs.formats.root import RootTable
    from mlaas4hep.inputs.sources import FileSource

    tables = [RootTable.open(FileSource(str(path), tree=TREE)) for path in cfg.files]
    names = list(cfg.specs.names)
    try:
        gc.collect()
        with zlib_as("isal"):
            t0 = time.perf_counter()
            n = 0
            for table in tables:
                for start in range(0, table.entries, cfg.chunk_size):
                    n += len(table.arrays(names, start, min(start + cfg.chunk_size, table.entries)))
            dt = time.perf_counter() - t0
    finally:
        for table in tables:
            table.close()
    assert n == cfg.specs.n_events
    return dt


def _raw_in_processes(cfg: Config) -> float:
    """Seconds of the raw read split over one forked process per file, started together: two cores' limit."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    results = context.Queue()
    start = context.Barrier(len(cfg.files) + 1)

    def child(i: int) -> None:
        start.wait()
        results.put(_raw_opened(cfg, files=[i]))

    processes = [context.Process(target=child, args=(i,)) for i in range(len(cfg.files))]
    for process in processes:
        process.start()
    try:
        start.wait(timeout=120)
        seconds = [results.get(timeout=120) for _ in processes]
    finally:  # a child that failed or hangs is not left behind
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()
                process.join()
    return max(seconds)  # each child times its own read, files opened: the slowest is the wall


def _two_epochs(cfg: Config, run: Callable[[Any], int], **kwargs: Any) -> tuple[float, float]:
    """Seconds of the first epoch (construction included) and of the second epoch of a fresh sequence."""
    construct, first, steady, _, _ = _epochs(cfg, run, **kwargs)
    return construct + first, steady


def _epochs(
    cfg: Config, run: Callable[[Any], int], **kwargs: Any
) -> tuple[float, float, float, dict[str, float], float]:
    """Seconds to construct a fresh sequence, of its first and second epoch, LoaderStats' second epoch, its CPU."""
    from mlaas4hep import LoaderStats

    gc.collect()
    t0 = time.perf_counter()
    seq = cfg.sequence(**kwargs)
    stats = LoaderStats(seq, level=logging.DEBUG)
    try:
        t1 = time.perf_counter()
        n1 = run(seq)
        t2 = time.perf_counter()
        cpu = _cpu_seconds()
        stats.begin()
        n2 = run(seq)
        record = stats.end()
        t3 = time.perf_counter()
        cpu = _cpu_seconds() - cpu
    finally:
        seq.close()
    assert n1 == n2 == seq.n_events
    return t1 - t0, t2 - t1, t3 - t2, record, cpu


def _cpu_seconds() -> float:
    """CPU seconds of this process (every thread) and of its live child processes (the workers), from /proc."""
    total = time.process_time()
    tasks = Path("/proc/self/task")
    children: list[str] = []
    for task in tasks.iterdir() if tasks.exists() else ():
        try:
            children += (task / "children").read_text().split()
        except OSError:  # a thread that ended meanwhile
            continue
    for pid in children:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # a child that ended meanwhile
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    return total


def _fresh_process(cfg: Config) -> tuple[float, float]:
    """Construction and first epoch of a RootSequence in a fresh process (imports excluded), cached specs."""
    cfg.specs  # noqa: B018  # written to cfg.specs_path for the child
    args = [*map(str, cfg.files), str(cfg.specs_path), str(cfg.chunk_size), str(cfg.batch_size)]
    child = Path(__file__).resolve().parent / "fresh_child.py"
    done = subprocess.run([sys.executable, str(child), *args], capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        msg = f"fresh_child.py failed ({done.returncode}): {done.stderr[-2000:]}"
        raise RuntimeError(msg)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["events"] == cfg.specs.n_events
    return float(result["construct"]), float(result["first"])


def _bytes_per_event(cfg: Config) -> float:
    """Bytes of a batch's arrays (inputs, labels, weights) per event: what a loader hands the model."""
    seq = cfg.sequence(shuffle=False)
    try:
        batch = seq[0]
    finally:
        seq.close()
    arrays = [a for part in batch for a in (part.values() if isinstance(part, dict) else [part]) if a is not None]
    return float(sum(a.nbytes for a in arrays)) / _events(batch[0])


def random_epoch(seq: Any) -> int:
    """One epoch as a plain loop over the batch indices in a random order (``fit``'s default shuffle)."""
    import numpy as np

    n = 0
    seq.on_epoch_begin()
    for i in np.random.default_rng(len(seq)).permutation(len(seq)):
        n += _events(seq[int(i)][0])
    seq.on_epoch_end()
    return n


def _measure(cfg: Config, contenders: dict[str, Callable[[], Any]]) -> dict[str, list[Any]]:
    """Each contender once per repeat, alternating the order from one repeat to the next."""
    out: dict[str, list[Any]] = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(cfg.repeat):
        for name in names if r % 2 == 0 else names[::-1]:
            out[name].append(contenders[name]())
            log.info("repeat %d: %s %s", r + 1, name, out[name][-1])
    return out


def _where(record: dict[str, float]) -> str:
    """Where a steady epoch's time went, from its LoaderStats record."""
    return (
        f"waited {100 * record['wait_fraction']:.0f}% of the epoch; read {record['read_s']:.2f} s "
        f"(decompress {record['decompress_s']:.2f} s on 2 threads), flatten {record['flatten_s']:.2f} s"
    )


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def bench_throughput(cfg: Config) -> list[Result]:
    """Targets 1, 1f, 10, 11, 12: events/s of fresh RootSequences' epochs (no model) against raw ``TTree.iterate``."""
    scaling = [w for w in (2, 4, 8) if w <= max(_cores(), 2)]
    contenders: dict[str, Callable[[], Any]] = {
        "raw": lambda: _raw_opened(cfg),
        "raw, ISA-L": lambda: _raw_opened(cfg, "isal"),
        "raw, BasketReader": lambda: _raw_baskets(cfg),
        "ours": lambda: _epochs(cfg, epoch),
        "ours, fresh process": lambda: _fresh_process(cfg),
        "ours, random batch order": lambda: _epochs(cfg, random_epoch),
    }
    for w in scaling:
        contenders[f"ours, workers={w}"] = lambda w=w: _epochs(cfg, epoch, workers=w)
    if _cores() >= 2 and len(cfg.files) >= 2:
        contenders["raw, a process per file"] = lambda: _raw_in_processes(cfg)
    times = _measure(cfg, contenders)
    return (
        _epoch_results(cfg, times)
        + _order_and_workers_results(cfg, times, scaling)
        + _per_core_results(cfg, times, _bytes_per_event(cfg))
    )


def _rate(cfg: Config, seconds: list[float]) -> str:
    return f"{cfg.specs.n_events / median(seconds) / 1e3:.0f} kev/s"


def _against_raw(
    key: str,
    title: str,
    goal: float,
    ours: list[float],
    isal: list[float],
    zlib: list[float],
    detail: str,
    info: bool = False,
) -> Result:
    """A line against the raw read with ISA-L (the goal's); its detail also gives the ratio against stock zlib."""
    r_isal, r_zlib = ratios(isal, ours), ratios(zlib, ours)
    samples = " ".join(f"{s:.3g}" for s in r_zlib)
    against_zlib = f"against the raw read with zlib {median(r_zlib):.3g}x (median of [{samples}])"
    return Result(key, f"{title} (ISA-L)", median(r_isal), ">=", goal, r_isal, f"{against_zlib}; {detail}", info=info)


def _epoch_results(cfg: Config, times: dict[str, list[Any]]) -> list[Result]:
    """1, 1f, 1f', 1' and 1'': the steady epoch and the first epoch of a fresh process against both raw reads."""
    raw, isal = times["raw"], times["raw, ISA-L"]
    construct_warm, first_warm, steady = ([t[i] for t in times["ours"]] for i in range(3))
    construct, first = ([t[i] for t in times["ours, fresh process"]] for i in range(2))
    records = sorted((t[3] for t in times["ours"]), key=lambda r: r["seconds"])
    setup = f"{cfg.specs.n_events} events, {len(cfg.specs.names)} branches, step {cfg.chunk_size}"
    whole = [a + b for a, b in zip(construct, first, strict=True)]
    return [
        _against_raw(
            "1",
            "throughput: steady epoch / raw",
            1.0,
            steady,
            isal,
            raw,
            f"ours {_rate(cfg, steady)}, raw {_rate(cfg, isal)} with ISA-L, {_rate(cfg, raw)} with zlib ({setup}; "
            f"workers=1; second epoch of a fresh sequence; {_where(records[len(records) // 2])})",
        ),
        _against_raw(
            "1f",
            "first epoch of a fresh process / raw",
            0.9,
            first,
            isal,
            raw,
            f"ours {_rate(cfg, first)} (a fresh process, imports excluded, cached specs; construction "
            f"{median(construct):.2f} s, not in the ratio; see 1f' for a fresh sequence in a warm process)",
        ),
        _against_raw(
            "1f'",
            "first epoch, warm process / raw",
            0.0,
            first_warm,
            isal,
            raw,
            f"ours {_rate(cfg, first_warm)} (a fresh sequence in the harness's process, imports and caches warm; "
            f"construction {median(construct_warm):.2f} s, not in the ratio)",
            info=True,
        ),
        Result(
            "1'",
            "first epoch + construction / raw (ISA-L)",
            median(r_whole := ratios(isal, whole)),
            ">=",
            0.0,
            r_whole,
            "a fresh process: the first batch waits for the files to open and the first chunk",
            info=True,
        ),
        _decompressor_result(cfg, raw, isal),
        _baskets_result(cfg, isal, times["raw, BasketReader"], steady),
    ]


def _baskets_result(cfg: Config, isal: list[float], baskets: list[float], steady: list[float]) -> Result:
    """1''': the raw read with mlaas4hep's BasketReader against uproot's with ISA-L (the best raw read now)."""
    r_baskets = ratios(isal, baskets)
    r_steady = ratios(baskets, steady)
    return Result(
        "1'''",
        "raw read with BasketReader / uproot's with ISA-L",
        median(r_baskets),
        ">=",
        0.0,
        r_baskets,
        f"raw with mlaas4hep's BasketReader {_rate(cfg, baskets)} (one thread, ISA-L, no flattening); "
        f"the steady epoch (1) against it: {median(r_steady):.3g}x",
        info=True,
    )


def _decompressor_result(cfg: Config, raw: list[float], isal: list[float]) -> Result:
    """1'': the raw read with ISA-L against the raw read with zlib."""
    r_isal = ratios(raw, isal)
    return Result(
        "1''",
        "raw read with ISA-L / with zlib",
        median(r_isal),
        ">=",
        0.0,
        r_isal,
        f"raw with ISA-L {_rate(cfg, isal)}: the share of the decompressor; mlaas4hep inflates ZLIB baskets "
        "with ISA-L; each goal is against the raw read with ISA-L, its detail also against zlib",
        info=True,
    )


def _order_and_workers_results(cfg: Config, times: dict[str, list[Any]], scaling: list[int]) -> list[Result]:
    """10, 10', 10'' and 11: worker processes against both raw reads, a random batch order against the sequential."""
    raw, isal = times["raw"], times["raw, ISA-L"]
    steady = [t[2] for t in times["ours"]]
    steady_random = [t[2] for t in times["ours, random batch order"]]
    r_steady, r_random = ratios(isal, steady), ratios(steady, steady_random)
    r_workers = {w: ratios(isal, [t[2] for t in times[f"ours, workers={w}"]]) for w in scaling}
    table = [f"workers=1 {median(r_steady):.2f}"] + [f"workers={w} {median(r_workers[w]):.2f}" for w in scaling]
    missing = [str(w) for w in (4, 8) if w not in scaling]
    if missing:
        table.append(f"workers={' and '.join(missing)} not measured: {_cores()} cores")
    w2 = [t[2] for t in times["ours, workers=2"]]
    limit = []
    if "raw, a process per file" in times:
        r_limit = ratios(raw, times["raw, a process per file"])
        limit.append(
            Result(
                "10''",
                "raw read, a process per file / raw (zlib)",
                median(r_limit),
                ">=",
                0.0,
                r_limit,
                "what two cores give the raw read alone (zlib, no flattening, no serving): the practical limit of 10",
                info=True,
            )
        )
    return [
        *limit,
        _against_raw(
            "10",
            "two cores: steady, workers=2 / raw",
            1.6,
            w2,
            isal,
            raw,
            f"ours {_rate(cfg, w2)} with two worker processes, raw single-threaded {_rate(cfg, isal)} with ISA-L, "
            f"{_rate(cfg, raw)} with zlib (the 2-core limit is 2.0; see 10'')",
        ),
        Result(
            "10'",
            "scaling: steady / raw (ISA-L), by workers",
            median(r_workers[2]) / median(r_steady),
            ">=",
            0.0,
            [],
            "; ".join(table) + " (value: workers=2 over workers=1)",
            info=True,
        ),
        Result(
            "11",
            "random batch order / sequential, steady",
            median(r_random),
            ">=",
            0.9,
            r_random,
            f"random {_rate(cfg, steady_random)}, sequential {_rate(cfg, steady)} (seq[i] in a shuffled order, "
            "as fit asks; a shuffled sequence gives indices the next batches in the order they are asked for)",
        ),
    ]


def _per_core_results(cfg: Config, times: dict[str, list[Any]], bytes_per_event: float) -> list[Result]:
    """12' and 12'': events per CPU-second of a steady epoch (workers=1 and 2), and the bytes per event handed over."""
    runs = {1: times["ours"]} | {w: times[f"ours, workers={w}"] for w in (2, 4, 8) if f"ours, workers={w}" in times}
    per_core = {w: [cfg.specs.n_events / t[4] / 1e3 for t in runs[w]] for w in runs}
    busy = {w: median([t[4] / t[2] for t in runs[w]]) for w in runs}
    table = "; ".join(f"workers={w} {median(v):.0f} kev/CPU-s ({busy[w]:.2f} cores busy)" for w, v in per_core.items())
    detail = (
        f"{table}; output {bytes_per_event:.0f} B/event (a batch's inputs, labels and weights): a consumer of "
        f"R events/s needs R / (events per CPU-second) cores and R x {bytes_per_event:.0f} B/s (CPU of every "
        "thread of this process and of its worker processes, from /proc)"
    )
    return [
        Result(
            "12" + "'" * w,
            f"events per CPU-second, steady, workers={w}",
            median(per_core[w]),
            ">=",
            0.0,
            per_core[w],
            detail if w == 1 else f"{busy[w]:.2f} cores busy; see 12'",
            unit=" kev/CPU-s",
            info=True,
        )
        for w in (1, 2)
    ]


def bench_parallel(cfg: Config) -> list[Result]:
    """Target 6: an epoch through Keras' PyDatasetAdapter with ``workers=2`` against ``workers=1``."""
    n_events = cfg.specs.n_events
    times = _measure(
        cfg,
        {
            "workers=1": lambda: _two_epochs(cfg, adapter_epoch, workers=1),
            "workers=2": lambda: _two_epochs(cfg, adapter_epoch, workers=2),
        },
    )
    one, two = times["workers=1"], times["workers=2"]
    r = ratios([t[1] for t in one], [t[1] for t in two])
    r_first = ratios([t[0] for t in one], [t[0] for t in two])
    return [
        Result(
            "6",
            "parallelism: speed-up of workers=2 over 1",
            median(r),
            ">",
            1.0,
            r,
            f"steady epochs: workers=1 {n_events / median([t[1] for t in one]) / 1e3:.0f} kev/s, "
            f"workers=2 {n_events / median([t[1] for t in two]) / 1e3:.0f} kev/s; first epochs {median(r_first):.2f}x "
            "(Keras PyDatasetAdapter, shuffle; workers=2 forks two reading processes)",
        )
    ]


def bench_collections(cfg: Config) -> list[Result]:
    """Target 8: events/s of a steady epoch with ``layout="collections"`` against the flat layout."""
    n_events = cfg.specs.n_events
    times = _measure(
        cfg,
        {
            "flat": lambda: _two_epochs(cfg, epoch),
            "collections": lambda: _two_epochs(cfg, epoch, layout="collections"),
        },
    )
    flat, collections = times["flat"], times["collections"]
    r = ratios([t[1] for t in flat], [t[1] for t in collections])
    steady_flat = n_events / median([t[1] for t in flat]) / 1e3
    steady_collections = n_events / median([t[1] for t in collections]) / 1e3
    return [
        Result(
            "8",
            "layouts: collections / flat steady epoch",
            median(r),
            ">=",
            0.9,
            r,
            f"collections {steady_collections:.0f} kev/s, flat {steady_flat:.0f} kev/s (events/s of the second "
            "epoch of a fresh sequence, plain loop; x a dict of per-collection tensors and masks)",
        )
    ]
