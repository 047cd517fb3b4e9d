"""The pipeline (mlaas4hep.stream.pipeline): closed and used again, it serves what it served before."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("keras")

from conftest import shared_tree

from mlaas4hep import RootSequence

ID = 1_000_000  # uid = file_id * ID + entry
FILES = ((5, 700), (6, 900))
EVERYTHING = sorted(f * ID + e for f, n in FILES for e in range(n))


def _sequence(workers: int, shuffle: bool) -> RootSequence:
    files = [shared_tree(f, n) for f, n in FILES]
    kw = dict(branches=["uid"], normalization=None, batch_size=50, chunk_size=300, seed=3, cache_chunks=1)
    return RootSequence(files, labels=[0, 1], shuffle=shuffle, workers=workers, **kw)


def _ids(seq: RootSequence, indices: range) -> list[int]:
    return [int(u) for i in indices for u in np.rint(seq[i][0][:, 0]).astype(np.int64)]


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    workers=st.sampled_from([1, 2]),
    shuffle=st.booleans(),
    stops=st.lists(st.floats(0, 1), min_size=1, max_size=3),
)
def test_a_sequence_closed_mid_epoch_and_used_again_serves_every_event_once(workers, shuffle, stops):
    """Closing stops the worker processes and forgets the chunks they made: none is served from a reused slot."""
    seq = _sequence(workers, shuffle)
    n = len(seq)
    try:
        for epoch in range(2):
            seq.on_epoch_begin()
            served, start = [], 0
            for stop in sorted(stops) if epoch == 0 else []:  # closed at these points of the first epoch
                end = start + int(stop * (n - start))
                served += _ids(seq, range(start, end))
                seq.close()
                start = end
            served += _ids(seq, range(start, n))
            seq.on_epoch_end()
            assert sorted(served) == EVERYTHING, f"epoch {epoch}"
        assert seq.worker_processes == (2 if workers == 2 else 0)
    finally:
        seq.close()


def test_closing_lets_the_stopped_workers_go() -> None:
    """A sequence closed and used again keeps no stopped worker pool (nor its shared memory) alive."""
    import gc
    import weakref

    seq = _sequence(2, True)
    try:
        seq[0]
        pool = weakref.ref(seq.pipeline.workers)
        assert pool() is not None
        seq.close()
        seq[0]
        gc.collect()
        assert pool() is None and seq.pipeline.workers is not None
    finally:
        seq.close()
