from __future__ import annotations

import gc
import threading

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from conftest import keras_probe  # noqa: E402

from mlaas4hep import LoaderStats, ParameterError, RootSequence  # noqa: E402

TENSORFLOW = keras.backend.backend() == "tensorflow"


def _ids(seq: RootSequence, order=None) -> tuple[np.ndarray, np.ndarray]:
    """Event ids (the raw ``uid`` column) and labels of one pass over ``seq``."""
    col = seq.feature_names.index("uid")
    order = range(len(seq)) if order is None else order
    xs, ys = [], []
    for i in order:
        x, y = seq[i]
        xs.append(x[:, col])
        ys.append(y)
    return np.concatenate(xs).astype(np.int64), np.concatenate(ys)


def _make(files, **kw) -> RootSequence:
    kw = {"labels": [1, 0], "branches": ["uid", "MET_pt", "Jet_pt"], "normalization": None, **kw}
    return RootSequence(files, **kw)


@pytest.mark.parametrize("shuffle", [True, False])
def test_every_event_once_per_epoch_with_its_label(two_files, shuffle):
    seq = _make(two_files, batch_size=64, chunk_size=500, shuffle=shuffle, seed=7)
    assert len(seq) == int(np.ceil(3000 / 64))
    rng = np.random.default_rng(0)
    epochs = []
    for _ in range(2):
        order = rng.permutation(len(seq))  # any order, as Keras asks
        col = seq.feature_names.index("uid")
        batches = [seq[int(i)] for i in order]
        ids = np.concatenate([x[:, col] for x, _ in batches]).astype(np.int64)
        labels = np.concatenate([y for _, y in batches])
        assert len(ids) == 3000 and len(np.unique(ids)) == 3000
        np.testing.assert_array_equal(labels, np.where(ids < 1_000_000, 1.0, 0.0))
        # shuffled: the stream in the order the indices were asked for; in order: in the order of the indices
        by_index = np.concatenate([batches[j][0][:, col] for j in np.argsort(order)]).astype(np.int64)
        epochs.append(ids if shuffle else by_index)
        seq.on_epoch_end()
    if shuffle:
        assert not np.array_equal(epochs[0], epochs[1])
    else:  # index i names the same events every epoch, in the files' order
        np.testing.assert_array_equal(epochs[0], epochs[1])
        assert all(np.array_equal(np.sort(epochs[0][p : p + 500]), epochs[0][p : p + 500]) for p in (0, 500))
    # chunks are mixed in proportion: each 500-event chunk holds 200 + 300 events
    first = epochs[0][:500]
    assert (first < 1_000_000).sum() == 200


def test_same_seed_same_batches_and_repeated_index(two_files):
    a = _make(two_files, batch_size=50, chunk_size=400, seed=3)
    b = _make(two_files, batch_size=50, chunk_size=400, seed=3)
    np.testing.assert_array_equal(_ids(a)[0], _ids(b)[0])
    c = _make(two_files, batch_size=50, chunk_size=400, seed=4)
    assert not np.array_equal(_ids(a)[0], _ids(c)[0])


def test_requests_outside_an_epoch_are_previews(two_files):
    seq = _make(two_files, batch_size=50, chunk_size=400, seed=3)
    reference = _ids(_make(two_files, batch_size=50, chunk_size=400, seed=3))[0]
    seq[0], seq[1]  # a look before training, or Keras' probe
    seq.on_epoch_end()
    seq.on_epoch_begin()
    np.testing.assert_array_equal(_ids(seq)[0], reference)
    assert seq.epoch == 1
    # the next epoch may start before on_epoch_end (TensorFlow prefetches)
    early = seq[0]
    seq.on_epoch_end()
    assert seq.epoch == 1
    np.testing.assert_array_equal(seq[0][0], early[0])  # index 0 still names the same events
    rest = _ids(seq, range(1, len(seq)))[0]
    col = seq.feature_names.index("uid")
    both = np.concatenate([early[0][:, col].astype(np.int64), rest])
    assert len(np.unique(both)) == 3000


def test_training_and_validation_are_disjoint_and_complete(two_files):
    kw = {"batch_size": 32, "chunk_size": 300, "validation_split": 0.25, "seed": 1}
    train = _make(two_files, subset="training", **kw)
    val = _make(two_files, subset="validation", specs=train.specs, **kw)
    t, v = _ids(train)[0], _ids(val)[0]
    assert len(t) == 2250 and len(v) == 750
    assert not set(t) & set(v)
    assert len(np.unique(np.concatenate([t, v]))) == 3000
    # the split is per file: a quarter of each file, its last entries
    assert (v < 1_000_000).sum() == 300 and (v % 1_000_000).min() == 900


def test_nevts_is_split_in_proportion(two_files):
    seq = _make(two_files, nevts=1000, batch_size=100, chunk_size=500)
    ids = _ids(seq)[0]
    assert len(ids) == 1000 and (ids < 1_000_000).sum() == 400


def test_labels_from_a_branch(two_files):
    seq = RootSequence(two_files, labels="flag", batch_size=100, chunk_size=1000, branches=["MET_pt", "uid"])
    assert "flag" not in seq.feature_names
    _, y = seq[0]
    assert set(np.unique(y)) <= {0.0, 1.0}


def test_num_batches_is_a_property_equal_to_len_as_on_the_pytorch_face(two_files):
    """``num_batches`` is an attribute on both faces (RootDataset's too): this shard's batches per epoch."""
    seq = _make(two_files, batch_size=64, chunk_size=500, seed=1, shard_index=1, num_shards=2)
    assert isinstance(type(seq).num_batches, property)
    assert seq.num_batches == len(seq) == 24  # 1500 events of this shard in batches of 64
    assert len(_ids(seq)[0]) == seq.n_events == 1500


def test_metadata_and_specs_reuse(two_files, tmp_path):
    cache = tmp_path / "specs.json"
    seq = RootSequence(two_files, labels=[1, 0], specs=cache, batch_size=100, chunk_size=1000)
    assert cache.exists()
    assert seq.num_features == len(seq.feature_names) == seq.specs.num_features
    assert seq.feature_names[: len(seq.specs.flat)] == seq.specs.flat
    again = RootSequence(two_files, labels=[1, 0], specs=cache, batch_size=100, chunk_size=1000)
    assert again.feature_names == seq.feature_names
    x, y = seq[0]
    assert x.dtype == np.float32 and x.shape == (100, seq.num_features) and y.shape == (100,)
    assert 0.0 <= x.min() and x.max() <= 1.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"labels": [1]}, "labels"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2000, "chunk_size": 1000}, "batch_size"),
        ({"chunk_size": -5}, "chunk_size"),
        ({"validation_split": 1.0, "subset": "training"}, "validation_split"),
        ({"validation_split": 0.2, "subset": "test"}, "subset"),
        ({"validation_split": 0.2}, "subset"),
        ({"nevts": 0}, "nevts"),
    ],
)
def test_bad_parameters(two_files, kwargs, match):
    with pytest.raises(ParameterError, match=match):
        RootSequence(two_files, **{"labels": [1, 0], **kwargs})


def _model(idim: int) -> keras.Model:
    model = keras.Sequential(
        [keras.Input((idim,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1, activation="sigmoid")]
    )
    model.compile(optimizer="adam", loss="binary_crossentropy")
    return model


def test_fit_reads_each_chunk_once_per_epoch_under_keras_shuffling(two_files):
    seq = RootSequence(two_files, labels=[1, 0], batch_size=50, chunk_size=300, cache_chunks=2, seed=5)
    n_chunks = len(seq.reader)
    assert n_chunks == 10
    _model(seq.num_features).fit(seq, epochs=2, verbose=0)  # default: shuffle=True, workers=1
    # once per chunk and epoch at most, plus the read ahead of the next epoch's first chunks
    # (and, with JAX and PyTorch, the probe's chunk and those read ahead of it, read again; see keras_probe)
    assert seq.chunk_reads <= 2 * n_chunks + seq.prefetch + keras_probe()[1] * (1 + seq.prefetch)
    assert seq.epoch == 2


@pytest.mark.parametrize("processes", [True, False], ids=["worker-processes", "keras-threads"])
def test_fit_with_two_workers_serves_each_event_once(two_files, processes, monkeypatch):
    if not processes:  # where worker processes cannot be forked, Keras fetches in two threads
        monkeypatch.setattr("mlaas4hep.stream.pipeline.fork_supported", lambda: False)
    seq = _make(two_files, batch_size=50, chunk_size=300, workers=2, seed=5)
    # Keras' own fetching threads only with TensorFlow (see mlaas4hep.sequence._keras_queue_is_safe)
    assert (seq.worker_processes, seq.workers) == ((2, 1) if processes else (0, 2 if TENSORFLOW else 1))
    model = _model(seq.num_features)
    seen = []

    class Record(keras.callbacks.Callback):
        pass

    col = seq.feature_names.index("uid")
    original = seq.__class__.__getitem__

    def spy(self, index):
        batch = original(self, index)
        seen.append(batch[0][:, col].astype(np.int64))
        return batch

    seq.__class__ = type("Spied", (seq.__class__,), {"__getitem__": spy})
    model.fit(seq, epochs=1, verbose=0, callbacks=[Record()])
    ids = np.concatenate(seen)
    # Keras probes batches 0 and 1 before the epoch (one batch with JAX and PyTorch); they are served again within it
    values, counts = np.unique(ids, return_counts=True)
    assert set(values) == set(range(1200)) | set(range(1_000_000, 1_001_800))
    assert counts.sum() - 3000 <= 2 * 50
    assert seq.chunk_reads <= len(seq.reader) + seq.prefetch + keras_probe()[1] * (1 + seq.prefetch)


def test_three_way_split_is_disjoint_and_complete(two_files):
    kw = {"batch_size": 20, "chunk_size": 300, "validation_split": 0.2, "test_split": 0.1, "seed": 2}
    parts = {s: _ids(_make(two_files, subset=s, **kw))[0] for s in ("training", "validation", "test")}
    assert [len(parts[s]) for s in ("training", "validation", "test")] == [2100, 600, 300]
    everything = np.concatenate(list(parts.values()))
    assert len(np.unique(everything)) == 3000
    # the test part is each file's last tenth
    assert (parts["test"] % 1_000_000).min() >= 1080 and (parts["test"] >= 1_000_000).sum() == 180
    with pytest.raises(ParameterError, match="test_split"):
        _make(two_files, subset="test", validation_split=0.2)
    with pytest.raises(ParameterError, match="below 1"):
        _make(two_files, subset="training", validation_split=0.6, test_split=0.5)


def test_batches_are_views_that_stay_intact_while_kept(two_files, count_buffers):
    """Batches are views of a chunk's buffer; a buffer is reused only once no batch looks into it."""
    kw = {"batch_size": 50, "chunk_size": 300, "seed": 3, "cache_chunks": 1, "prefetch": 1}
    seq, reference = _make(two_files, **kw), _make(two_files, **kw)
    expected = [tuple(np.array(a, copy=True) for a in reference[i % len(reference)]) for i in range(2 * len(reference))]
    kept = [seq[i % len(seq)] for i in range(len(seq))]  # every batch of the first epoch, held
    assert kept[0][0].base is not None  # a view, not a copy
    with pytest.raises(ValueError, match="read-only"):  # the buffer is reused: not to be changed in place
        kept[0][0][0, 0] = 1.0
    assert not seq.pipeline.buffers.free  # no buffer went back to the pool while its batches are held
    made = count_buffers()  # the buffers made from now on (the first epoch's are all held)
    for i in range(len(seq)):  # the second epoch, its batches dropped at once: buffers are reused
        np.testing.assert_array_equal(seq[i][0], expected[len(seq) + i][0])
    # its 10 chunks took a new buffer only while the ones before were cached or being flattened ahead
    # (whether one is in the pool at the end depends on the next epoch's read-ahead: not asserted)
    assert len(seq.reader) == 10 and 1 <= len(made) <= seq.cache_chunks + seq.prefetch + 2
    for got, want in zip(kept, expected, strict=False):
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)


def test_shuffled_epochs_read_neighbouring_chunks_and_keep_little(two_files):
    """Each epoch starts at a random chunk and reads on in a random direction: clusters are kept briefly."""
    seq = _make(two_files, batch_size=50, chunk_size=300, seed=1)
    n = len(seq.reader)
    firsts, directions = set(), set()
    for epoch in range(8):
        order, _ = seq.epoch_plan.order(epoch)
        assert sorted(order) == list(range(n))
        steps = set(np.diff(order) % n)
        assert len(steps) == 1 and steps <= {1, n - 1}
        firsts.add(int(order[0]))
        directions |= steps
    assert len(firsts) > 2 and directions == {1, n - 1}
    kept = 0
    for _ in range(2):
        for i in range(len(seq)):
            seq[i]
            kept = max(kept, len(seq.reader._segments))
        seq.on_epoch_end()
    assert kept <= 2 * len(two_files)  # an edge cluster per file and direction, never the whole epoch's
    for table in seq.reader._open.values():  # uproot's own array cache is not filled either
        assert len(table.file.file.array_cache) == 0


# -- the batch contract, through model.fit ------------------------------------------------------
def _uids(batch: tuple, col: int) -> np.ndarray:
    return batch[0][:, col].astype(np.int64)


def test_an_index_names_the_same_events_within_an_epoch_from_any_thread(two_files):
    seq = _make(two_files, batch_size=40, chunk_size=300, seed=2)
    col = seq.feature_names.index("uid")
    order = np.random.default_rng(1).permutation(len(seq))
    first: dict[int, np.ndarray] = {}
    lock = threading.Lock()

    def ask(indices) -> None:
        for i in indices:
            ids = _uids(seq[int(i)], col)
            with lock:
                if int(i) in first:
                    np.testing.assert_array_equal(ids, first[int(i)])
                first.setdefault(int(i), ids)

    last = order[-1]
    halves = [order[: len(order) // 2], order[len(order) // 2 : -1]]
    threads = [threading.Thread(target=ask, args=([*h, *h[:5]],)) for h in halves]  # each asks some twice
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ask(order[:10])  # asked again by another thread: the same events
    ask([last])  # the last index of the epoch
    ids = np.concatenate(list(first.values()))
    assert len(first) == len(seq) and len(ids) == 3000 and len(np.unique(ids)) == 3000
    assert seq.epoch == 1


def test_peeks_then_a_full_loop_serve_every_event_once(two_files):
    seq = _make(two_files, batch_size=50, chunk_size=400, seed=3)
    col = seq.feature_names.index("uid")
    peeks = [_uids(seq[i], col) for i in range(3)]
    loop = [_uids(seq[i], col) for i in range(len(seq))]
    for a, b in zip(peeks, loop, strict=False):
        np.testing.assert_array_equal(a, b)
    ids = np.concatenate(loop)
    assert len(ids) == 3000 and len(np.unique(ids)) == 3000


class _Interrupt(keras.callbacks.Callback):
    def on_train_batch_end(self, batch: int, logs=None) -> None:
        if batch == 5:
            raise KeyboardInterrupt


def test_an_interrupted_fit_does_not_leak_into_the_next(two_files):
    seq = _make(two_files, batch_size=50, chunk_size=300, seed=4)
    col = seq.feature_names.index("uid")
    model = _model(seq.num_features)
    try:
        model.fit(seq, epochs=2, verbose=0, callbacks=[_Interrupt()])
    except KeyboardInterrupt:
        pass  # the traceback, and with it the interrupted fit's input pipeline, is let go here ...
    else:
        pytest.fail("the fit was not interrupted")
    gc.collect()  # ... and goes: its reading-ahead thread asks for no more batches
    served: list[tuple[int, np.ndarray]] = []
    original = type(seq).__getitem__

    def spy(self, index):
        batch = original(self, index)
        served.append((int(index), _uids(batch, col)))
        return batch

    seq.__class__ = type("Spied", (type(seq),), {"__getitem__": spy})
    model.fit(seq, epochs=1, verbose=0)
    indices, n_probe = keras_probe(built=True)  # the model is built: JAX and PyTorch do not probe
    probe, epoch = served[:n_probe], served[n_probe : n_probe + len(seq)]
    assert indices in (None, [i for i, _ in probe])
    assert sorted(i for i, _ in epoch) == list(range(len(seq)))
    ids = np.concatenate([ids for _, ids in epoch])
    assert len(ids) == 3000 and len(np.unique(ids)) == 3000  # every event once, none from the broken epoch twice


@pytest.mark.parametrize("how", ["interrupted", "stopped"])
def test_the_fit_after_an_interrupted_one_reads_its_chunks_in_order(two_files, how):
    """The interrupted pass's batches, served again by the next fit, come in order: a 6-chunk file was
    read 20-26 times in that epoch (their indices fall anywhere in the new fit's order)."""
    seq = _make(two_files, batch_size=50, chunk_size=300, seed=4, cache_chunks=2)
    n_chunks = len(seq.reader)
    model = _model(seq.num_features)

    class Stop(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs=None) -> None:
            if batch == 8:
                self.model.stop_training = True

    try:
        model.fit(seq, epochs=2, verbose=0, callbacks=[_Interrupt() if how == "interrupted" else Stop()])
    except KeyboardInterrupt:
        pass
    gc.collect()
    before = seq.chunk_reads
    stats = LoaderStats(seq)
    model.fit(seq, epochs=2, verbose=0, callbacks=[stats])
    # the new fit serves the broken epoch whole, its chunks in two runs (the backends' read-ahead may read
    # a chunk or two more): 10 to 13 reads here, 17 to 18 when its batches came back in the new order
    assert seq.chunk_reads - before - n_chunks <= n_chunks + 4
    assert stats.history[1]["chunks_read"] == n_chunks and stats.history[1]["chunks_reread"] == 0


def test_predict_lines_up_with_the_labels_and_the_files(two_files):
    kw = {"batch_size": 64, "chunk_size": 300, "validation_split": 0.3, "seed": 5}
    train = _make(two_files, subset="training", **kw)
    val = _make(two_files, subset="validation", specs=train.specs, **kw)
    assert not val.shuffle  # in order by default
    col = val.feature_names.index("uid")
    model = keras.Sequential([keras.Input((val.num_features,)), keras.layers.Lambda(lambda x: x[:, col : col + 1])])
    predicted = model.predict(val, verbose=0).ravel().astype(np.int64)
    np.testing.assert_array_equal(predicted, model.predict(val, verbose=0).ravel().astype(np.int64))
    labels = np.concatenate([val[i][1] for i in range(len(val))])
    np.testing.assert_array_equal(labels, np.where(predicted < 1_000_000, 1.0, 0.0))
    # in the files' order: chunk after chunk, each file's share of it entry after entry
    plan = val.prepared.plan
    expected = [
        i * 1_000_000 + np.arange(plan.starts[k, i], plan.starts[k, i] + plan.counts[k, i])
        for k in range(plan.n_chunks)
        for i in range(len(two_files))
    ]
    np.testing.assert_array_equal(predicted, np.concatenate(expected))
