"""LoaderStats: the per-epoch numbers of the loader add up, under Keras' fit and a plain loop."""

from __future__ import annotations

import logging

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from mlaas4hep import LoaderStats, ParameterError, RootSequence  # noqa: E402
from mlaas4hep.loader_stats import format_record  # noqa: E402
from mlaas4hep.stats import LoaderCounters  # noqa: E402


def _model(idim: int) -> keras.Model:
    model = keras.Sequential([keras.Input((idim,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="adam", loss="binary_crossentropy")
    return model


def _check_sums(record: dict[str, float], seq: RootSequence, *, loop: bool = False) -> None:
    """What any epoch's record must satisfy (``loop``: one that LoaderStats.iterate timed)."""
    assert record["batches"] == len(seq)
    assert record["events"] == seq.total_events
    if loop:  # the loop's wait holds the time in seq[i]
        assert 0 < record["serve_s"] <= record["wait_s"] <= record["seconds"]
    else:  # the time blocked on chunks not ready is part of the time in seq[i]
        assert 0 <= record["wait_s"] <= record["serve_s"] <= record["seconds"]
    assert record["events_per_s"] == pytest.approx(record["events"] / record["seconds"])
    assert record["wait_fraction"] == pytest.approx(record["wait_s"] / record["seconds"])
    assert record["read_s"] > 0 and record["flatten_s"] > 0
    # two decompression threads: their seconds, summed, are at most twice the reads' wall time
    assert 0 < record["decompress_s"] <= 2 * record["read_s"] + 0.01
    chunk_mb = seq.pipeline.rows * seq.num_features * 4 / 2**20
    assert chunk_mb <= record["peak_buffer_mb"] <= (seq.cache_chunks + seq.prefetch + 3) * chunk_mb


def test_fit_records_add_up_for_every_epoch(two_files, caplog):
    seq = RootSequence(two_files, labels=[1, 0], batch_size=100, chunk_size=700, seed=3)
    n_chunks = len(seq.reader)
    assert n_chunks > 2
    stats = LoaderStats(seq)
    with caplog.at_level(logging.INFO, logger="mlaas4hep.loader_stats"):
        _model(seq.num_features).fit(seq, epochs=3, verbose=0, callbacks=[stats])
    assert len(stats.history) == 3
    for record in stats.history:
        _check_sums(record, seq)
        # the cache holds a chunk until its last batch is served: none is read twice
        assert record["chunks_read"] == n_chunks and record["chunks_reread"] == 0
    assert [r["epoch"] for r in stats.history] == sorted({r["epoch"] for r in stats.history})
    lines = [r.getMessage() for r in caplog.records if r.name == "mlaas4hep.loader_stats"]
    assert len(lines) == 3 and f"{seq.total_events} events in" in lines[0]
    assert stats.last == stats.history[-1]


def test_a_cache_too_small_for_the_batch_order_shows_as_rereads(two_files):
    # batches asked for in an order that jumps between chunks, with one chunk cached and none read ahead
    seq = RootSequence(
        two_files, labels=[1, 0], batch_size=100, chunk_size=700, shuffle=False, cache_chunks=1, prefetch=0
    )
    n_chunks = len(seq.reader)
    stats = LoaderStats(seq)
    stats.begin()
    order = np.arange(len(seq)).reshape(-1, 2).T.ravel() if len(seq) % 2 == 0 else np.arange(len(seq))[::-1]
    for i in order:
        seq[int(i)]
    record = stats.end()
    assert record["events"] == seq.total_events
    assert record["chunks_read"] == n_chunks + record["chunks_reread"]
    assert record["chunks_reread"] > 0


def test_a_plain_loop_times_its_own_waits(two_files):
    seq = RootSequence(two_files, labels=[1, 0], batch_size=250, chunk_size=1000, seed=1)
    stats = LoaderStats(seq)
    seen = sum(len(batch[0]) for batch in stats.iterate(seq[i] for i in range(len(seq))))
    record = stats.last
    assert seen == record["events"] == seq.total_events
    _check_sums(record, seq, loop=True)


def test_counters_of_worker_processes_come_back_with_their_chunks(two_files):
    seq = RootSequence(two_files, labels=[1, 0], batch_size=100, chunk_size=700, seed=3, workers=2)
    if not seq.pipeline.worker_processes:
        pytest.skip("worker processes are forked on Linux only")
    stats = LoaderStats(seq)
    try:
        stats.begin()
        for i in range(len(seq)):
            seq[i]
        record = stats.end()
    finally:
        seq.close()
    assert record["chunks_read"] == len(seq.reader)
    assert record["read_s"] > 0 and record["flatten_s"] > 0 and record["decompress_s"] > 0
    assert record["events"] == seq.total_events


def test_format_and_bad_loaders():
    counters = LoaderCounters()
    counters.served(0, 100, 0.5, 0.25)
    counters.chunk_read(0, 0, 0.2, 0.3)
    stats = LoaderStats(counters)
    with pytest.raises(ParameterError, match="before begin"):
        stats.end()
    line = format_record({**counters.epoch(0), "seconds": 1.0, "events_per_s": 100.0, "peak_buffer_mb": 3.0})
    assert "100 events in 1.00 s" in line and "(25%)" in line and "1 chunks read, 0 re-read" in line
    with pytest.raises(ParameterError, match="RootSequence or a RootDataset, got list"):
        LoaderStats([])


def test_a_pytorch_loop_over_a_dataloader(two_files):
    pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    from mlaas4hep.torch import RootDataset

    dataset = RootDataset(two_files, labels=[1, 0], batch_size=100, chunk_size=700, seed=2)
    stats = LoaderStats(dataset)
    for epoch in range(2):
        dataset.set_epoch(epoch)
        events = sum(len(x) for x, _ in stats.iterate(DataLoader(dataset, batch_size=None)))
        record = stats.last
        assert events == record["events"] == dataset.total_events
        assert record["epoch"] == epoch and record["chunks_read"] == len(dataset.dataset.plan.counts)
        assert 0 < record["serve_s"] <= record["wait_s"] <= record["seconds"]
