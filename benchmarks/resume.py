"""Target 13: the time from ``load_state_dict`` to the first batch, for a place at 10 % and at 90 % of an epoch.

A resumed epoch reads from the chunk of its place, so both should take about
the time of one chunk; a loader that fast-forwards (reads and drops what was
served, as torchdata's ``StatefulDataLoader`` does for a dataset with no state)
takes nine times longer at 90 % than at 10 %. The fast-forward to 90 % is
timed too, for the record.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from benchmarks.common import Config, Result, median, ratios

__all__ = ["bench_resume"]

log = logging.getLogger("benchmarks")

PLACES = (0.1, 0.9)


def _sequence(cfg: Config) -> Any:
    from mlaas4hep import RootSequence

    kw = {"batch_size": cfg.batch_size, "chunk_size": cfg.chunk_size, "seed": 1, "specs": cfg.specs}
    return RootSequence([str(p) for p in cfg.files], labels=[1.0, 0.0], **kw)


def _resume_seconds(cfg: Config, fraction: float) -> float:
    """Seconds from ``load_state_dict`` of a place at ``fraction`` of epoch 1 to its first batch (a fresh sequence)."""
    seq = _sequence(cfg)
    try:
        state = seq.state_dict(epoch=1, batches=0)
        state["position"] = int(fraction * len(seq))
        t0 = time.perf_counter()
        seq.load_state_dict(state)
        seq[0]
        return time.perf_counter() - t0
    finally:
        seq.close()


def _fast_forward_seconds(cfg: Config, fraction: float) -> float:
    """Seconds to reach the place by serving (and dropping) every batch before it, then the first after it."""
    seq = _sequence(cfg)
    try:
        t0 = time.perf_counter()
        for i in range(int(fraction * len(seq)) + 1):
            seq[i]
        return time.perf_counter() - t0
    finally:
        seq.close()


def bench_resume(cfg: Config) -> list[Result]:
    """[13] resume at 90 % / resume at 10 % (goal <= 1.3: no fast-forward), and the fast-forward, for the record."""
    times: dict[float, list[float]] = {f: [] for f in PLACES}
    forward: list[float] = []
    for r in range(cfg.repeat):
        for fraction in PLACES if r % 2 == 0 else PLACES[::-1]:
            times[fraction].append(_resume_seconds(cfg, fraction))
            log.info("repeat %d: resume at %.0f%% %.3f s", r + 1, 100 * fraction, times[fraction][-1])
    forward.append(_fast_forward_seconds(cfg, PLACES[-1]))
    late, early = times[PLACES[-1]], times[PLACES[0]]
    detail = f"load_state_dict to first batch: {median(early):.2f} s at 10 %, {median(late):.2f} s at 90 %"
    return [
        Result(
            "13",
            "resume at 90% / at 10% of an epoch",
            median(ratios(late, early)),
            "<=",
            1.3,
            ratios(late, early),
            detail,
        ),
        Result(
            "13'",
            "fast-forward to 90% / resume at 90%",
            forward[0] / median(late),
            ">=",
            1.0,
            [],
            f"serving the first 90 % of the batches: {forward[0]:.1f} s",
            info=True,
        ),
    ]
