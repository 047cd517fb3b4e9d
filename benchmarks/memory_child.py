"""Run in a fresh process by the memory benchmark: one epoch over ``nevts`` events; print peak RSS as JSON."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def status(field: str) -> int:
    """A field of /proc/self/status in bytes (VmRSS: now, VmHWM: peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    msg = f"no {field} in /proc/self/status"
    raise RuntimeError(msg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--specs", required=True)
    parser.add_argument("--nevts", type=int, required=True)
    parser.add_argument("--chunk-size", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras  # noqa: F401  - TensorFlow's own share of the memory

    tf_rss = status("VmRSS")
    from mlaas4hep import RootSequence

    seq = RootSequence(
        args.files,
        labels=[1, 0],
        specs=args.specs,
        nevts=args.nevts,
        chunk_size=args.chunk_size,
        batch_size=args.batch_size,
        seed=1,
    )
    served = 0
    seq.on_epoch_begin()
    for i in range(len(seq)):
        served += len(seq[i][0])
    seq.on_epoch_end()
    seq.close()
    json.dump({"nevts": served, "tf_rss": tf_rss, "peak": status("VmHWM")}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
