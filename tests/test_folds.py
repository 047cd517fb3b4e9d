"""k-fold by event number: folds=k, fold=j, fold_by="event" (mlaas4hep.inputs.folds).

Membership is checked against ``event % k`` read directly with uproot, by each event's ``uid``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uproot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlaas4hep import BranchError, ParameterError
from mlaas4hep.options import Options
from mlaas4hep.preprocessing import Preprocessing
from mlaas4hep.stream.prepare import prepare

ID = 1_000_000  # uid = file * ID + entry
SIZES = (137, 211, 90)
SLOW = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]  # the files are written once per module


def _write(path: Path, file_id: int, n: int) -> Path:
    rng = np.random.default_rng(file_id + 7)
    data = {
        "uid": (file_id * ID + np.arange(n)).astype(np.int64),
        "event": rng.integers(-40, 10**9, n).astype(np.int64),  # some negative: the non-negative modulo
        "run": rng.integers(1, 4, n).astype(np.int32),
        "x": rng.normal(0.0, 1.0, n) + 3.0 * (rng.random(n) < 0.3),
        "half": rng.integers(0, 100, n) + 0.5,  # not an integer
    }
    with uproot.recreate(path) as f:
        f["Events"] = data
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder = tmp_path_factory.mktemp("folds")
    return [str(_write(folder / f"f{i}.root", i, n)) for i, n in enumerate(SIZES)]


def _read(files: list[str]) -> dict[str, np.ndarray]:
    """Every file's branches, concatenated in the files' order, read directly with uproot."""
    parts = [uproot.open(f)["Events"].arrays(["uid", "event", "run", "x"], library="np") for f in files]
    return {k: np.concatenate([p[k] for p in parts]) for k in ("uid", "event", "run", "x")}


def _served(files: list[str], **kw: Any) -> np.ndarray:
    """The uids the dataset of ``kw`` serves, in its chunks' order."""
    prepared = prepare(files, [float(i) for i in range(len(files))], Options(seed=1, **kw))
    reader = prepared.reader(["uid"])
    try:
        chunks = [reader.read(k) for k in range(len(reader))]
    finally:
        reader.close()
    return np.concatenate([np.asarray(p["uid"]) for c in chunks for p in c.pieces])


def _fold(values: np.ndarray, k: int) -> np.ndarray:
    return np.asarray([int(v) % k for v in values.tolist()])  # Python's modulo: non-negative, as documented


@settings(max_examples=12, deadline=None, suppress_health_check=SLOW)
@given(k=st.integers(2, 5), chunk_size=st.one_of(st.just(-1), st.integers(10, 300)))
def test_the_test_folds_are_disjoint_and_cover_every_event_once(files: list[str], k: int, chunk_size: int) -> None:
    data = _read(files)
    truth = _fold(data["event"], k)
    seen: list[np.ndarray] = []
    for j in range(k):
        uids = _served(files, folds=k, fold=j, subset="test", chunk_size=chunk_size, batch_size=1)
        assert set(uids.tolist()) == set(data["uid"][truth == j].tolist())
        seen.append(uids)
    every = np.concatenate(seen)
    assert len(every) == len(data["uid"]) and set(every.tolist()) == set(data["uid"].tolist())  # each exactly once


@settings(max_examples=12, deadline=None, suppress_health_check=SLOW)
@given(
    chunk_size=st.one_of(st.just(-1), st.integers(5, 200)),
    order=st.permutations(range(len(SIZES))),
    nevts=st.one_of(st.just(-1), st.integers(1, 80)),  # fewer than the test fold holds
    subset=st.sampled_from(["test", "training"]),
)
def test_membership_depends_only_on_the_event(
    files: list[str], chunk_size: int, order: list[int], nevts: int, subset: str
) -> None:
    data = _read(files)
    fold_of = dict(zip(data["uid"].tolist(), _fold(data["event"], 4).tolist(), strict=True))
    kw = {"folds": 4, "fold": 1, "subset": subset, "batch_size": 1}
    uids = _served([files[i] for i in order], chunk_size=chunk_size, nevts=nevts, **kw)
    assert all((fold_of[u] == 1) == (subset == "test") for u in uids.tolist())
    if nevts == -1:  # all of them, whatever the chunks and the files' order
        assert set(uids.tolist()) == set(_served(files, **kw).tolist())
    else:
        assert len(uids) == min(nevts, sum((np.asarray(list(fold_of.values())) == 1) == (subset == "test")))


def test_training_serves_every_other_fold(files: list[str]) -> None:
    data = _read(files)
    truth = _fold(data["event"], 3)
    uids = _served(files, folds=3, fold=2, subset="training")
    assert sorted(uids.tolist()) == sorted(data["uid"][truth != 2].tolist())


def test_validation_split_is_taken_from_the_training_folds_in_order(files: list[str]) -> None:
    data = _read(files)
    truth = _fold(data["event"], 3)
    kw = {"folds": 3, "fold": 0, "validation_split": 0.25}
    train = set(_served(files, subset="training", **kw).tolist())
    val = set(_served(files, subset="validation", **kw).tolist())
    expected: set[int] = set()
    for f in range(len(SIZES)):
        mine = data["uid"][(data["uid"] // ID == f) & (truth != 0)]  # in entry order
        expected.update(mine[len(mine) - int(len(mine) * 0.25) :].tolist())
    assert val == expected
    assert train | val == set(data["uid"][truth != 0].tolist()) and not train & val


def test_a_shard_serves_its_part_of_the_fold(files: list[str]) -> None:
    pytest.importorskip("keras")
    from mlaas4hep import RootSequence

    data = _read(files)
    truth = _fold(data["event"], 3)
    seen = []
    for shard in range(2):
        seq = RootSequence(
            files, [0, 1, 2], branches=["uid", "x"], normalization=None, batch_size=8, chunk_size=50, seed=3,
            folds=3, fold=1, subset="test", num_shards=2, shard_index=shard,
        )  # fmt: skip
        col = seq.feature_names.index("uid")
        seen.extend(np.concatenate([seq[i][0][:, col] for i in range(len(seq))]).astype(np.int64).tolist())
    assert sorted(seen) == sorted(data["uid"][truth == 1].tolist())


def test_the_specs_are_the_training_folds_whatever_the_subset(files: list[str]) -> None:
    data = _read(files)
    truth = _fold(data["event"], 3)
    labels = [0.0, 1.0, 2.0]
    kw: dict[str, Any] = {"folds": 3, "fold": 0, "branches": ["x"], "validation_split": 0.2}
    train = prepare(files, labels, Options(subset="training", **kw)).specs
    test = prepare(files, labels, Options(subset="test", **kw)).specs
    everything = prepare(files, labels, Options(branches=["x"], seed=1)).specs
    assert test["x"].to_dict() == train["x"].to_dict()
    trained = np.isin(data["uid"], _served(files, subset="training", **kw))  # the training folds, less validation
    assert trained.sum() < (truth != 0).sum() and train.n_events == trained.sum()
    assert train["x"].max == pytest.approx(data["x"][trained].max())
    assert train["x"].mean == pytest.approx(data["x"][trained].mean())
    assert train["x"].mean != pytest.approx(everything["x"].mean)  # test events would have shaped it
    given = prepare(files, labels, Options(subset="test", specs=train, **kw))  # specs=train.specs keeps working
    assert set(_served(files, subset="test", **kw).tolist()) == set(data["uid"][truth == 0].tolist())
    assert given.specs["x"].to_dict() == train["x"].to_dict()
    with pytest.raises(ParameterError, match="cut"):  # another fold's training specs: its events overlap
        prepare(files, labels, Options(subset="test", specs=train, **{**kw, "fold": 1}))


def test_the_folds_are_anded_with_the_cut(files: list[str]) -> None:
    data = _read(files)
    truth = _fold(data["event"], 2)
    uids = _served(files, folds=2, fold=1, subset="test", cut="x > 0.5")
    assert set(uids.tolist()) == set(data["uid"][(truth == 1) & (data["x"] > 0.5)].tolist())


@pytest.mark.parametrize(
    ("fold_by", "aliases"), [("event + run", None), ("evrun", {"evrun": "event + run"})], ids=["expression", "alias"]
)
def test_fold_by_an_expression_or_an_alias(files: list[str], fold_by: str, aliases: dict[str, str] | None) -> None:
    data = _read(files)
    truth = _fold(data["event"] + data["run"], 3)
    kw = {"folds": 3, "fold": 2, "fold_by": fold_by, "aliases": aliases, "exclude": ["event", "run", "evrun"]}
    uids = _served(files, subset="test", **({**kw, "exclude": ["event", "run"]} if aliases is None else kw))
    assert set(uids.tolist()) == set(data["uid"][truth == 2].tolist())


def test_the_pytorch_face_serves_the_same_fold(files: list[str]) -> None:
    pytest.importorskip("torch")
    from mlaas4hep.torch import RootDataset

    data = _read(files)
    truth = _fold(data["event"], 3)
    kw = {"folds": 3, "fold": 2, "subset": "test"}
    ds = RootDataset(files, [0, 1, 2], branches=["uid"], normalization=None, batch_size=16, **kw)
    uids = np.concatenate([np.asarray(batch[0]).reshape(-1) for batch in ds]).astype(np.int64)
    assert sorted(uids.tolist()) == sorted(data["uid"][truth == 2].tolist())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"folds": 1, "fold": 0, "subset": "test"}, "folds"),
        ({"folds": 5, "fold": 5, "subset": "test"}, "fold must be in"),
        ({"folds": 5, "fold": -1, "subset": "test"}, "fold"),
        ({"folds": 5, "subset": "test"}, "needs fold"),
        ({"folds": 5, "fold": 0}, "needs subset"),
        ({"fold": 0, "subset": "test", "test_split": 0.2}, "fold=0 needs folds"),
        ({"fold_by": "event"}, "fold_by='event' needs folds"),
        ({"folds": 5, "fold": 0, "subset": "test", "test_split": 0.2}, "test_split"),
        ({"folds": 5, "fold": 0, "subset": "validation"}, "validation_split"),
        ({"folds": 5, "fold": 0, "subset": "test", "fold_by": "event +"}, "fold_by"),
        ({"folds": 5, "fold": 0, "subset": "test", "fold_by": ""}, "fold_by"),
        ({"folds": 5, "fold": 0, "subset": "tst"}, "subset"),
    ],
)
def test_bad_combinations_are_refused_before_any_file_is_opened(
    tmp_path: Path, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ParameterError, match=re.escape(match)):
        Options(**kwargs)
    with pytest.raises(ParameterError, match=re.escape(match)):
        prepare([str(tmp_path / "missing.root")], [1.0], Options.for_face("RootDataset", kwargs))


@pytest.mark.parametrize(
    ("fold_by", "match"),
    [("half", "'half' must give integers"), ("missing_branch", "uses ['missing_branch']"), ("x * 1.0", "x * 1.0")],
)
def test_a_fold_by_that_is_not_an_integer_branch_is_a_branch_error(files: list[str], fold_by: str, match: str) -> None:
    with pytest.raises(BranchError, match=re.escape(match)):
        prepare(files, [0.0, 1.0, 2.0], Options(folds=3, fold=0, subset="test", fold_by=fold_by, seed=1))


def test_a_whole_float_fold_by_is_accepted(files: list[str]) -> None:
    data = _read(files)
    uids = _served(files, folds=3, fold=1, subset="test", fold_by="half - 0.5")
    half = np.concatenate([uproot.open(f)["Events"]["half"].array(library="np") for f in files])
    assert set(uids.tolist()) == set(data["uid"][_fold(half - 0.5, 3) == 1].tolist())


def test_the_preprocessing_records_the_folds(files: list[str], tmp_path: Path) -> None:
    labels = [0.0, 1.0, 2.0]
    folded = prepare(files, labels, Options(folds=4, fold=3, subset="training", cut="x > -5", seed=1))
    saved = Preprocessing.from_prepared(folded).save(tmp_path / "p.json")
    loaded = Preprocessing.load(saved)
    assert (loaded.folds, loaded.fold, loaded.fold_by, loaded.cut) == (4, 3, "event", "x > -5")
    assert loaded == Preprocessing.from_prepared(folded)
    plain = Preprocessing.from_prepared(prepare(files, labels, Options(seed=1)))
    assert (plain.folds, plain.fold, plain.fold_by) == (None, None, None)
    assert Preprocessing.load(plain.save(tmp_path / "q.json")).folds is None
