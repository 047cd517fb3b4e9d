"""Target 4: peak memory of an epoch over 4 times more events against 1 time, each in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .common import Config, Result, median, ratios

__all__ = ["bench_memory", "peak_rss"]

CHILD = Path(__file__).resolve().parent / "memory_child.py"


def peak_rss(cfg: Config, nevts: int) -> dict[str, int]:
    """Run one epoch over ``nevts`` events in a new Python process; its events, TensorFlow's RSS and the peak RSS."""
    cfg.specs  # noqa: B018 - builds and saves specs.json for the child
    cmd = [
        sys.executable,
        str(CHILD),
        "--specs",
        str(cfg.specs_path),
        "--nevts",
        str(nevts),
        "--chunk-size",
        str(cfg.chunk_size),
        "--batch-size",
        str(cfg.batch_size),
        *[str(p) for p in cfg.files],
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    peaks: dict[str, int] = json.loads(done.stdout.strip().splitlines()[-1])
    return peaks


def bench_memory(cfg: Config) -> list[Result]:
    """Peak RSS over all events against a quarter of them; the part above TensorFlow's share is reported too."""
    total = cfg.specs.n_events
    small = total // 4
    big: list[dict[str, int]] = []
    one: list[dict[str, int]] = []
    for r in range(cfg.repeat):
        pair = [(4, 4 * small), (1, small)] if r % 2 else [(1, small), (4, 4 * small)]
        for factor, nevts in pair:
            (big if factor == 4 else one).append(peak_rss(cfg, nevts))
    peaks4, peaks1 = [m["peak"] for m in big], [m["peak"] for m in one]
    r_peak = ratios(peaks4, peaks1)
    tf = median([m["tf_rss"] for m in big + one])
    own4, own1 = median([p - tf for p in peaks4]), median([p - tf for p in peaks1])
    mb = 1024**2
    return [
        Result(
            "4",
            "memory: peak RSS 4x events / 1x",
            median(r_peak),
            "<=",
            1.1,
            r_peak,
            f"peak {median(peaks4) / mb:.0f} MiB ({big[0]['nevts']} events) vs {median(peaks1) / mb:.0f} MiB "
            f"({one[0]['nevts']} events); TensorFlow's share {tf / mb:.0f} MiB; above it "
            f"{own4 / mb:.0f} vs {own1 / mb:.0f} MiB (ratio {own4 / own1:.2f})",
        )
    ]
