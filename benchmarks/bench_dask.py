"""The first pass on a Dask LocalCluster of 2 worker processes, against serial and threads.

Usage (standalone; needs ``pip install mlaas4hep[dask]``)::

    python benchmarks/bench_dask.py                 # 8 files x 100k events, 3 repeats
    python benchmarks/bench_dask.py --quick         # 4 files x 20k events, 1 repeat

Writes NanoAOD-like files (flat and jagged float32 branches, uproot's default
compression) to a temporary directory, then times ``SpecBuilder(...).build()``
(fingerprints, branch check and scan) on each engine, checks that every
engine's specs equal the serial ones, and prints the median time and the
speed-up over serial. The cluster is started before timing (its start-up is
printed separately): a cluster is started once and serves many scans.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import uproot

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlaas4hep import SpecBuilder, Specs


def write_files(directory: Path, n_files: int, n_events: int) -> list[Path]:
    """Files with 10 flat and 3 jagged branches (a jet collection of about 4 jets per event)."""
    paths = []
    for i in range(n_files):
        rng = np.random.default_rng(i)
        counts = rng.poisson(4.0, n_events)
        total = int(counts.sum())
        data: dict[str, np.ndarray | ak.Array] = {
            f"flat{j}": rng.normal(j, 1 + j, n_events).astype(np.float32) for j in range(10)
        }
        data["Jet"] = ak.zip(
            {
                name: ak.unflatten(rng.exponential(30.0, total).astype(np.float32), counts)
                for name in ("pt", "eta", "phi")
            }
        )
        path = directory / f"bench{i}.root"
        with uproot.recreate(path) as f:
            f.mktree("Events", {k: (v.type if isinstance(v, ak.Array) else v.dtype) for k, v in data.items()})
            for start in range(0, n_events, 20_000):
                f["Events"].extend({k: v[start : start + 20_000] for k, v in data.items()})
        paths.append(path)
    return paths


def timed(files: list[Path], executor: object, repeat: int) -> tuple[float, Specs]:
    times, specs = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()  # the scan itself, not the in-process reuse of specs that build() may do
        specs = SpecBuilder(files, executor=executor, progress=False).scan()
        times.append(time.perf_counter() - t0)
    assert specs is not None
    return statistics.median(times), specs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="4 files x 20k events, 1 repeat")
    args = parser.parse_args()
    if args.quick:
        args.files, args.events, args.repeat = 4, 20_000, 1
    distributed: Any = importlib.import_module("distributed")  # its LocalCluster and Client are not annotated

    with tempfile.TemporaryDirectory(prefix="mlaas4hep-bench-dask-") as tmp:
        files = write_files(Path(tmp), args.files, args.events)
        size = sum(f.stat().st_size for f in files) / 2**20
        print(f"{args.files} files x {args.events} events, {size:.0f} MiB, median of {args.repeat}")
        serial, reference = timed(files, "serial", args.repeat)
        rows = [("serial", serial, True)]
        t, specs = timed(files, "threads", args.repeat)
        rows.append(("threads (one per core)", t, specs == reference))
        t0 = time.perf_counter()
        with (
            distributed.LocalCluster(
                n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None, silence_logs=logging.ERROR
            ) as cluster,
            distributed.Client(cluster) as client,
        ):
            print(f"LocalCluster(2 processes x 1 thread) started in {time.perf_counter() - t0:.1f} s")
            t, specs = timed(files, client, args.repeat)
            rows.append(("dask, 2 worker processes", t, specs == reference))
        print(f"{'engine':<28}{'time (s)':>10}{'speed-up':>10}  specs == serial")
        for name, t, same in rows:
            print(f"{name:<28}{t:>10.2f}{serial / t:>9.2f}x  {same}")


if __name__ == "__main__":
    main()
