"""LoaderStats: the per-epoch numbers of the loader add up, under Keras' fit and a plain loop."""

from __future__ import annotations

import gc
import logging
import math
import time

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from mlaas4hep import LoaderStats, ParameterError, RootSequence  # noqa: E402
from mlaas4hep.loader_stats import format_record  # noqa: E402
from mlaas4hep.stream.counters import LoaderCounters  # noqa: E402


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


def test_unshuffled_epochs_count_their_own_reads(two_files):
    # unshuffled epochs share their chunks' cache keys: the work must still go to the epoch served
    seq = RootSequence(two_files, labels=[1, 0], batch_size=100, chunk_size=700, shuffle=False)
    n_chunks = len(seq.reader)
    stats = LoaderStats(seq)
    for _ in range(3):
        stats.begin()
        for i in range(len(seq)):
            seq[i]
        seq.on_epoch_end()
        stats.end()
    for e, record in enumerate(stats.history):
        assert record["epoch"] == e
        _check_sums(record, seq)
        assert record["chunks_read"] == n_chunks and record["chunks_reread"] == 0


def test_a_late_start_reports_only_what_it_saw(two_files):
    seq = RootSequence(two_files, labels=[1, 0], batch_size=100, chunk_size=700, seed=3)
    for i in range(len(seq)):  # an epoch before LoaderStats starts
        seq[i]
    seq.on_epoch_end()
    stats = LoaderStats(seq)
    stats.begin()
    for i in range(len(seq)):
        seq[i]
    record = stats.end()
    assert record["epoch"] == 1 and record["chunks_read"] == len(seq.reader)
    _check_sums(record, seq)


def test_short_keras_epochs_add_up_to_the_loaders(two_files):
    seq = RootSequence(two_files, labels=[1, 0], batch_size=100, chunk_size=700, seed=5)
    n_chunks, steps = len(seq.reader), len(seq) // 2
    assert len(seq) == 2 * steps
    stats = LoaderStats(seq)
    _model(seq.num_features).fit(seq, epochs=4, steps_per_epoch=steps, verbose=0, callbacks=[stats])
    # tf.data asks for batches ahead of time: each Keras epoch counts those it trained on, no more
    assert [r["batches"] for r in stats.history] == [steps] * 4
    assert sum(r["events"] for r in stats.history) == 2 * seq.total_events
    # each loader epoch's reads are reported once, in the Keras epochs that served it
    assert sum(r["chunks_read"] for r in stats.history) == 2 * n_chunks
    assert sum(r["chunks_reread"] for r in stats.history) == 0


def test_validation_is_not_counted_as_the_epochs_time(two_files):
    train = RootSequence(
        two_files, labels=[1, 0], batch_size=100, chunk_size=700, seed=3, validation_split=0.5, subset="training"
    )
    val = RootSequence(
        two_files, labels=[1, 0], batch_size=100, chunk_size=700, seed=3, validation_split=0.5, subset="validation"
    )
    stats = LoaderStats(train)
    times: dict[str, list[float]] = {"epoch": [], "test": []}

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_test_begin(self, logs=None):
            self.t1 = time.perf_counter()

        def on_test_end(self, logs=None):
            times["test"].append(time.perf_counter() - self.t1)

        def on_epoch_end(self, epoch, logs=None):
            times["epoch"].append(time.perf_counter() - self.t0)

    _model(train.num_features).fit(train, validation_data=val, epochs=2, verbose=0, callbacks=[stats, Clock()])
    for record, whole, test in zip(stats.history, times["epoch"], times["test"], strict=True):
        assert record["events"] == train.total_events
        assert record["seconds"] == pytest.approx(whole - test, abs=0.05)


def test_the_buffers_memory_is_given_back(two_files):
    seq = RootSequence(two_files, labels=[1, 0], batch_size=100, chunk_size=700, seed=3)
    counters = seq.pipeline.stats
    for i in range(len(seq)):
        seq[i]
    assert counters.buffer_bytes > 0 and counters.peak_buffer_bytes >= counters.buffer_bytes
    seq.close()
    del seq
    gc.collect()
    assert counters.buffer_bytes == 0


def test_what_other_processes_served_is_not_a_number():
    stats = LoaderStats(LoaderCounters())  # as under use_multiprocessing: nothing served in this process
    stats.begin()
    record = stats.end(batches=3, events=300)
    assert record["events"] == 300 and record["batches"] == 3
    assert all(math.isnan(record[name]) for name in ("read_s", "flatten_s", "chunks_read", "wait_s", "epoch"))
    line = format_record(record)
    assert "waited n/a s for batches (n/a)" in line and "n/a chunks read" in line


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
        assert record["epoch"] == epoch and record["chunks_read"] == len(dataset.prepared.plan.counts)
        assert 0 < record["serve_s"] <= record["wait_s"] <= record["seconds"]


def test_a_buffer_freed_by_a_collection_inside_the_counters_lock_does_not_hang():
    import threading

    counters = LoaderCounters()

    def scenario() -> None:
        cycle: list = []
        array = np.zeros(1000, np.float32)
        cycle.append((array, cycle))  # kept only by a reference cycle: freed by the garbage collector
        counters.buffer_made(array)
        del array, cycle
        with counters._lock:  # a collection while a counting thread holds the lock
            gc.collect()

    thread = threading.Thread(target=scenario, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "freeing a buffer inside the counters' lock deadlocked"
    assert counters.buffer_bytes == 0 and counters.peak_buffer_bytes == 4000


def test_each_keras_epoch_counts_the_events_it_trained_on(two_files):
    """tf.data serves ahead of time: 4,100 events reported for 4,000 trained was the defect."""
    seq = RootSequence(two_files, labels=[1, 0], batch_size=90, chunk_size=700, seed=5)
    steps = len(seq) // 2  # two Keras epochs per loader epoch, of 33 batches of 90 events and 1 of 30
    assert (len(seq), seq.total_events) == (34, 3000)
    trained: list[list[int]] = [[]]

    class Sizes(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            trained.append([])

    def record(x):
        if x.shape[0] is not None:  # a batch, not the symbolic tensor of building the model
            trained[-1].append(int(x.shape[0]))
        return x

    inputs = keras.Input((seq.num_features,))
    outputs = keras.layers.Dense(1, activation="sigmoid")(
        keras.layers.Lambda(record, output_shape=(seq.num_features,))(inputs)
    )
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="binary_crossentropy", run_eagerly=True)
    stats = LoaderStats(seq)
    model.fit(seq, epochs=4, steps_per_epoch=steps, verbose=0, callbacks=[stats, Sizes()])
    assert [r["batches"] for r in stats.history] == [steps] * 4
    assert [r["events"] for r in stats.history] == [sum(sizes) for sizes in trained[:4]]
    # the short batch (30 events) was trained in one Keras epoch of each loader epoch
    assert sorted(sum(sizes) for sizes in trained[:4]) == [1470, 1470, 1530, 1530]
