"""The loader's state as a value (RootSequence.state_dict) and a Keras fit killed mid-epoch and resumed exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import keras
import numpy as np
import pytest

import mlaas4hep
from mlaas4hep import ParameterError, RootSequence

CHILD = Path(__file__).with_name("resume_child.py")
EPOCHS, SAVE_FREQ, BATCHES = 3, 4, 30  # 3000 events in batches of 100


def _sequence(files, **kw) -> RootSequence:
    options = {"batch_size": 100, "chunk_size": 700, "seed": 7, "branches": ["uid", "MET_pt", "Jet_pt"]}
    return RootSequence(files, labels=[1.0, 0.0], normalization=None, **{**options, **kw})


def _uids(seq: RootSequence, batch) -> list[int]:
    return batch[0][:, seq.feature_names.index("uid")].astype(np.int64).tolist()


def test_a_state_resumes_at_its_place_reading_from_its_chunk(two_files):
    seq = _sequence(two_files)
    whole = [_uids(seq, seq[i]) for i in range(len(seq))]  # epoch 0, asked for in order
    seq.on_epoch_end()
    first = [_uids(seq, seq[i]) for i in range(12)]  # 12 batches of epoch 1, then the process dies
    state = json.loads(json.dumps(seq.state_dict()))  # JSON types only
    assert (state["epoch"], state["position"]) == (1, 12) and state["batches"] == len(seq) == BATCHES
    fresh = _sequence(two_files, prefetch=0)  # no reading ahead into the next epoch: only what the epoch needs
    fresh.load_state_dict(state)
    assert fresh.epoch == 1 and fresh.num_batches == BATCHES - 12 and len(fresh) == BATCHES
    rest = [_uids(fresh, fresh[i]) for i in range(fresh.num_batches)]
    assert fresh.chunk_reads < len(fresh.reader)  # the chunks before the place are not read
    served = [u for batch in first + rest for u in batch]
    assert sorted(served) == sorted(u for batch in whole for u in batch)  # every event once
    assert fresh.num_batches == BATCHES and fresh.epoch == 2  # then whole epochs
    reference = _sequence(two_files)
    reference.load_state_dict({**state, "epoch": 1, "position": 0})
    assert [_uids(reference, reference[i]) for i in range(BATCHES)] == first + rest  # the same stream


def test_a_state_is_refused_by_a_sequence_of_other_data_or_batches(two_files):
    state = _sequence(two_files).state_dict()
    with pytest.raises(ParameterError, match=r"saved with batch_size=100, this RootSequence has batch_size=50"):
        _sequence(two_files, batch_size=50).load_state_dict(state)
    with pytest.raises(ParameterError, match=r"saved with seed=7, this RootSequence has seed=8"):
        _sequence(two_files, seed=8).load_state_dict(state)
    with pytest.raises(ParameterError, match=r"saved with data="):
        _sequence(two_files, cut="MET_pt > 10").load_state_dict(state)
    with pytest.raises(ParameterError, match=r"saved with num_shards=1, this RootSequence has num_shards=2"):
        _sequence(two_files, num_shards=2, shard_index=0).load_state_dict(state)
    with pytest.raises(ParameterError, match="not a state of a RootSequence"):
        _sequence(two_files).load_state_dict({"epoch": 1})


def test_a_place_out_of_order_is_refused(two_files):
    seq = _sequence(two_files, shuffle=False)
    seq[3], seq[0]
    with pytest.raises(ParameterError, match="served in order"):
        seq.state_dict()
    assert seq.state_dict(epoch=1)["position"] == 0


def test_backup_and_restore_refuses_what_it_cannot_resume_exactly(two_files, tmp_path):
    seq = _sequence(two_files)
    with pytest.raises(ParameterError, match="save_freq must be 'epoch' or a positive integer, got 0"):
        mlaas4hep.BackupAndRestore(tmp_path, sequence=seq, save_freq=0)
    with pytest.raises(ParameterError, match="sequence must be the RootSequence given to fit"):
        mlaas4hep.BackupAndRestore(tmp_path, sequence=[seq])
    if keras.backend.backend() == "tensorflow":  # Keras fetches with threads only there
        with pytest.raises(ParameterError, match="workers=2"):
            mlaas4hep.BackupAndRestore(tmp_path, sequence=_sequence(two_files, workers=2, use_multiprocessing=True))
    model = keras.Sequential([keras.Input((seq.num_features,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="adam", loss="binary_crossentropy")
    backup = mlaas4hep.BackupAndRestore(tmp_path, sequence=seq)
    with pytest.raises(ParameterError, match="steps_per_epoch=10"):
        model.fit(seq, epochs=1, steps_per_epoch=10, verbose=0, callbacks=[backup])


def _recording_model(seq: RootSequence, seen: list[list[int]]) -> keras.Model:
    """A model whose eager first layer notes the uids of each batch it trains on."""
    col = seq.feature_names.index("uid")

    def record(x):
        if x.shape[0] is not None:
            try:
                seen.append(np.asarray(keras.ops.convert_to_numpy(x))[:, col].astype(np.int64).tolist())
            except Exception:  # noqa: BLE001 - JAX traces the model to build it: no values
                pass
        return x

    inputs = keras.Input((seq.num_features,))
    hidden = keras.layers.Lambda(record, output_shape=(seq.num_features,))(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(keras.layers.Rescaling(1e-6)(hidden)))
    model.compile(optimizer="adam", loss="binary_crossentropy", run_eagerly=True)
    return model


EVERYTHING = Counter(u for f, n in ((0, 1200), (1, 1800)) for u in range(f * 1_000_000, f * 1_000_000 + n))


def test_a_state_loaded_before_a_plain_fit_is_refused_not_cut_short(two_files):
    """Keras gives every epoch of a fit as many batches as it read when the fit began: a state loaded before it
    would make every epoch of the fit as short as the rest of the resumed one (1,200 events missing in each)."""
    seq = _sequence(two_files)
    state = {**seq.state_dict(epoch=1, batches=0), "position": 12}  # a place saved elsewhere
    fresh = _sequence(two_files)
    fresh.load_state_dict(state)
    model = keras.Sequential([keras.Input((seq.num_features,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="adam", loss="binary_crossentropy")
    with pytest.raises(ParameterError, match=r"epoch 1, after its first 12 batches.*mlaas4hep.BackupAndRestore"):
        model.fit(fresh, epochs=2, verbose=0)


def test_a_subclass_calling_super_on_epoch_end_keeps_the_contract(two_files):
    """Keras' pass ends are told from a new fit through a subclass's override too: with steps_per_epoch=10 of
    30 batches, three Keras epochs are one loader epoch, each event once (1,900 served twice when they were not)."""

    class Sub(RootSequence):
        def on_epoch_end(self) -> None:
            super().on_epoch_end()

    options = {"batch_size": 100, "chunk_size": 700, "seed": 7, "branches": ["uid", "MET_pt", "Jet_pt"]}
    seq = Sub(two_files, labels=[1.0, 0.0], normalization=None, **options)
    seen: list[list[int]] = []
    _recording_model(seq, seen).fit(seq, epochs=3, steps_per_epoch=10, verbose=0)
    assert Counter(u for ids in seen for u in ids) == EVERYTHING


def test_backup_and_restore_refuses_batches_out_of_order_at_the_first_batches(two_files, tmp_path):
    seq = _sequence(two_files, shuffle=False)
    trained: list[int] = []

    class Count(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            trained.append(batch)

    model = keras.Sequential([keras.Input((seq.num_features,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="adam", loss="binary_crossentropy")
    backup = mlaas4hep.BackupAndRestore(tmp_path, sequence=seq, save_freq="epoch")
    with pytest.raises(ParameterError, match="served in order"):
        model.fit(seq, epochs=1, verbose=0, callbacks=[Count(), backup])  # fit's default shuffle=True
    assert len(trained) <= 3  # refused at once, not at the first save (never, with save_freq="epoch")


# -- a training killed (SIGKILL) at random batches and run again ---------------------------------------------
def _run(files, log: Path, backup: Path, kill_after: int | None, save_freq: int | str) -> bool:
    """Run the training; kill it once ``kill_after`` batches were logged. True if it completed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(mlaas4hep.__file__).parents[1]), str(CHILD.parent)])}
    args = [sys.executable, str(CHILD), str(log), str(backup), str(EPOCHS), str(save_freq), *map(str, files)]
    start = len(_lines(log))
    with open(log.with_suffix(".err"), "ab") as err:
        child = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 240
    try:
        while child.poll() is None and time.monotonic() < deadline:
            if kill_after is not None and len(_lines(log)) - start >= kill_after:
                child.send_signal(signal.SIGKILL)
                child.wait(30)
                return False
            time.sleep(0.02)
        assert child.poll() is not None, "the training took more than 240 s"
        assert child.returncode == 0, log.with_suffix(".err").read_text()[-3000:]
        return True
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(30)


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def _checkpoint(backup: Path) -> dict | None:
    path = backup / "training_metadata.json"
    return json.loads(path.read_text()) if path.exists() else None


def _trained(lines: list[str], checkpoint: dict | None) -> list[tuple[int, list[int]]]:
    """The batches of a run that count: all of a run that completed; of a killed run, those before its checkpoint."""
    rows = (line.split() for line in lines if line != "done")
    batches = [(int(e), int(b), [int(u) for u in ids.split(",")]) for e, b, ids in rows]
    if checkpoint is None:
        return [(e, ids) for e, _, ids in batches]
    last, trained = checkpoint["saved_in_epoch"], checkpoint["batch"]
    return [(e, ids) for e, b, ids in batches if e < last or (e == last and (trained is None or b < trained))]


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "save_freq"), [(1, SAVE_FREQ), (2, "epoch")])
def test_a_fit_killed_at_random_batches_and_rerun_trains_each_event_once_per_epoch(
    two_files, tmp_path, seed, save_freq
):
    rng = np.random.default_rng(seed)
    log, backup = tmp_path / "batches.log", tmp_path / "backup"
    counted: list[tuple[int, list[int]]] = []
    kills = sorted(rng.choice(np.arange(SAVE_FREQ + 1, EPOCHS * BATCHES - 5), size=2, replace=False))
    before = None
    for kill in [kills[0], kills[1] - kills[0], None]:  # twice killed, then completed
        start = len(_lines(log))
        done = _run(two_files, log, backup, kill, save_freq)
        after = _checkpoint(backup)
        new = after is not None and (before is None or after["weights"] != before["weights"])
        if done:
            counted += _trained(_lines(log)[start:], None)
        elif new:  # only what a killed run trained before the checkpoint it wrote counts
            counted += _trained(_lines(log)[start:], after)
        before = after
    everything = Counter(u for f, n in ((0, 1200), (1, 1800)) for u in range(f * 1_000_000, f * 1_000_000 + n))
    for epoch in range(EPOCHS):
        got = Counter(u for e, ids in counted if e == epoch for u in ids)
        assert got == everything, f"epoch {epoch}: {sum((got - everything).values())} events twice or more, " + (
            f"{sum((everything - got).values())} missing"
        )
