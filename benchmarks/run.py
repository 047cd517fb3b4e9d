"""Run the benchmarks of issue 4 and print each ratio next to its target (``make bench``).

Usage::

    python benchmarks/run.py                  # everything, 3 repeats, 203k-event demo files
    python benchmarks/run.py --quick          # a small smoke run (seconds, not minutes)
    python benchmarks/run.py --only throughput --repeat 5

Each benchmark times its contenders side by side in this process (the memory
benchmark in fresh subprocesses), repeats, and reports the median of the
per-repeat ratios: the machine is shared, so ratios are the result, not times.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import DATA_DIR, Config, Result, format_result, print_table
from benchmarks.first_pass import bench_first_pass
from benchmarks.formats import bench_formats
from benchmarks.memory import bench_memory
from benchmarks.resume import bench_resume
from benchmarks.scores import bench_scores
from benchmarks.throughput import bench_collections, bench_parallel, bench_throughput
from benchmarks.training import bench_training
from benchmarks.vs_original import bench_original

BENCHMARKS: dict[str, Callable[[Config], list[Result]]] = {
    "throughput": bench_throughput,  # 1
    "original": bench_original,  # 2
    "training": bench_training,  # 3
    "memory": bench_memory,  # 4
    "first_pass": bench_first_pass,  # 5
    "parallel": bench_parallel,  # 6
    "collections": bench_collections,  # 8
    "scores": bench_scores,  # 9
    "resume": bench_resume,  # 13
    "formats": bench_formats,  # Parquet copies against the ROOT files, for the record
}


def describe_machine() -> str:
    """CPU count and model, memory, and the versions that matter."""
    import awkward
    import numpy
    import uproot

    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_kb = next(
            int(x.split()[1]) for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal")
        )
        mem = f"{mem_kb / 1024**2:.1f} GiB"
    except (OSError, StopIteration):
        mem = "unknown memory"
    return (
        f"{os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable), {model}, {mem}; "
        f"Python {sys.version.split()[0]}, "
        f"uproot {uproot.__version__}, awkward {awkward.__version__}, numpy {numpy.__version__}"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="mlaas4hep benchmarks (issue 4): ratios against their targets")
    parser.add_argument("--quick", action="store_true", help="small data and one repeat: checks that the harness runs")
    parser.add_argument(
        "--only", action="append", choices=list(BENCHMARKS), help="run only this benchmark (repeatable)"
    )
    parser.add_argument("--repeat", type=int, help="repeats per benchmark (default 3, 1 with --quick)")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help=f"where the demo files are cached ({DATA_DIR})")
    parser.add_argument("--n-events", type=int, help="events in the first demo file (the second has 3%% more)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every timing")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    if not args.verbose:
        logging.getLogger("benchmarks").setLevel(logging.WARNING)
    cfg = Config.quick_config(args.data_dir) if args.quick else Config(data_dir=args.data_dir)
    if args.repeat:
        cfg.repeat = args.repeat
    if args.n_events:
        cfg.n_events = args.n_events
    t0 = time.perf_counter()
    print(f"machine: {describe_machine()}")
    from mlaas4hep.inputs.formats.decompression import default_zlib

    print(f"ZLIB baskets inflated by {default_zlib()} in mlaas4hep, by zlib (uproot's default) in the baselines")
    import keras

    tf: Any = importlib.import_module("tensorflow")  # tensorflow ships no type information
    print(f"keras {keras.__version__}, tensorflow {tf.__version__}")
    print(f"data: {[str(p) for p in cfg.files]}: {cfg.specs.summary()}")
    print(f"chunk {cfg.chunk_size}, batch {cfg.batch_size}, {cfg.repeat} repeats, median of per-repeat ratios\n")
    results: list[Result] = []
    for name in args.only or list(BENCHMARKS):
        t = time.perf_counter()
        for result in BENCHMARKS[name](cfg):
            print(format_result(result), flush=True)
            results.append(result)
        logging.getLogger("benchmarks").info("%s took %.0f s", name, time.perf_counter() - t)
    print("\n[7] against ROOT's RDataLoader: not measured here (make bench-root), see docs/pages/performance.md")
    print_table(results)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
