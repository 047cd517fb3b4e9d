"""Thousands of files: metadata read once, a few files open at a time, memory bounded; a shared specs cache."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uproot

pytest.importorskip("keras")

import mlaas4hep.inputs.formats.root
from mlaas4hep import RootSequence, SpecBuilder, Specs
from mlaas4hep.inputs.sources import FileSource

N_FILES, ENTRIES = 1000, 20
ID = 1000  # uid = file * ID + entry


@pytest.fixture(scope="module")
def many_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("many")
    paths = []
    for i in range(N_FILES):
        path = d / f"f{i:04d}.root"
        with uproot.recreate(path) as f:
            f["Events"] = {
                "uid": np.arange(i * ID, i * ID + ENTRIES, dtype=np.int64),
                "x": np.full(ENTRIES, i, dtype=np.float32),
            }
        paths.append(path)
    return paths


class _Handles:
    """Wraps ``open_tree`` to count opens and the files open at the same time."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.opens = 0
        self.now = 0
        self.peak = 0
        self._lock = threading.Lock()
        original = mlaas4hep.inputs.formats.root.open_tree

        def counting(source: FileSource, *args: Any) -> tuple[Any, Any]:
            file, obj = original(source, *args)
            close = file.close

            def counted_close() -> None:
                with self._lock:
                    self.now -= 1
                close()

            file.close = counted_close
            with self._lock:
                self.opens += 1
                self.now += 1
                self.peak = max(self.peak, self.now)
            return file, obj

        monkeypatch.setattr(mlaas4hep.inputs.formats.root, "open_tree", counting)  # every ROOT file is opened there

    def reset(self) -> None:
        self.opens, self.peak = 0, self.now


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.slow  # about 15 s: 1000 files scanned, then an epoch that reopens each group's files
@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="counts file descriptors in /proc")
def test_an_epoch_over_1000_files_keeps_few_files_open(
    many_files: list[Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    handles = _Handles(monkeypatch)
    fds = _fds()
    cache = tmp_path / "specs.json"
    specs = SpecBuilder(many_files, branches=["uid", "x"], executor="threads", progress=False).build(cache)
    # the branch check (and fingerprint), then the scan: two opens per file, each closed at once
    assert handles.opens == 2 * N_FILES and handles.now == 0
    assert handles.peak <= (os.cpu_count() or 1)
    assert [f.entries for f in specs.files] == [ENTRIES] * N_FILES

    handles.reset()
    kw = {"labels": [1.0] * 500 + [0.0] * 500, "branches": ["uid", "x"], "normalization": None}
    seq = RootSequence(
        many_files, specs=specs, batch_size=100, chunk_size=1000, files_per_chunk=50, max_open_files=16, seed=1, **kw
    )
    assert handles.opens == N_FILES  # each file opened once, to check it, reading no data
    plan = seq.reader.plan
    assert plan.n_chunks == 20 and np.count_nonzero(plan.counts, axis=1).max() <= 2 * 50
    # round-robin groups keep both labels in every chunk
    labels = np.asarray(kw["labels"])
    for k in range(plan.n_chunks):
        share = plan.counts[k] @ labels / plan.counts[k].sum()
        assert 0.4 <= share <= 0.6

    rss = _rss_mb()
    col = seq.feature_names.index("uid")
    served = []
    for i in np.random.default_rng(0).permutation(len(seq)):
        x, y = seq[int(i)]
        ids = x[:, col].astype(np.int64)
        np.testing.assert_array_equal(y, (ids // ID < 500).astype(np.float32))
        served.append(ids)
        assert handles.now <= 16 + 1 and _fds() <= fds + 16 + 8
    seq.on_epoch_end()
    ids = np.sort(np.concatenate(served))
    np.testing.assert_array_equal(ids, np.sort((np.arange(N_FILES)[:, None] * ID + np.arange(ENTRIES)).ravel()))
    assert handles.peak <= 16 + 1  # only a few files open at a time ...
    assert handles.opens <= 2 * (plan.n_chunks + 1) * 50  # ... and each chunk opens only its group's files
    assert _rss_mb() - rss < 200
    seq.close()
    assert handles.now == 0 and _fds() <= fds + 4

    handles.reset()  # a second sequence on the same cache: the cache is checked, nothing is scanned again
    again = RootSequence(many_files, specs=cache, batch_size=100, chunk_size=1000, files_per_chunk=50, seed=1, **kw)
    assert handles.opens == N_FILES and handles.now == 0 and again.specs == specs


def test_concurrent_readers_of_a_shared_specs_cache(two_files: list[Path], tmp_path: Path) -> None:
    specs = SpecBuilder(two_files).build()
    path = tmp_path / "shared.json"
    specs.save(path)
    errors: list[BaseException] = []
    stop = threading.Event()

    def write() -> None:
        for _ in range(60):
            specs.save(path)
        stop.set()

    def read() -> None:
        while not stop.is_set():
            try:
                assert Specs.load(path) == specs
            except BaseException as err:  # noqa: BLE001 - collected and re-raised in the test thread
                errors.append(err)
                return

    threads = [threading.Thread(target=write), *(threading.Thread(target=read) for _ in range(2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared.json"]  # no temporary file left
