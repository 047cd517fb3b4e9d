"""RootSequence(workers=N): chunks read and flattened by forked worker processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import write_tree

from mlaas4hep import RootSequence
from mlaas4hep.errors import FileAccessError, MLaaS4HEPError
from mlaas4hep.stream.workers import fork_supported

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="worker processes are forked")


@pytest.fixture(scope="module")
def three_files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    d = tmp_path_factory.mktemp("workers")
    return [
        str(write_tree(d / "a.root", 700, seed=11, file_id=0, basket=200)),
        str(write_tree(d / "b.root", 1100, seed=12, file_id=1, basket=300)),
        str(write_tree(d / "c.root", 500, seed=13, file_id=2, basket=250)),
    ]


def _batches(seq: RootSequence, epochs: int = 2) -> list[tuple[np.ndarray, ...]]:
    out = []
    for _ in range(epochs):
        seq.on_epoch_begin()
        out.extend(seq[i] for i in range(len(seq)))
        seq.on_epoch_end()
    return out


def _serve_epoch(seq: RootSequence) -> None:
    for i in range(len(seq)):
        seq[i]


def _flat(batch: tuple) -> list[np.ndarray]:
    x = batch[0]
    parts = [x["features"], x["mask"]] if isinstance(x, dict) else [x]
    return parts + list(batch[1:])


@pytest.mark.parametrize(
    "options",
    [
        {"shuffle": True},
        {"shuffle": False},
        {"balance_classes": True, "mask_output": True, "length_quantile": 0.9},
        {
            "cut": "(MET_pt > 20) & any(Jet_pt > 30)",
            "aliases": {"HT": "sum(Jet_pt)"},
            "branches": ["MET_pt", "Jet_*", "HT"],
        },
    ],
    ids=["shuffled", "in-order", "weights-and-mask", "cut-and-alias"],
)
def test_workers_serve_the_same_batches_as_threads(three_files, options):
    kw = {"labels": [1, 0, 1], "batch_size": 64, "chunk_size": 400, "seed": 3, **options}
    with_threads = RootSequence(three_files, **kw)
    with_workers = RootSequence(three_files, workers=2, specs=with_threads.specs, **kw)
    try:
        expected, got = _batches(with_threads), _batches(with_workers)
        assert with_workers.pipeline.workers is not None and len(with_workers.pipeline.workers.groups) == 2
        assert len(expected) == len(got) == 2 * len(with_threads)
        for a, b in zip(expected, got, strict=True):
            for u, v in zip(_flat(a), _flat(b), strict=True):
                np.testing.assert_array_equal(u, v)
        # each chunk once per epoch, and perhaps the next epoch's first ones read ahead
        n = 2 * len(with_workers.reader)
        assert n <= with_workers.chunk_reads <= n + with_workers.prefetch
    finally:
        with_threads.close()
        with_workers.close()


def test_more_workers_than_files_start_one_per_file(two_files):
    seq = RootSequence(two_files, labels=[1, 0], chunk_size=500, batch_size=100, workers=4)
    try:
        seq[0]
        assert seq.pipeline.workers is not None and sorted(i for g in seq.pipeline.workers.groups for i in g) == [0, 1]
        assert seq.worker_processes == 2 and seq.workers == 1  # Keras fetches in one thread
        assert len(seq.pipeline.workers.groups) == 2
    finally:
        seq.close()


def test_close_stops_the_workers(two_files):
    seq = RootSequence(two_files, labels=[1, 0], chunk_size=500, batch_size=100, workers=2)
    seq[0]
    processes = seq.pipeline.workers.processes
    assert all(p.is_alive() for p in processes)
    seq.close()
    assert not any(p.is_alive() for p in processes)


def test_an_error_in_a_worker_names_the_file(three_files, tmp_path):
    files = [shutil.copy(f, tmp_path / os.path.basename(f)) for f in three_files]
    seq = RootSequence(files, labels=[1, 0, 1], chunk_size=400, batch_size=100, workers=2)
    try:
        with open(files[1], "r+b") as f:  # the file breaks after the sequence was made
            f.truncate(2000)
        with pytest.raises(FileAccessError, match=r"b\.root"):
            _serve_epoch(seq)
    finally:
        seq.close()


def test_a_worker_that_dies_is_reported(two_files):
    seq = RootSequence(two_files, labels=[1, 0], chunk_size=300, batch_size=100, workers=2, prefetch=0)
    try:
        seq[0]
        worker = seq.pipeline.workers.processes[0]
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(5)
        with pytest.raises(MLaaS4HEPError, match=r"worker process 0 .* died"):
            _serve_epoch(seq)
    finally:
        seq.close()


def test_keras_multiprocessing_or_one_file_fall_back_sensibly(two_files):
    seq = RootSequence(two_files, labels=[1, 0], chunk_size=500, batch_size=100, workers=2, use_multiprocessing=True)
    assert seq.worker_processes == 0 and seq.workers == 2  # Keras' own processes are the parallelism then
    one = RootSequence(two_files[:1], labels=[1], chunk_size=500, batch_size=100, workers=2)
    try:
        one[0]
        assert one.pipeline.workers is not None and one.pipeline.workers.groups == [[0]]
    finally:
        one.close()
        seq.close()


def test_batches_kept_from_shared_buffers_stay_intact(two_files):
    """Batches are views of the shared buffers too; a buffer is refilled only once its batches are let go."""
    kw = {"labels": [1, 0], "batch_size": 50, "chunk_size": 300, "seed": 3, "cache_chunks": 1, "prefetch": 1}
    seq, reference = RootSequence(two_files, workers=2, **kw), RootSequence(two_files, **kw)
    try:
        n = len(seq)
        expected = [tuple(np.array(a, copy=True) for a in reference[i % n]) for i in range(4 * n)]
        kept = [seq[i] for i in range(n)]  # the first epoch, held
        seq.on_epoch_end()
        assert kept[0][0].base is not None  # a view
        assert not kept[0][0].flags.writeable
        for i in range(n, 3 * n):  # two more epochs, dropped at once: the slots still free are reused
            np.testing.assert_array_equal(seq[i % n][0], expected[i][0])
            if i % n == n - 1:
                seq.on_epoch_end()
        for got, want in zip(kept, expected, strict=False):
            for a, b in zip(got, want, strict=True):
                np.testing.assert_array_equal(a, b)
        assert seq.pipeline.buffers.lent  # the slots of the kept batches were not refilled
        del kept, got, a
        assert all(seq.pipeline.buffers.unused(s) for s in seq.pipeline.buffers.lent)  # free to take back
        for i in range(n):  # and taken back when needed
            np.testing.assert_array_equal(seq[i][0], expected[3 * n + i][0])
    finally:
        seq.close()
        reference.close()


_HELD_LOCK_CHILD = """
import sys, threading, time
import uproot.behaviors.TBranch as tbranch
from mlaas4hep import RootSequence

files = sys.argv[1:]
seq = RootSequence(files, labels=[1, 0], batch_size=100, chunk_size=700, seed=3, workers=2)
held = threading.Event()

def hold():  # another thread in the middle of an uproot read while the workers are forked
    with tbranch._basket_arrays_lock:
        held.set()
        time.sleep(1.0)

threading.Thread(target=hold).start()
held.wait()
n = sum(len(seq[i][0]) for i in range(len(seq)))
seq.close()
print("served", n, "workers", seq.pipeline.worker_processes)
"""


@pytest.mark.skipif(not fork_supported(), reason="worker processes are forked on Linux only")
def test_workers_forked_while_another_thread_reads_do_not_hang(two_files):
    """uproot's module lock held by another thread at the fork stayed held in the child: its first read hung."""
    child = subprocess.Popen(
        [sys.executable, "-c", _HELD_LOCK_CHILD, *map(str, two_files)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its worker processes too are stopped if it hangs
    )
    try:
        out, err = child.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        pytest.fail("the sequence hung: a worker forked while another thread held uproot's lock")
    assert child.returncode == 0, err[-2000:]
    assert "served 3000 workers 2" in out
