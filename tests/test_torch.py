"""The PyTorch face: RootDataset through DataLoader workers and distributed ranks, every event once per epoch."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import pickle
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import uproot

torch = pytest.importorskip("torch")

# Python >= 3.12 warns when a DataLoader forks its workers from a process with threads (the pipeline's,
# TensorFlow's): they read files and never touch those threads' locks
pytestmark = pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")

from torch.utils.data import DataLoader  # noqa: E402

from mlaas4hep import DataWarning, ParameterError  # noqa: E402
from mlaas4hep.stream.pipeline import Pipeline  # noqa: E402
from mlaas4hep.torch import RootDataset, to_tensors  # noqa: E402

ID = 1_000_000  # uid = file_id * ID + entry
EVERYTHING = set(range(1200)) | set(range(ID, ID + 1800))  # the events of the two_files fixture
JOIN_TIMEOUT = 120  # seconds a distributed test waits for its processes


def _make(files, **kw) -> RootDataset:
    kw = {
        "labels": [1, 0],
        "branches": ["uid", "MET_pt", "Jet_pt"],
        "normalization": None,
        "batch_size": 64,
        "chunk_size": 300,
        "seed": 5,
        **kw,
    }
    return RootDataset(files, **kw)


def _epoch(ds: RootDataset, epoch: int, loader: DataLoader | None = None, **kw) -> list[tuple[np.ndarray, np.ndarray]]:
    """The uids and labels of each batch of one epoch, through ``loader`` or a new DataLoader made with ``kw``."""
    col = ds.feature_names.index("uid")
    ds.set_epoch(epoch)
    loader = DataLoader(ds, batch_size=None, **kw) if loader is None else loader
    return [(x[:, col].numpy().astype(np.int64), y.numpy()) for x, y in loader]


def _check_labels(batches) -> np.ndarray:
    ids = np.concatenate([ids for ids, _ in batches])
    labels = np.concatenate([y for _, y in batches])
    np.testing.assert_array_equal(labels, np.where(ids < ID, 1.0, 0.0))  # sig.root is label 1
    return ids


def test_importing_mlaas4hep_imports_no_torch_and_the_face_imports_pytorch_itself():
    code = (
        "import sys, mlaas4hep\n"
        "assert 'torch' not in sys.modules, 'import mlaas4hep imported torch'\n"
        "import mlaas4hep.torch as face, torch\n"
        "assert face.torch is torch is sys.modules['torch'] and hasattr(torch, 'from_numpy')\n"
        "assert 'mlaas4hep' not in torch.__file__, torch.__file__\n"
        "assert 'keras' not in sys.modules and 'tensorflow' not in sys.modules, 'the torch face imported Keras'\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


def test_batches_are_tensors_of_every_event_once(two_files):
    ds = _make(two_files)
    assert ds.rank == 0 and ds.world_size == 1 and "rank 0 of 1" in repr(ds)
    x, y = next(iter(ds))
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.shape == (64, ds.num_features)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32 and y.shape == (64,)
    batches = _epoch(ds, 0)
    assert len(batches) == len(ds) == ds.num_batches == 47 and ds.n_events == ds.total_events == 3000
    ids = _check_labels(batches)
    assert len(ids) == 3000 and set(ids.tolist()) == EVERYTHING


def test_weights_masks_targets_and_no_labels(two_files):
    x, y, w = next(iter(_make(two_files, file_weights=[2.0, 1.0], shuffle=False)))
    assert isinstance(w, torch.Tensor) and w.shape == (64,)
    np.testing.assert_array_equal(w.numpy(), np.where(y.numpy() == 1, 2.0, 1.0))
    masked = _make(two_files, mask_output=True)
    x, _ = next(iter(masked))
    assert set(x) == {"features", "mask"} and all(isinstance(t, torch.Tensor) for t in x.values())
    assert x["mask"].dtype == torch.float32 and x["mask"].shape == x["features"].shape
    x, _ = next(iter(DataLoader(masked, batch_size=None, num_workers=2, multiprocessing_context="fork")))
    assert set(x) == {"features", "mask"} and x["features"].shape == (64, masked.num_features)  # through a worker
    (x,) = next(iter(RootDataset(two_files, branches=["uid"], batch_size=10, chunk_size=100)))
    assert x.shape == (10, 1)
    regression = _make(two_files, labels=None, targets="MET_pt", branches=["uid"], shuffle=False)
    x, y = next(iter(regression))
    met = uproot.open(two_files[0])["Events"]["MET_pt"].array(library="np")
    np.testing.assert_array_equal(y.numpy(), met[x[:, 0].numpy().astype(np.int64)])


def test_to_tensors_makes_dicts_of_tensors_and_copies_views_unless_shared():
    base = np.arange(12, dtype=np.float32).reshape(6, 2)
    base.flags.writeable = False
    view = base[2:4]
    shared = to_tensors({"jets": view, "mask": np.ones(2, dtype=np.float32)}, share=True)
    assert shared["jets"].data_ptr() == view.__array_interface__["data"][0]  # the same memory
    own = to_tensors((view,), share=False)[0]
    assert own.data_ptr() != view.__array_interface__["data"][0]
    own.fill_(-1)  # the caller's own copy
    np.testing.assert_array_equal(base[2:4], [[4, 5], [6, 7]])


def test_a_loop_may_change_its_tensors_in_place(two_files):
    """With num_workers=0 the tensors are copies: the chunk the pipeline caches stays as it was."""
    kw = {"chunk_size": -1, "shuffle": False}
    ds, reference = _make(two_files, **kw), _make(two_files, **kw)
    for x, y in ds:
        x.mul_(-1)
        y.fill_(7)
    expected = list(reference)
    for (x, y), (x0, y0) in zip(ds, expected, strict=True):  # epoch 0 again: its one chunk is cached
        np.testing.assert_array_equal(x.numpy(), x0.numpy())
        np.testing.assert_array_equal(y.numpy(), y0.numpy())


def test_shared_tensors_keep_their_chunk_buffer_until_let_go(two_files, count_buffers):
    """A tensor made on a batch's memory holds the view, so its buffer is reused only once it is let go."""
    ds = _make(two_files, batch_size=50, chunk_size=300)
    pipeline = Pipeline(ds.prepared, ds.epoch_plan(), cache_chunks=1, prefetch=1)
    n = pipeline.epoch_plan.batches
    expected = [np.array(pipeline.batch(1, s).x) for s in range(n)]  # epoch 1: its chunks are made anew
    kept = [to_tensors(pipeline.batch(0, s).x, share=True) for s in range(n)]
    assert not pipeline.buffers.free  # no buffer went back to the pool while its tensors are held
    made = count_buffers()  # the buffers made from now on (epoch 0's are all held)
    for s in range(n):
        np.testing.assert_array_equal(to_tensors(pipeline.batch(1, s).x, share=True).numpy(), expected[s])
    # let go at once: reused (10 chunks; whether one is in the pool at the end depends on the read-ahead)
    assert pipeline.epoch_plan.n_chunks == 10 and len(made) <= pipeline.cache_chunks + pipeline.prefetch + 2 == 4
    again = Pipeline(ds.prepared, ds.epoch_plan())
    for s, tensor in enumerate(kept):
        np.testing.assert_array_equal(tensor.numpy(), again.batch(0, s).x)
    pipeline.close()
    again.close()


def test_two_workers_by_two_ranks_serve_every_event_once_per_epoch(two_files):
    ranks = [_make(two_files, rank=r, world_size=2) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == ranks[0].num_batches == 24  # DDP's ranks stay in step
    orders = []
    for epoch in (0, 1):
        served = []
        for ds in ranks:
            batches = _epoch(ds, epoch, num_workers=2, multiprocessing_context="fork")
            assert len(batches) == len(ds)
            assert sorted(len(ids) for ids, _ in batches)[1:] == [64] * 23  # only the rank's last batch is short
            ids = _check_labels(batches)
            assert len(ids) == ds.n_events == ds.num_events(2) == 1500  # each rank half of the events
            served.append(ids)
        everything = np.concatenate(served)
        assert len(everything) == 3000 and set(everything.tolist()) == EVERYTHING  # exactly once over all
        orders.append(everything)
    assert not np.array_equal(orders[0], orders[1])  # set_epoch: another shuffle


@pytest.mark.parametrize("context", ["spawn", "fork"])
def test_persistent_workers_follow_set_epoch(two_files, context):
    ds = _make(two_files)
    loader = DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True, multiprocessing_context=context)
    reference = _make(two_files)
    served = []
    for epoch in (0, 1, 0):
        got = _epoch(ds, epoch, loader)  # the same workers, told the epoch through shared memory
        want = _epoch(reference, epoch, num_workers=2, multiprocessing_context="fork")
        assert len(got) == len(want)
        for (a, ya), (b, yb) in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(ya, yb)
        served.append(np.concatenate([ids for ids, _ in got]))
    assert not np.array_equal(served[0], served[1]) and np.array_equal(served[0], served[2])


def test_a_worker_reads_only_its_chunks(two_files):
    kw = {"batch_size": 50, "chunk_size": 300}
    shards = [_make(two_files, rank=r, world_size=4, **kw) for r in range(4)]
    for ds in shards:
        assert len(list(ds)) == len(ds)
        ds.close()
    # 10 chunks of 300 over 4 shards of 750 events: each touches at most 4 (its edges are its neighbours'),
    # plus the 2 it reads ahead of the next epoch
    assert all(ds.chunk_reads <= 4 + 2 for ds in shards)


def test_splits_and_cuts(two_files):
    kw = {"validation_split": 0.25, "cut": "MET_pt > 20"}
    train = _make(two_files, subset="training", **kw)
    val = _make(two_files, subset="validation", specs=train.specs, **kw)
    assert not val.shuffle
    t = _check_labels(_epoch(train, 0, num_workers=2, multiprocessing_context="fork"))
    v = _check_labels(_epoch(val, 0))
    passing = set()
    for f, path in enumerate(two_files):
        met = uproot.open(path)["Events"]["MET_pt"].array(library="np")
        passing |= set((f * ID + np.flatnonzero(met > 20)).tolist())
    assert not set(t.tolist()) & set(v.tolist()) and set(t.tolist()) | set(v.tolist()) == passing
    assert len(t) == train.total_events and len(v) == val.total_events


def test_a_plain_pytorch_loop_learns(two_files):
    torch.manual_seed(0)
    kw = {"labels": [1, 0], "branches": ["MET_pt", "Jet_pt", "Jet_eta"], "batch_size": 50, "seed": 2}
    train = RootDataset(two_files, chunk_size=600, validation_split=0.2, subset="training", **kw)
    val = RootDataset(two_files, chunk_size=600, validation_split=0.2, subset="validation", specs=train.specs, **kw)
    model = torch.nn.Sequential(torch.nn.Linear(train.num_features, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    loader = DataLoader(train, batch_size=None, num_workers=2, multiprocessing_context="fork", persistent_workers=True)

    def val_loss() -> float:
        with torch.no_grad():
            return float(np.mean([loss_fn(model(x).squeeze(1), y).item() for x, y in val]))

    before, losses = val_loss(), []
    for epoch in range(4):
        train.set_epoch(epoch)
        epoch_losses = []
        for x, y in loader:
            loss = loss_fn(model(x).squeeze(1), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            epoch_losses.append(loss.item())
        losses.append(np.mean(epoch_losses))
    assert losses[-1] < losses[0] and val_loss() < before


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"rank": 0, "world_size": 2, "seed": None}, "seed is required with num_shards=2 \\(RootDataset: world_size"),
        ({"rank": 1}, "rank and world_size together"),
        ({"rank": 2, "world_size": 2}, "rank must be"),
        ({"rank": 0, "world_size": 0}, "world_size"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments_are_parameter_errors(two_files, kw, match):
    with pytest.raises(ParameterError, match=match):
        _make(two_files, **kw)
    ds = _make(two_files)
    with pytest.raises(ParameterError, match="epoch"):
        ds.set_epoch(-1)
    with pytest.raises(ParameterError, match="num_workers"):
        ds.num_events(-1)
    with pytest.raises(ParameterError, match="num_workers"):
        ds.worker_slots(-1)
    with pytest.raises(ParameterError, match="worker must be"):
        ds.epoch_plan(2, worker=2)
    assert ds.epoch_plan(6000, worker=5999).batches == 0  # more DataLoader workers than batches: idle ones


def test_pickled_keeps_its_epoch_and_batches(two_files):
    ds = _make(two_files)
    ds.set_epoch(3)
    first = next(iter(ds))
    copy = pickle.loads(pickle.dumps(ds))
    assert copy.epoch == 3 and copy.chunk_reads == 0  # no pipeline travels
    np.testing.assert_array_equal(next(iter(copy))[0].numpy(), first[0].numpy())
    copy.set_epoch(4)
    assert ds.epoch == 3


# -- torch.distributed: two processes on the loopback -------------------------------------------
def _distributed_rank(rank: int, port: int, files: list[str], out: str) -> None:
    """One rank: join the group, serve its shard to a DDP model for two epochs, save the uids it saw."""
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        ds = _make(files)  # rank and world size from torch.distributed
        assert (ds.rank, ds.world_size) == (rank, 2)
        col = ds.feature_names.index("uid")
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(ds.num_features, 1))
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-9)
        for epoch in (0, 1):
            ds.set_epoch(epoch)
            seen = []
            for x, y in DataLoader(ds, batch_size=None):
                seen.append(x[:, col].numpy().astype(np.int64))
                loss = torch.nn.functional.mse_loss(model(x).squeeze(1), y)  # gradients averaged over ranks
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            count = torch.tensor([sum(len(s) for s in seen)])
            torch.distributed.all_reduce(count)
            assert int(count) == ds.total_events
            np.save(Path(out) / f"rank{rank}-epoch{epoch}.npy", np.concatenate(seen))
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_two_distributed_processes_each_serve_half_and_together_all(two_files, tmp_path):
    context = multiprocessing.get_context("spawn")
    port, files = _free_port(), [str(f) for f in two_files]
    procs = [context.Process(target=_distributed_rank, args=(r, port, files, str(tmp_path))) for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=JOIN_TIMEOUT)
    for p in procs:
        if p.is_alive():
            p.terminate()
            p.join(timeout=10)
    assert [p.exitcode for p in procs] == [0, 0]
    for epoch in (0, 1):
        halves = [np.load(tmp_path / f"rank{r}-epoch{epoch}.npy") for r in (0, 1)]
        assert [len(h) for h in halves] == [1500, 1500]
        assert not set(halves[0].tolist()) & set(halves[1].tolist())
        assert set(np.concatenate(halves).tolist()) == EVERYTHING


def _zlib_in_worker(ds: RootDataset) -> str:
    from mlaas4hep import zlib_library

    return zlib_library()


def test_a_spawned_worker_decompresses_with_the_library_the_user_chose(two_files, monkeypatch):
    """use_zlib writes no environment variable: the choice travels with the pickled dataset."""
    from mlaas4hep.inputs.formats import decompression

    for name in ("_chosen", "_decided", "_ours"):  # put back after the test
        monkeypatch.setattr(decompression, name, getattr(decompression, name))
    ds = _make(two_files)
    decompression.use_zlib("isal")  # a fresh process decompresses with zlib until told otherwise
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
        assert pool.submit(_zlib_in_worker, ds).result(timeout=JOIN_TIMEOUT) == "isal"


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")  # 3 workers on 2 cores: fine here
@pytest.mark.parametrize("num_workers", [2, 3])
def test_a_dataset_in_the_files_order_keeps_it_through_dataloader_workers(two_files, num_workers):
    """The workers take the batches in turn, so that the DataLoader's round robin yields them in order."""
    test = _make(two_files, validation_split=0.2, subset="validation")
    assert test.shuffle is False
    alone = np.concatenate([ids for ids, _ in _epoch(test, 0)])
    batches = _epoch(test, 0, num_workers=num_workers, multiprocessing_context="fork")
    np.testing.assert_array_equal(np.concatenate([ids for ids, _ in batches]), alone)
    assert len(batches) == len(test) == test.num_batches == len(DataLoader(test, batch_size=None)) == 10
    assert test.num_events(num_workers) == len(alone) == 600
    assert [len(ids) for ids, _ in batches[:-1]] == [64] * (len(batches) - 1)  # only the last batch is short


def test_a_dataset_without_labels_is_served_in_the_files_order(two_files):
    ds = RootDataset(two_files, branches=["uid"], normalization=None, batch_size=64, chunk_size=300)
    assert ds.shuffle is False
    ids = np.concatenate([x[0][:, 0].numpy() for x in DataLoader(ds, batch_size=None)]).astype(np.int64)
    assert len(ids) == 3000 and set(ids.tolist()) == EVERYTHING
    assert (np.diff(ids[ids < ID]) == 1).all() and (np.diff(ids[ids >= ID]) == 1).all()  # each file in order


def test_torchruns_environment_without_a_process_group_is_refused(two_files, monkeypatch):
    """Every rank would serve every event: DDP would train on each event world_size times per epoch."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ParameterError, match=r"WORLD_SIZE=2 and RANK=1 are set \(torchrun\) but .* no process group"):
        _make(two_files)
    ds = _make(two_files, rank=0, world_size=1)  # told: this process serves every event
    assert (ds.rank, ds.world_size) == (0, 1) and ds.n_events == 3000
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun with one process: nothing to refuse
    assert _make(two_files).world_size == 1


def test_a_forgotten_set_epoch_is_warned_about_once(two_files):
    ds = _make(two_files)
    first = _epoch(ds, 0)
    with pytest.warns(DataWarning, match="epoch 0 is served again, in the same order: call set_epoch"):
        again = [(x[:, 0].numpy(), y.numpy()) for x, y in DataLoader(ds, batch_size=None)]
    assert len(again) == len(first)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        list(DataLoader(ds, batch_size=None))  # once only
        _epoch(ds, 1)  # a new epoch: no warning
        _epoch(_make(two_files, validation_split=0.2, subset="validation"), 0)
        _epoch(_make(two_files, validation_split=0.2, subset="validation"), 0)  # in order: the same order is meant


@pytest.mark.parametrize(("kw", "workers"), [({}, 0), ({"batch_size": 32}, 0), ({}, 1)])
def test_a_dataloader_that_batches_again_is_refused(two_files, kw, workers):
    """DataLoader's default batch_size=1 would stack the batches into a silent leading axis (1, 64, F)."""
    ds = _make(two_files)
    loader = DataLoader(ds, num_workers=workers, **kw, **({"multiprocessing_context": "fork"} if workers else {}))
    with pytest.raises(ParameterError, match="give the DataLoader batch_size=None: RootDataset serves whole batches"):
        next(iter(loader))
    x, _ = next(iter(ds))  # a plain loop over the dataset is its batches
    assert x.shape == (64, ds.num_features)


# -- len(), num_batches and the labels' dtype ----------------------------------------------------
def _batch_sets(batches) -> list[tuple[int, ...]]:
    """The events of each batch, in an order that does not depend on the order they came in."""
    return sorted(tuple(sorted(ids.tolist())) for ids, _ in batches)


@pytest.mark.filterwarnings("error:Length of IterableDataset:UserWarning")  # more batches than len() said
@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")  # 3 workers on 2 cores: fine here
@pytest.mark.parametrize("shuffle", [True, False])
def test_len_of_the_dataloader_is_the_batches_it_yields_with_any_workers(two_files, shuffle):
    ds = _make(two_files, shuffle=shuffle)
    served = {}
    for num_workers in (0, 1, 2, 3):
        context = {"multiprocessing_context": "fork"} if num_workers else {}
        loader = DataLoader(ds, batch_size=None, num_workers=num_workers, **context)
        assert len(loader) == len(ds) == ds.num_batches == 47  # ceil(3000 / 64), whatever the workers
        assert sum(len(ds.worker_slots(num_workers, w)) for w in range(max(num_workers, 1))) == 47
        batches = _epoch(ds, 0, loader)
        assert len(batches) == len(loader)
        assert sorted(len(ids) for ids, _ in batches) == [56] + [64] * 46  # only the last of the rank is short
        assert len(_check_labels(batches)) == 3000
        served[num_workers] = batches
    for num_workers in (1, 2, 3):  # the same batches, only their order may change
        assert _batch_sets(served[num_workers]) == _batch_sets(served[0])
    if shuffle:  # two workers: each a run of consecutive batches, one more for the first, reading its chunks
        assert [ds.worker_slots(2, w) for w in (0, 1)] == [range(24), range(23)]
        plans = [ds.epoch_plan(2, w) for w in (0, 1)]
        chunks = [{p[0] for s in range(plan.batches) for p in plan.pieces(0, s)} for plan in plans]
        assert chunks == [set(range(6)), set(range(5, 10))]  # 10 chunks of 300: 1536 and 1464 events
    else:  # in the files' order, whatever the workers
        order = np.concatenate([ids for ids, _ in served[0]])
        for num_workers in (1, 2, 3):
            np.testing.assert_array_equal(np.concatenate([ids for ids, _ in served[num_workers]]), order)


@pytest.mark.filterwarnings("error:Length of IterableDataset:UserWarning")
@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")  # 4 workers on 2 cores: fine here
def test_more_workers_than_batches_leaves_some_idle(two_files):
    ds = _make(two_files, batch_size=1000, chunk_size=1000, rank=1, world_size=2)  # 1500 events: 2 batches
    assert [len(ds.worker_slots(4, w)) for w in range(4)] == [1, 1, 0, 0]
    loader = DataLoader(ds, batch_size=None, num_workers=4, multiprocessing_context="fork")
    batches = _epoch(ds, 0, loader)
    assert len(batches) == len(loader) == len(ds) == 2
    assert sorted(len(ids) for ids, _ in batches) == [500, 1000]
    assert len(_check_labels(batches)) == ds.n_events == 1500


def test_num_batches_is_a_property_as_on_the_keras_face(two_files):
    ds = _make(two_files, rank=0, world_size=2)
    assert isinstance(type(ds).num_batches, property) and ds.num_batches == len(ds) == 24
    assert isinstance(type(ds).n_events, property) and ds.n_events == 1500


@pytest.mark.parametrize(
    ("kw", "dtype", "shape"),
    [
        ({"labels": [1, 0]}, torch.float32, (64,)),  # binary: BCEWithLogitsLoss
        ({"labels": [1, 0], "balance_classes": True}, torch.float32, (64,)),  # two classes found: still binary
        ({"labels": [1, 0], "num_classes": 3}, torch.int64, (64,)),  # class indices: CrossEntropyLoss
        ({"labels": [0, 2]}, torch.int64, (64,)),  # whole labels up to 2: three classes
        ({"labels": [0, 2], "one_hot": True}, torch.float32, (64, 3)),
        ({"labels": [0, 2.5]}, torch.float32, (64,)),  # not classes
        ({"labels": None, "targets": "MET_pt"}, torch.float32, (64,)),
        ({"labels": "flag"}, torch.float32, (64,)),  # a label branch without num_classes
    ],
)
def test_labels_are_int64_where_they_are_class_indices(two_files, kw, dtype, shape):
    ds = _make(two_files, **kw)
    _, y, *_ = next(iter(ds))
    assert ds.y_dtype == y.dtype == dtype and tuple(y.shape) == shape
    assert _make(two_files, labels=None, branches=["uid"]).y_dtype is None


@pytest.fixture(scope="module")
def three_files(two_files, tmp_path_factory, make_tree) -> list:
    """The two files and a third, of 600 entries whose uids start at 2 * ID: three classes 0, 1, 2."""
    return [*two_files, make_tree(tmp_path_factory.mktemp("three") / "third.root", 600, seed=3, file_id=2)]


def test_a_cross_entropy_step_and_a_bce_step_take_the_labels_as_served(two_files, three_files):
    torch.manual_seed(0)
    multi = _make(three_files, labels=[0, 1, 2])
    col = multi.feature_names.index("uid")
    loader = DataLoader(multi, batch_size=None, num_workers=2, multiprocessing_context="fork")  # through workers
    model = torch.nn.Linear(multi.num_features, 3)
    seen = []
    for x, y in loader:
        assert y.dtype == torch.int64
        loss = torch.nn.CrossEntropyLoss()(model(x), y)  # raised "expected ... Long" with float32 labels
        loss.backward()
        seen.append((x[:, col], y))
    uids = torch.cat([u for u, _ in seen]).numpy().astype(np.int64)
    assert len(uids) == 3600 and len(set(uids.tolist())) == 3600
    np.testing.assert_array_equal(torch.cat([y for _, y in seen]).numpy(), uids // ID)  # each file its class
    assert model.weight.grad is not None and torch.isfinite(model.weight.grad).all()
    binary = _make(two_files)
    x, y = next(iter(DataLoader(binary, batch_size=None)))
    assert y.dtype == torch.float32
    loss = torch.nn.BCEWithLogitsLoss()(torch.nn.Linear(binary.num_features, 1)(x).squeeze(1), y)
    assert torch.isfinite(loss)
