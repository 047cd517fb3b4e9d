"""The first pass on an executor: serial, threads and a real Dask LocalCluster give identical specs."""

from __future__ import annotations

import json
import logging
import pickle
import sys
import types
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from mlaas4hep import ParameterError, SpecBuilder, Specs
from mlaas4hep.inputs.executors import map_files


@pytest.fixture(scope="module")
def five_files(tmp_path_factory: pytest.TempPathFactory, make_tree: Callable[..., Path]) -> list[Path]:
    d = tmp_path_factory.mktemp("dask")
    return [make_tree(d / f"f{i}.root", 150 + 70 * i, seed=i, file_id=i % 2, basket=64) for i in range(5)]


def _same(a: Specs, b: Specs) -> None:
    """Equal on every field (== of the frozen dataclasses) and byte for byte as JSON."""
    assert a == b
    assert list(a.branches) == list(b.branches)
    assert json.dumps(a.to_dict(), sort_keys=True) == json.dumps(b.to_dict(), sort_keys=True)


def _build(files: list[Path], executor: Any, **kw: Any) -> Specs:
    # step_size in events, so each file is scanned in several steps (the partials merge within files too)
    return SpecBuilder(files, exclude=["run"], step_size=100, executor=executor, **kw).scan()


def test_threads_and_pools_equal_serial(five_files: list[Path]) -> None:
    serial = _build(five_files, "serial")
    _same(serial, _build(five_files, None))
    _same(serial, _build(five_files, "threads"))
    with ThreadPoolExecutor(3) as pool:
        _same(serial, _build(five_files, pool))
    # file order matters for the file list; the branch statistics do not depend on the split
    reverse = _build(five_files[::-1], "threads")
    assert reverse.files == serial.files[::-1]
    for name, spec in serial.branches.items():
        other = reverse.branches[name]
        assert (other.count, other.min, other.max, other.length_hist) == (
            spec.count,
            spec.min,
            spec.max,
            spec.length_hist,
        )
        assert other.mean == pytest.approx(spec.mean, rel=1e-12) and other.m2 == pytest.approx(spec.m2, rel=1e-9)


def test_merge_of_parts_equals_the_whole(five_files: list[Path]) -> None:
    whole = _build(five_files, "serial")
    left, right = _build(five_files[:2], "serial"), _build(five_files[2:], "serial")
    merged = left.merge(right)
    assert merged.files == whole.files
    for name, spec in whole.branches.items():
        other = merged.branches[name]
        assert (other.count, other.min, other.max, other.length_hist) == (
            spec.count,
            spec.min,
            spec.max,
            spec.length_hist,
        )
        assert other.mean == pytest.approx(spec.mean, rel=1e-12) and other.std == pytest.approx(spec.std, rel=1e-9)


def test_builder_pickles_without_its_executor(five_files: list[Path]) -> None:
    with ThreadPoolExecutor(1) as pool:
        builder = SpecBuilder(five_files, executor=pool)
        copy = pickle.loads(pickle.dumps(builder))
    assert copy.executor is None and copy.sources == builder.sources


def test_bad_executor_is_a_parameter_error(five_files: list[Path]) -> None:
    with pytest.raises(ParameterError, match="executor must be"):
        SpecBuilder(five_files, executor="processes").build()
    with pytest.raises(ParameterError, match="executor must be"):
        map_files(str, [1], executor=object())


def test_a_failing_file_raises_its_error(five_files: list[Path], tmp_path: Path) -> None:
    bad = tmp_path / "missing.root"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SpecBuilder([*five_files, bad], executor="threads").build()


def test_progress_is_logged_without_a_bar(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mlaas4hep.inputs.executors"):
        assert map_files(abs, list(range(-30, 0)), executor="threads", progress=False, desc="numbers") == list(
            range(30, 0, -1)
        )
    assert "numbers: 30 of 30 done" in caplog.text


def test_progress_bar_counts_every_item(monkeypatch: pytest.MonkeyPatch) -> None:
    """With tqdm installed, progress=True draws a bar that counts every item and is closed at the end."""
    bars: list[Bar] = []

    class Bar:
        def __init__(self, **kwargs: Any) -> None:
            self.kwargs, self.n, self.closed = kwargs, 0, False
            bars.append(self)

        def update(self, n: int) -> None:
            self.n += n

        def close(self) -> None:
            self.closed = True

    monkeypatch.setitem(sys.modules, "tqdm.auto", types.SimpleNamespace(tqdm=Bar))
    assert map_files(abs, [-1, -2, -3], executor="serial", progress=True, desc="numbers") == [1, 2, 3]
    assert [(b.kwargs, b.n, b.closed) for b in bars] == [({"total": 3, "desc": "numbers", "unit": "file"}, 3, True)]


@pytest.mark.slow
# distributed's nanny and worker processes may warn about their own shutdown (closed comms, leaked
# semaphores in the children); those are the cluster's, not ours
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore:.*[Cc]los.*:UserWarning:distributed.*")
def test_local_cluster_with_two_processes_equals_serial(five_files: list[Path]) -> None:
    distributed = pytest.importorskip("distributed")
    serial = _build(five_files, "serial")
    with (
        distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None, silence_logs=logging.ERROR
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        on_dask = _build(five_files, client)
        # the whole build (fingerprints and branch check too) runs there
        built = SpecBuilder(five_files, exclude=["run"], step_size=100, executor=client, progress=True).scan()
        workers = client.run(lambda: __import__("os").getpid())
    assert len(set(workers.values())) == 2
    _same(serial, on_dask)
    _same(serial, built)
