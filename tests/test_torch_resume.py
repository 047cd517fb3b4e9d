"""RootDataset's state as a value: a PyTorch training killed mid-epoch resumes at its checkpoint, every event once.

The kill tests run a training loop over torchdata's ``StatefulDataLoader`` in a
subprocess that checkpoints every few batches, kill it (SIGKILL, with its
DataLoader workers) when it reports a batch drawn at random, and run it again:
from the checkpoint's point of view, the events trained before it and those
trained after the resume make every epoch, each event once.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
stateful = pytest.importorskip("torchdata.stateful_dataloader")

pytestmark = [
    # Python >= 3.12 warns when a DataLoader forks its workers from a process with threads (the pipeline's)
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning"),
    # torchdata 0.11's StatefulDataLoader calls torch.set_vital, deprecated in torch 2.13
    pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning"),
]

from mlaas4hep import ParameterError  # noqa: E402
from mlaas4hep.torch import RootDataset  # noqa: E402

StatefulDataLoader = stateful.StatefulDataLoader
ID = 1_000_000  # uid = file_id * ID + entry, as in conftest.write_tree
EVERYTHING = sorted([*range(1200), *range(ID, ID + 1800)])  # the events of the two_files fixture
BATCHES = 47  # ceil(3000 / 64): the batches of an epoch
EPOCHS = 2
EVERY = 5  # the training checkpoints every EVERY batches
RUN_TIMEOUT = 120  # seconds one training run may take

TRAIN = '''
"""Train for EPOCHS epochs over a StatefulDataLoader, checkpointing atomically; resume from the checkpoint."""
import json, os, sys

import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from mlaas4hep.torch import RootDataset

cfg = json.loads(sys.argv[1])
train = RootDataset(cfg["files"], labels=[1, 0], branches=["uid", "MET_pt"], normalization=None,
                    batch_size=64, chunk_size=300, seed=3)
uid = train.feature_names.index("uid")
torch.manual_seed(0)
model = torch.nn.Linear(train.num_features, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=1e-9)
workers = cfg["num_workers"]
extra = {"multiprocessing_context": "fork", "persistent_workers": True} if workers else {}
loader = StatefulDataLoader(train, batch_size=None, num_workers=workers, **extra)
first = 0
if os.path.exists(cfg["checkpoint"]):
    saved = torch.load(cfg["checkpoint"])
    loader.load_state_dict(saved["loader"])
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    first = saved["epoch"]
trained = 0
with open(cfg["log"], "w") as log:
    for epoch in range(first, cfg["epochs"]):
        train.set_epoch(epoch)
        for x, y in loader:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            log.write(json.dumps({"epoch": epoch, "uids": x[:, uid].long().tolist()}) + "\\n")
            log.flush()
            trained += 1
            if trained % cfg["every"] == 0:
                state = {"loader": loader.state_dict(), "epoch": epoch, "lines": trained,
                         "model": model.state_dict(), "optimizer": optimizer.state_dict()}
                torch.save(state, cfg["checkpoint"] + ".tmp")
                os.replace(cfg["checkpoint"] + ".tmp", cfg["checkpoint"])  # atomic: a kill leaves the old one
            print(trained, flush=True)
'''


def _make(files, **kw) -> RootDataset:
    kw = {
        "labels": [1, 0],
        "branches": ["uid", "MET_pt"],
        "normalization": None,
        "batch_size": 64,
        "chunk_size": 300,
        "seed": 3,
        **kw,
    }
    return RootDataset(files, **kw)


def _uids(ds: RootDataset, batches) -> list[np.ndarray]:
    col = ds.feature_names.index("uid")
    return [x[:, col].numpy().astype(np.int64) for x, _ in batches]


def _run(script: Path, cfg: dict, kill_at: int | None = None) -> list[str]:
    """Run the training; with ``kill_at``, SIGKILL it (and its workers) once it reports that many batches."""
    command = [sys.executable, str(script), json.dumps(cfg)]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as child:
        # the training and its DataLoader workers, killed by the test or, past RUN_TIMEOUT, by the watchdog
        watchdog = threading.Timer(RUN_TIMEOUT, os.killpg, (child.pid, signal.SIGKILL))
        watchdog.start()
        lines = []
        try:
            assert child.stdout is not None
            for line in child.stdout:
                lines.append(line.strip())
                if kill_at is not None and line.strip() == str(kill_at):
                    os.killpg(child.pid, signal.SIGKILL)
                    break
            child.wait(timeout=RUN_TIMEOUT)
        finally:
            watchdog.cancel()
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
        stderr = child.stderr.read() if child.stderr is not None else ""
    if kill_at is None:
        assert child.returncode == 0, stderr
        assert "fast-forwarding" not in stderr, stderr  # torchdata's fallback: nothing served is read again
    else:
        assert child.returncode == -signal.SIGKILL, (child.returncode, stderr)
    return lines


def _trained(log: Path, lines: int | None = None) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()[:lines]]


@pytest.mark.slow
@pytest.mark.parametrize("kill_epoch", [0, 1])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_killed_training_resumes_at_its_checkpoint_and_trains_every_event_once_per_epoch(
    two_files, tmp_path, num_workers, kill_epoch
):
    rng = random.Random(f"kill-{num_workers}-{kill_epoch}")  # a batch drawn at random, the same in every run
    kill_at = kill_epoch * BATCHES + rng.randrange(EVERY if kill_epoch == 0 else 1, BATCHES)
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    cfg = {
        "files": [str(f) for f in two_files],
        "num_workers": num_workers,
        "checkpoint": str(tmp_path / "checkpoint.pt"),
        "every": EVERY,
        "epochs": EPOCHS,
    }
    _run(script, {**cfg, "log": str(tmp_path / "killed.jsonl")}, kill_at=kill_at)
    saved = torch.load(tmp_path / "checkpoint.pt")
    assert saved["lines"] % EVERY == 0 and saved["lines"] >= kill_at - kill_at % EVERY, (saved["lines"], kill_at)
    assert json.loads(json.dumps(saved["loader"])) == saved["loader"]  # JSON-able, no data
    _run(script, {**cfg, "log": str(tmp_path / "resumed.jsonl")})
    before = _trained(tmp_path / "killed.jsonl", saved["lines"])  # trained before the checkpoint
    after = _trained(tmp_path / "resumed.jsonl")
    assert len(before) + len(after) == EPOCHS * BATCHES, (kill_at, saved["lines"], len(after))
    assert after[0]["epoch"] == saved["epoch"]
    for epoch in range(EPOCHS):
        uids = [u for batch in before + after if batch["epoch"] == epoch for u in batch["uids"]]
        assert sorted(uids) == EVERYTHING, (epoch, kill_at, len(uids), Counter(uids).most_common(1))


def _state_at(ds: RootDataset, epoch: int, position: int) -> dict:
    """The state of ``ds`` after ``position`` batches of ``epoch`` (through a plain loop, num_workers=0).

    ``ds`` is closed then: its reading ahead stops (and logs no more reads).
    """
    ds.set_epoch(epoch)
    it = iter(ds)
    for _ in range(position):
        next(it)
    state = ds.state_dict()
    ds.close()
    return state


def _chunks_read(caplog) -> list[int]:
    found = (re.match(r"(?:read )?chunk (\d+):", r.getMessage()) for r in caplog.records)
    return [int(m.group(1)) for m in found if m]


@pytest.mark.parametrize("position", [5, 30, 42])
def test_a_resumed_epoch_reads_only_the_chunks_from_its_place_on(two_files, caplog, position):
    state = _state_at(_make(two_files), 1, position)
    assert (state["epoch"], state["position"], state["batches"]) == (1, position, BATCHES)
    ds = _make(two_files, prefetch=0)  # no read-ahead: exactly the chunks the batches need
    ds.load_state_dict(state)
    ds.set_epoch(1)
    with caplog.at_level(logging.DEBUG, logger="mlaas4hep.stream.reader"):
        rest = _uids(ds, iter(ds))
    plan = ds.epoch_plan()
    order, _ = plan.order(1)
    assert sorted(_chunks_read(caplog)) == sorted(order[plan.position(1, position) :].tolist())  # none before it
    assert len(rest) == BATCHES - position
    whole = _make(two_files)
    whole.set_epoch(1)
    served = np.concatenate(_uids(whole, iter(whole)))
    np.testing.assert_array_equal(np.concatenate(rest), served[position * 64 :])  # the same batches as unbroken
    ds.close()
    whole.close()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    epoch=st.integers(0, 3),
    position=st.integers(0, BATCHES),
    shuffle=st.booleans(),
    batch_size=st.sampled_from([64, 100]),
)
def test_any_place_of_any_epoch_resumes_to_every_event_once(two_files, epoch, position, shuffle, batch_size):
    """Served before the state, then after it by a new dataset: the epoch, each event once, in the same batches."""
    kw = {"shuffle": shuffle, "batch_size": batch_size}
    whole = _make(two_files, **kw)
    whole.set_epoch(epoch)
    batches = _uids(whole, iter(whole))
    whole.close()
    position = min(position, len(batches))
    state = _state_at(_make(two_files, **kw), epoch, position)
    assert (state["epoch"], state["position"], state["batches"]) == (epoch, position, len(batches))
    again = _make(two_files, **kw)
    again.load_state_dict(json.loads(json.dumps(state)))  # as saved in a JSON file
    again.set_epoch(epoch)
    rest = _uids(again, iter(again))
    again.close()
    assert len(rest) == len(batches) - position
    for got, want in zip(rest, batches[position:], strict=True):
        np.testing.assert_array_equal(got, want)


def test_reads_to_the_first_batch_do_not_grow_with_the_place(two_files):
    """No fast-forward: the first batch after a state at 10 % or 90 % of the epoch reads about as much."""
    reads = []
    for position in (5, 40):  # batches within one chunk of 300
        state = _state_at(_make(two_files), 0, position)
        ds = _make(two_files, prefetch=0)
        ds.load_state_dict(state)
        ds.set_epoch(0)
        next(iter(ds))
        reads.append(ds.chunk_reads)
        ds.close()
    assert reads == [1, 1]  # the first batch's chunk, whatever was served before the place


def test_a_state_of_a_whole_epoch_resumes_into_the_next(two_files):
    ds = _make(two_files)
    state = _state_at(ds, 2, BATCHES)
    assert state["position"] == state["batches"] == BATCHES
    again = _make(two_files)
    again.load_state_dict(state)
    again.set_epoch(2)
    assert list(again) == []  # the saved epoch has nothing left
    again.set_epoch(3)
    assert sorted(np.concatenate(_uids(again, iter(again))).tolist()) == EVERYTHING  # then whole epochs
    nxt = _make(two_files)
    nxt.load_state_dict(state)
    nxt.set_epoch(3)  # or straight into the next
    assert len(list(nxt)) == BATCHES
    assert json.loads(json.dumps(state)) == state


def test_a_finished_stateful_loader_resumes_with_the_next_epoch(two_files):
    """A checkpoint taken after an epoch's loop (``epoch + 1`` saved) resumes with the next epoch, whole."""
    ds = _make(two_files)
    loader = StatefulDataLoader(ds, batch_size=None)
    ds.set_epoch(0)
    assert len(list(loader)) == BATCHES
    state = loader.state_dict()
    again = _make(two_files)
    resumed = StatefulDataLoader(again, batch_size=None)
    resumed.load_state_dict(state)
    again.set_epoch(1)
    assert sorted(np.concatenate(_uids(again, resumed)).tolist()) == EVERYTHING


@pytest.mark.parametrize("shuffle", [True, False])
def test_each_stateful_worker_resumes_its_own_part(two_files, shuffle):
    ds = _make(two_files, shuffle=shuffle)
    kw = {"batch_size": None, "num_workers": 2, "multiprocessing_context": "fork"}
    loader = StatefulDataLoader(ds, **kw)
    ds.set_epoch(1)
    served, state = [], None
    for i, batch in enumerate(loader):
        served.extend(_uids(ds, [batch]))
        if i == 16:
            state, before = loader.state_dict(), len(served)
    parts = state["_snapshot"]["_worker_snapshots"]
    assert [parts[f"worker_{w}"]["dataset_state"]["position"] for w in (0, 1)] == [9, 8]  # in turn, 17 batches
    again = _make(two_files, shuffle=shuffle)
    resumed = StatefulDataLoader(again, **kw)
    resumed.load_state_dict(state)
    again.set_epoch(1)
    rest = _uids(again, resumed)
    assert len(rest) == BATCHES - 17
    if shuffle:
        assert sorted(np.concatenate(served[:before] + rest).tolist()) == EVERYTHING
    else:  # in the files' order: the resumed batches are those an unbroken epoch serves after the 17th
        np.testing.assert_array_equal(np.concatenate(served[:before] + rest), np.concatenate(served))
        assert sorted(np.concatenate(served).tolist()) == EVERYTHING


@pytest.mark.parametrize(
    ("state_kw", "dataset_kw", "match"),
    [
        ({}, {"cut": "MET_pt > 20"}, r"other data .* events=3000, this dataset has events=\d+"),
        ({"chunk_size": 200}, {}, r"other data .* data='[0-9a-f]{16}', this dataset has data='[0-9a-f]{16}'"),
        ({}, {"seed": 4}, r"seed=3, this dataset has seed=4"),
        ({}, {"batch_size": 50}, r"batch_size=64, this dataset has batch_size=50"),
        ({"rank": 1, "world_size": 2}, {}, r"rank 1 of world_size=2, this dataset rank 0 of world_size=1"),
        ({"rank": 0, "world_size": 2}, {"rank": 1, "world_size": 2}, r"rank 0 of world_size=2, .* rank 1 of"),
    ],
)
def test_a_state_of_other_data_or_ranks_is_refused_naming_both_values(two_files, state_kw, dataset_kw, match):
    state = _state_at(_make(two_files, **state_kw), 0, 3)
    ds = _make(two_files, **dataset_kw)
    with pytest.raises(ParameterError, match=match):
        ds.load_state_dict(state)


def test_a_state_of_other_workers_is_refused_naming_both_numbers(two_files):
    ds = _make(two_files)
    kw = {"batch_size": None, "multiprocessing_context": "fork"}
    loader = StatefulDataLoader(ds, num_workers=2, **kw)
    ds.set_epoch(0)
    it = iter(loader)
    for _ in range(5):
        next(it)
    state = loader.state_dict()
    del it
    part = state["_snapshot"]["_worker_snapshots"]["worker_1"]["dataset_state"]
    with pytest.raises(ParameterError, match=r"worker 1 of num_workers=2, served by worker 0 of num_workers=0"):
        _make(two_files).load_state_dict(part)  # in this process: the part of num_workers=0
    one = StatefulDataLoader(_make(two_files), num_workers=1, **kw)
    one.load_state_dict(state)
    with pytest.raises(ParameterError, match=r"worker 0 of num_workers=2, served by worker 0 of num_workers=1"):
        iter(one)  # the worker's part refused in that worker
    # the loader's iterator failed while starting: its workers stop when it is collected, in about 5 s each
    # (torch's join timeout); collected now, not in the middle of the next test
    del one
    gc.collect()
    whole = _make(two_files)
    whole.set_epoch(0)
    done = _state_at(whole, 0, BATCHES)
    elastic = _make(two_files, rank=1, world_size=2)  # a state of a whole epoch resumes with any layout
    elastic.load_state_dict(done)
    elastic.set_epoch(1)
    assert len(list(elastic)) == elastic.num_batches == 24


def test_a_state_of_another_epoch_is_refused_naming_both(two_files):
    state = _state_at(_make(two_files), 1, 11)
    ds = _make(two_files)
    ds.load_state_dict(state)
    ds.set_epoch(2)
    with pytest.raises(ParameterError, match=r"state is of epoch 1 \(at batch 11 of 47\), but epoch 2 is set"):
        next(iter(ds))
    assert ds.state_dict()["position"] == 11  # still to be resumed
    ds.set_epoch(1)
    assert len(list(ds)) == BATCHES - 11
    assert ds.state_dict()["position"] == BATCHES
    ds.set_epoch(0)  # resumed: the state is used up, epochs start from their first batch
    assert len(list(ds)) == BATCHES
    whole = _state_at(_make(two_files), 1, BATCHES)
    late = _make(two_files)
    late.load_state_dict(whole)
    late.set_epoch(3)
    with pytest.raises(ParameterError, match=r"epoch 1 \(served whole\), but epoch 3 is set.*or set_epoch\(2\)"):
        list(StatefulDataLoader(late, batch_size=None))  # through a loader, as a training loop meets it


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"version": 2}, r"of version 1, got \(kind, version\) \('RootDataset', 2\)"),
        ({"kind": "RootSequence"}, r"got \(kind, version\) \('RootSequence', 1\)"),
        ({"position": 48}, r"state\['position'\] must be at most state\['batches'\]=47, got 48"),
        ({"epoch": -1}, r"state\['epoch'\] must be a non-negative integer, got -1"),
        ({"seed": None}, r"seed=None, this dataset has seed=3"),
    ],
)
def test_a_malformed_state_is_refused(two_files, change, match):
    ds = _make(two_files)
    state = {**ds.state_dict(), **change}
    with pytest.raises(ParameterError, match=match):
        ds.load_state_dict(state)
    with pytest.raises(ParameterError, match=r"lacks \['position'\]"):
        ds.load_state_dict({k: v for k, v in ds.state_dict().items() if k != "position"})
    with pytest.raises(ParameterError, match="got \\(kind, version\\) 'list'"):
        ds.load_state_dict([])  # type: ignore[arg-type]


def test_a_checkpoint_taken_right_after_loading_keeps_the_place(two_files):
    """A loader's state asked for before any batch is served (and before set_epoch) is the state loaded."""
    ds = _make(two_files)
    loader = StatefulDataLoader(ds, batch_size=None)
    ds.set_epoch(2)
    it = iter(loader)
    for _ in range(20):
        next(it)
    state = loader.state_dict()
    again = _make(two_files)
    resumed = StatefulDataLoader(again, batch_size=None)
    resumed.load_state_dict(state)
    kept = resumed.state_dict()  # epoch 0 is set here: nothing is served yet, nothing refused
    assert kept["dataset_state"] == state["dataset_state"] and kept["dataset_state"]["position"] == 20
    again.set_epoch(2)
    assert len(list(resumed)) == BATCHES - 20


@pytest.mark.filterwarnings(
    "ignore:torch.distributed is disabled, unavailable or uninitialized:UserWarning"
)  # one process
def test_torch_distributed_checkpoint_saves_and_loads_the_state(two_files, tmp_path):
    """torch.distributed.checkpoint takes the dataset as a Stateful object, as it takes a model."""
    dcp = pytest.importorskip("torch.distributed.checkpoint")
    ds = _make(two_files)
    ds.set_epoch(2)
    it = iter(ds)
    for _ in range(13):
        next(it)
    dcp.save({"data": ds}, checkpoint_id=tmp_path / "checkpoint")
    again = _make(two_files)
    dcp.load({"data": again}, checkpoint_id=tmp_path / "checkpoint")
    assert again.state_dict() == ds.state_dict()
    again.set_epoch(2)
    rest = _uids(again, iter(again))
    served = _uids(ds, it)
    assert len(rest) == BATCHES - 13
    for got, want in zip(rest, served, strict=True):
        np.testing.assert_array_equal(got, want)
