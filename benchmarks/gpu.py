"""``fit`` throughput on a GPU: RootSequence with workers = 1, 4, 8 against the same events preloaded in memory.

Run by ``benchmarks/gpu.sh`` on a machine with a GPU (it installs what it needs
first). Prints one line per contender: events per second of the second epoch
(the first traces and compiles), and the ratio to the preloaded arrays, which
are what a loader can at best approach: the GPU then never waits for data.

Usage::

    python benchmarks/gpu.py [--events 100000] [--batch-size 1000] [--workers 1 4 8]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _model(idim: int) -> object:
    import keras

    model = keras.Sequential(
        [
            keras.Input((idim,)),
            keras.layers.Dense(512, activation="relu"),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile("adam", "binary_crossentropy")
    return model


def _epoch_rate(fit: object, n: int) -> float:
    """Events per second of the second of two epochs (the first traces and compiles)."""
    fit()  # type: ignore[operator]
    t0 = time.perf_counter()
    fit()  # type: ignore[operator]
    return n / (time.perf_counter() - t0)


def _waited(record: dict[str, float]) -> str:
    """What LoaderStats says of an epoch: how long the GPU's training loop waited for batches."""
    return f"waited {record['wait_s']:.2f} s for batches ({100 * record['wait_fraction']:.0f}% of the epoch)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="events in the first demo file")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4, 8])
    args = parser.parse_args(argv)

    import keras
    import numpy as np

    from mlaas4hep import LoaderStats, RootSequence
    from mlaas4hep.workflow.demo import make_demo_files

    devices = keras.config.backend(), [str(d) for d in __import__("tensorflow").config.list_physical_devices("GPU")]
    print(f"keras {keras.__version__}, backend and GPUs: {devices}; {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        files = make_demo_files(Path(tmp), n_events=args.events, seed=1)
        kw = {"labels": [1, 0], "batch_size": args.batch_size, "chunk_size": 20_000, "seed": 1}
        preload = RootSequence(files, specs=Path(tmp) / "specs.json", shuffle=False, **kw)
        X = np.concatenate([preload[i][0] for i in range(len(preload))])
        y = np.concatenate([preload[i][1] for i in range(len(preload))])
        n = len(X)
        model = _model(X.shape[1])
        arrays = _epoch_rate(lambda: model.fit(X, y, batch_size=args.batch_size, epochs=1, verbose=0), n)
        print(f"preloaded arrays: {arrays / 1e3:.0f} kev/s ({n} events x {X.shape[1]} features)")
        for workers in args.workers:
            seq = RootSequence(files, specs=Path(tmp) / "specs.json", workers=workers, **kw)
            stats = LoaderStats(seq, level=logging.DEBUG)
            rate = _epoch_rate(lambda s=seq, c=stats: model.fit(s, epochs=1, verbose=0, callbacks=[c]), n)
            print(
                f"RootSequence workers={workers} ({seq.worker_processes} processes): {rate / 1e3:.0f} kev/s, "
                f"{rate / arrays:.2f} of the preloaded arrays; {_waited(stats.last)}"
            )
            seq.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
