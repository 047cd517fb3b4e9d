"""Parquet against ROOT: a steady epoch of RootSequence over Parquet copies of the demo files, events/s side by side.

The copies hold the same events and branches, in row groups as large as the
ROOT files' clusters (10,000 events), written once with awkward beside the
demo files. Both sequences have the same sizes and their own specs; an
epoch is timed twice on each fresh sequence and the second ("steady") epoch
is compared, as in target 1.
"""

from __future__ import annotations

import gc
import logging
import time
from pathlib import Path
from typing import Any

from .common import LABELS, TREE, Config, Result, median, ratios
from .throughput import epoch

__all__ = ["bench_formats", "parquet_copies"]

log = logging.getLogger("benchmarks")

ROW_GROUP = 10_000


def parquet_copies(cfg: Config) -> list[Path]:
    """Parquet copies of the demo files (written once, next to them, while the ROOT files are older)."""
    import awkward as ak
    import uproot

    paths = []
    for root in cfg.files:
        path = root.with_suffix(".parquet")
        if not path.exists() or path.stat().st_mtime < root.stat().st_mtime:
            with uproot.open(root) as f:
                arrays = f[TREE].arrays()
            tmp = path.with_name(path.name + ".tmp")
            ak.to_parquet(arrays, tmp, row_group_size=ROW_GROUP)
            tmp.replace(path)
        paths.append(path)
    return paths


def _steady(files: list[Path], cfg: Config, specs: Any) -> float:
    """Seconds of the second epoch of a fresh sequence over ``files`` (the first one checked to serve everything)."""
    from mlaas4hep import RootSequence

    gc.collect()
    seq = RootSequence(
        [str(p) for p in files],
        labels=list(LABELS),
        specs=specs,
        batch_size=cfg.batch_size,
        chunk_size=cfg.chunk_size,
        seed=1,
    )
    try:
        n1 = epoch(seq)
        t0 = time.perf_counter()
        n2 = epoch(seq)
        dt = time.perf_counter() - t0
    finally:
        seq.close()
    assert n1 == n2 == seq.n_events
    return dt


def bench_formats(cfg: Config) -> list[Result]:
    """Events/s of a steady epoch over Parquet copies of the demo files, against the ROOT files (for the record)."""
    from mlaas4hep import SpecBuilder

    copies = parquet_copies(cfg)
    specs = SpecBuilder([str(p) for p in copies]).build()
    assert specs.names == cfg.specs.names
    times: dict[str, list[float]] = {"root": [], "parquet": []}
    for r in range(cfg.repeat):
        for name in ("root", "parquet") if r % 2 == 0 else ("parquet", "root"):
            files, used = (cfg.files, cfg.specs) if name == "root" else (copies, specs)
            times[name].append(_steady(files, cfg, used))
            log.info("repeat %d: %s %.3f s", r + 1, name, times[name][-1])
    n = cfg.specs.n_events

    def rate(ts: list[float]) -> str:
        return f"{n / median(ts) / 1e3:.0f} kev/s"

    r = ratios(times["root"], times["parquet"])
    return [
        Result(
            "P'",
            "Parquet copies: steady epoch, Parquet / ROOT",
            median(r),
            ">=",
            0.0,
            r,
            f"Parquet {rate(times['parquet'])}, ROOT {rate(times['root'])} ({n} events, "
            f"{len(cfg.specs.names)} branches, row groups of {ROW_GROUP} as the ROOT clusters; chunk {cfg.chunk_size})",
            info=True,
        )
    ]
