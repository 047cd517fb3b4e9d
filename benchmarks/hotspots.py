"""Where an epoch's time goes: the read and the flattening of every chunk, serially, under cProfile.

Not part of ``make bench``: run ``python benchmarks/hotspots.py`` (``--quick``
for small files). RootSequence reads and flattens in background threads,
which cProfile does not see; here the same library calls run one after the
other in the main thread, so each stage's cost shows on its own.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import DATA_DIR, TREE, Config, raw_read


def stage_times(cfg: Config) -> dict[str, float]:
    """Seconds per epoch of each stage, measured serially (one pass each)."""
    import uproot

    from mlaas4hep import ChunkReader, JaggedFlattener
    from mlaas4hep.inputs.sources import parse_sources

    specs = cfg.specs
    flattener = JaggedFlattener(specs)
    sources = parse_sources([str(p) for p in cfg.files], TREE, "")
    entries = [f.entries for f in specs.files]
    out: dict[str, float] = {}

    t = time.perf_counter()
    raw_read(cfg.files, flattener.branches, cfg.chunk_size)
    out["raw TTree.iterate, step chunk_size"] = time.perf_counter() - t

    reader = ChunkReader(sources, flattener.branches, chunk_size=cfg.chunk_size, entries=entries)
    plan = reader.plan
    t = time.perf_counter()
    chunks = [reader.read(k) for k in range(plan.n_chunks)]
    out["ChunkReader.read, all chunks (whole clusters kept)"] = time.perf_counter() - t
    reader.close()

    opened = [uproot.open(s.path) for s in sources]
    t = time.perf_counter()
    for k in range(plan.n_chunks):
        for i, f in enumerate(opened):
            start, count = int(plan.starts[k, i]), int(plan.counts[k, i])
            if count:
                f[TREE].arrays(filter_name=flattener.branches, entry_start=start, entry_stop=start + count)
    out["direct range reads, all chunks (split baskets read twice)"] = time.perf_counter() - t
    for f in opened:
        f.close()

    n, width = len(chunks[0]), flattener.num_features
    t = time.perf_counter()
    for _ in chunks:
        X = np.full((n, width), 0.0, dtype=np.float32)
        M = np.zeros((n, width), dtype=np.bool_)
        X[:] = 1.0  # touch the pages, as the scatter does
        M[:] = True
    out[f"allocate + touch X ({n}x{width} float32) and M, per chunk x {len(chunks)}"] = time.perf_counter() - t

    t = time.perf_counter()
    for c in chunks:
        flattener.transform(c.pieces)
    out["JaggedFlattener.transform, all chunks"] = time.perf_counter() - t

    X, _ = flattener.transform(chunks[0].pieces)
    perm = np.random.default_rng(0).permutation(len(X))
    t = time.perf_counter()
    for _ in chunks:
        for s in range(0, len(X), cfg.batch_size):
            X[perm[s : s + cfg.batch_size]]
    out["cut shuffled batches (X[rows]) from each chunk"] = time.perf_counter() - t
    return out


def profile(cfg: Config, top: int) -> str:
    from mlaas4hep import ChunkReader, JaggedFlattener
    from mlaas4hep.inputs.sources import parse_sources

    specs = cfg.specs
    flattener = JaggedFlattener(specs)
    sources = parse_sources([str(p) for p in cfg.files], TREE, "")
    reader = ChunkReader(
        sources, flattener.branches, chunk_size=cfg.chunk_size, entries=[f.entries for f in specs.files]
    )
    profiler = cProfile.Profile()
    profiler.enable()
    for k in range(reader.plan.n_chunks):
        flattener.transform(reader.read(k).pieces)
    profiler.disable()
    reader.close()
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(top)
    return stream.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    cfg = Config.quick_config(args.data_dir) if args.quick else Config(data_dir=args.data_dir)
    print(f"{cfg.specs.summary()}, chunk {cfg.chunk_size}")
    for name, seconds in stage_times(cfg).items():
        print(f"{seconds:8.3f} s  {name}")
    print()
    print(profile(cfg, args.top))


if __name__ == "__main__":
    main()
