"""Exactly once: over an epoch every selected event (file, entry) is served once, with its label.

Property tests (hypothesis) over numbers of files and entries, chunk and batch
sizes, nevts, validation splits and shuffling; then the same under
``model.fit`` with two worker threads and with two worker processes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

keras = pytest.importorskip("keras")

from conftest import keras_probe, shared_tree  # noqa: E402

from mlaas4hep import ParameterError, RootSequence  # noqa: E402

ID = 1_000_000  # uid = file_id * ID + entry


def _expected(entries: list[int], nevts: int, split: float | None, subset: str | None) -> set[int]:
    """The uids a sequence must serve, from the documented rules (not the library's code)."""
    total = sum(entries)
    n_use = total if nevts == -1 else nevts
    # nevts is split in proportion (largest remainder, ties to the first file), in exact integers
    used = [n_use * e // total for e in entries]
    left = n_use - sum(used)
    for i in sorted(range(len(entries)), key=lambda i: (-(n_use * entries[i] - used[i] * total), i))[:left]:
        used[i] += 1
    uids = set()
    for f, n in enumerate(used):
        n_val = int(n * split) if split else 0
        lo, hi = (n - n_val, n) if subset == "validation" else (0, n - n_val)
        uids.update(f * ID + np.arange(lo, hi))
    return uids


def _epoch(seq: RootSequence, order) -> list[tuple[np.ndarray, np.ndarray]]:
    """One epoch's batches asked for in ``order``, returned in the order of the epoch's stream.

    A shuffled sequence gives the ``s``-th index asked for the ``s``-th batch of
    the stream; one in order gives index ``i`` batch ``i``.
    """
    col = seq.feature_names.index("uid")
    out = []
    for i in order:
        x, y = seq[int(i)]
        out.append((x[:, col].astype(np.int64), y))
    seq.on_epoch_end()
    return out if seq.shuffle else [out[j] for j in np.argsort(np.asarray(order))]


def _check_once(batches, expected: set[int], batch_size: int) -> np.ndarray:
    ids = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    assert len(ids) == len(expected) and set(ids.tolist()) == expected  # each exactly once
    np.testing.assert_array_equal(labels, (ids // ID).astype(np.float32))  # its file's label
    assert all(len(b[0]) == batch_size for b in batches[:-1]) and 0 < len(batches[-1][0]) <= batch_size
    return ids


@st.composite
def setups(draw):
    entries = draw(st.lists(st.integers(1, 300), min_size=1, max_size=4))
    total = sum(entries)
    chunk_size = draw(st.one_of(st.just(-1), st.integers(1, 400)))
    batch_size = draw(st.integers(1, min(chunk_size if chunk_size > 0 else total, 64)))
    nevts = draw(st.one_of(st.just(-1), st.integers(1, total)))
    split = draw(st.one_of(st.none(), st.floats(0.05, 0.6)))
    return {
        "entries": entries,
        "chunk_size": chunk_size,
        "batch_size": batch_size,
        "nevts": nevts,
        "validation_split": split,
        "shuffle": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


def _make(setup: dict, subset: str | None = None, **kw) -> RootSequence:
    files = [shared_tree(i, n) for i, n in enumerate(setup["entries"])]
    args = {k: v for k, v in setup.items() if k != "entries"}
    return RootSequence(
        files,
        labels=[float(i) for i in range(len(files))],
        branches=["uid", "MET_pt", "Jet_pt"],
        normalization=None,
        subset=subset if setup["validation_split"] else None,
        **{**args, **kw},
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(setup=setups(), order_seed=st.integers(0, 1000))
def test_every_selected_event_exactly_once(setup, order_seed):
    split = setup["validation_split"]
    subsets = ["training", "validation"] if split else [None]
    served: dict[str | None, np.ndarray] = {}
    for subset in subsets:
        expected = _expected(setup["entries"], setup["nevts"], split, subset)
        if not expected:
            with pytest.raises(ParameterError, match="no events"):
                _make(setup, subset)
            served[subset] = np.zeros(0, np.int64)
            continue
        seq = _make(setup, subset)
        assert seq.n_events == len(expected) and len(seq) == -(-len(expected) // setup["batch_size"])
        rng = np.random.default_rng(order_seed)
        # Keras asks for the batches in any order; the stream is the same
        first = _epoch(seq, rng.permutation(len(seq)))
        ids = _check_once(first, expected, setup["batch_size"])
        second = _epoch(seq, range(len(seq)))
        ids2 = _check_once(second, expected, setup["batch_size"])
        if not setup["shuffle"]:
            np.testing.assert_array_equal(ids, ids2)
        elif len(expected) >= 8 and len(seq) > 1:
            assert not np.array_equal(ids, ids2)  # another epoch, another order
        # the same seed gives the same batches, batch by batch
        again = _epoch(_make(setup, subset), rng.permutation(len(seq)))
        for (a, ya), (b, yb) in zip(first, again, strict=True):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(ya, yb)
        served[subset] = ids
    if split:
        train, val = set(served["training"].tolist()), set(served["validation"].tolist())
        assert not train & val
        assert train | val == _expected(setup["entries"], setup["nevts"], None, None)


# -- under model.fit ---------------------------------------------------------------------------
ENTRIES = [150, 220, 90]
BATCH, CHUNK, EPOCHS = 16, 64, 2


class _Recorded(RootSequence):
    """Writes, for every batch it serves, when, its index and its uids to a file (works across processes)."""

    record_dir: str = ""

    def __getitem__(self, index):
        X, y = super().__getitem__(index)
        col = self.feature_names.index("uid")
        name = f"{time.monotonic_ns():020d}-{int(index):05d}-{os.getpid()}-{np.random.default_rng().integers(2**62)}"
        np.save(Path(self.record_dir) / f"{name}.npy", np.stack([X[:, col].astype(np.int64), y.astype(np.int64)]))
        return X, y


def _model(idim: int):
    model = keras.Sequential([keras.Input((idim,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    return model


@pytest.mark.parametrize("use_multiprocessing", [False, True], ids=["threads", "processes"])
def test_fit_with_two_workers_serves_each_event_once_per_epoch(tmp_path, use_multiprocessing):
    files = [shared_tree(10 + i, n) for i, n in enumerate(ENTRIES)]
    seq = _Recorded(
        files,
        labels=[0.0, 1.0, 0.0],
        branches=["uid", "MET_pt", "Jet_pt"],
        normalization=None,
        batch_size=BATCH,
        chunk_size=CHUNK,
        seed=11,
        workers=2,
        use_multiprocessing=use_multiprocessing,
    )
    seq.record_dir = str(tmp_path)
    _model(seq.num_features).fit(seq, epochs=EPOCHS, verbose=0)
    paths = sorted(tmp_path.glob("*.npy"))  # in the order they were served
    records = [(int(p.name.split("-")[1]), int(p.name.split("-")[2]), np.load(p)) for p in paths]
    n = len(seq)
    # Keras' probe (of batches 0 and 1 with TensorFlow), from this process, forgotten before the first epoch ...
    indices, n_probe = keras_probe()
    probe, served = records[:n_probe], records[n_probe:]
    assert indices in (None, [r[0] for r in probe]) and all(r[1] == os.getpid() for r in probe)
    if use_multiprocessing and seq.use_multiprocessing:  # ... the epochs are served by Keras' worker processes
        assert all(r[1] != os.getpid() for r in served[: EPOCHS * n])
    # ... whose first batches are the probe's: the same stream, the chunk read once
    for _, _, a in probe:
        assert any(np.array_equal(a, b) for _, _, b in served[:n])
    assert len(served) >= EPOCHS * n  # and perhaps the first batches of a next epoch, asked for ahead
    everything = {f * ID + e for f, n_f in enumerate(ENTRIES) for e in range(n_f)}
    for epoch in range(EPOCHS):
        batches = served[epoch * n : (epoch + 1) * n]
        assert sorted(r[0] for r in batches) == list(range(n))  # every index once
        data = np.concatenate([r[2] for r in batches], axis=1)
        ids, labels = data[0] - 10 * ID, data[1]
        assert len(ids) == len(everything) and set(ids.tolist()) == everything
        np.testing.assert_array_equal(labels, np.where(ids // ID == 1, 1, 0))
