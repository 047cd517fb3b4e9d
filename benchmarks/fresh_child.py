"""Target 1f's contender: the first epoch of a fresh process, as a user's first epoch is (run by throughput.py).

Usage::

    python benchmarks/fresh_child.py FILE FILE SPECS CHUNK_SIZE BATCH_SIZE

Imports (Keras among them) are made before any timer starts, as a user's
script makes them before its first epoch; then a RootSequence is made with
the cached specs (timed: construction) and runs one epoch (timed: the first
epoch). Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str]) -> None:
    import keras  # noqa: F401  # imported first, as a training script does

    from benchmarks.common import LABELS
    from benchmarks.throughput import epoch
    from mlaas4hep import RootSequence

    *files, specs, chunk_size, batch_size = argv
    t0 = time.perf_counter()
    seq = RootSequence(
        files, labels=list(LABELS), specs=specs, chunk_size=int(chunk_size), batch_size=int(batch_size), seed=1
    )
    t1 = time.perf_counter()
    n = epoch(seq)
    t2 = time.perf_counter()
    seq.close()
    print(json.dumps({"construct": t1 - t0, "first": t2 - t1, "events": n}))


if __name__ == "__main__":
    main(sys.argv[1:])
