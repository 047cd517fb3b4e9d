"""Multi-class labels, one-hot, regression targets, event/file weights, class balancing and the mask input."""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

from mlaas4hep import BranchError, ParameterError
from mlaas4hep.transform.outputs import Outputs, one_hot_encode

keras = pytest.importorskip("keras")

from mlaas4hep import RootSequence  # noqa: E402

ID = 1_000_000


def write_physics(path: Path, n: int, cls: int, seed: int) -> Path:
    """A file of class ``cls``: features whose means depend on the class, a weight, a regression target."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(2 + cls, n)
    jet_pt = ak.unflatten(rng.exponential(30 + 25 * cls, int(counts.sum())).astype(np.float32), counts)
    met = rng.normal(30 + 20 * cls, 8, n).astype(np.float32)
    data = {
        "uid": (seed * ID + np.arange(n)).astype(np.int64),
        "cls": np.full(n, cls, np.int32),
        "MET_pt": met,
        "genWeight": rng.uniform(0.5, 1.5, n).astype(np.float32),
        "genPt": (2 * met + 1).astype(np.float32),
        "genEta": rng.normal(0, 1, n).astype(np.float32),
        "nJet": counts.astype(np.int32),
        "Jet_pt": jet_pt,
    }
    with uproot.recreate(path) as f:
        f.mktree("Events", {k: (v.type if isinstance(v, ak.Array) else v.dtype) for k, v in data.items()})
        f["Events"].extend(data)
    return path


@pytest.fixture(scope="module")
def classes(tmp_path_factory) -> list[Path]:
    """Four files, three classes: the last two files share label 2."""
    d = tmp_path_factory.mktemp("classes")
    sizes = [(600, 0), (900, 1), (300, 2), (500, 2)]
    return [write_physics(d / f"c{i}.root", n, cls, seed=i + 1) for i, (n, cls) in enumerate(sizes)]


def truth(files: list[Path], branch: str) -> dict[int, float]:
    out = {}
    for p in files:
        a = uproot.open(p)["Events"].arrays(["uid", branch])
        out.update(zip(ak.to_numpy(a["uid"]).tolist(), ak.to_numpy(a[branch]).tolist(), strict=True))
    return out


def epoch(seq) -> list[tuple]:
    batches = [seq[i] for i in range(len(seq))]
    seq.on_epoch_end()
    return batches


def uids_of(seq, x) -> np.ndarray:
    X = x["features"] if isinstance(x, dict) else x
    return X[:, seq.feature_names.index("uid")].astype(np.int64)


# -- Outputs, no files ------------------------------------------------------------------------


def test_one_hot_encode():
    np.testing.assert_array_equal(one_hot_encode(np.array([0.0, 2.0, 1.0]), 3), np.eye(3, dtype=np.float32)[[0, 2, 1]])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"labels": [0, 1.5], "one_hot": True}, "integers"),
        ({"labels": [0, 3], "num_classes": 3}, "num_classes >= 4"),
        ({"label_branch": "cls", "one_hot": True}, "needs num_classes"),
        ({"labels": [0, 1], "targets": "genPt"}, "not both"),
        ({"targets": ["genPt"], "balance_classes": True}, "needs class labels"),
        ({"labels": [0, 1], "file_weights": [1.0]}, "one per file"),
        ({"labels": [0, 1], "file_weights": [1.0, -2.0]}, "non-negative"),
        ({"labels": [0, 1], "weights": ""}, "weights must be"),
    ],
)
def test_outputs_errors_name_the_parameter(kwargs, match):
    with pytest.raises(ParameterError, match=match):
        Outputs(2, **kwargs)


def test_outputs_weights_and_balancing():
    out = Outputs(2, labels=[0, 1], weights="w", file_weights=[2.0, 1.0], balance_classes=True)
    pieces = [{"w": np.array([1.0, 3.0])}, {"w": np.array([1.0, 1.0, 2.0])}]
    files, labels = np.array([0, 0, 1, 1, 1]), np.array([0, 0, 1, 1, 1], np.float32)
    _, w = out.extract(pieces, files, labels, balanced=False)
    np.testing.assert_allclose(w, [2, 6, 1, 1, 2])
    balanced = out.with_class_totals(np.bincount(labels.astype(int), weights=w))
    assert out.class_factors is None  # a new value: the one given is left as it is
    _, w = balanced.extract(pieces, files, labels)
    assert w[:2].sum() == pytest.approx(w[2:].sum()) and w.sum() == pytest.approx(12)


# -- sequences --------------------------------------------------------------------------------


def test_multiclass_one_hot_with_a_shared_label(classes):
    kw = dict(normalization=None, batch_size=64, chunk_size=256)
    seq = RootSequence(classes, labels=[0, 1, 2, 2], one_hot=True, seed=1, **kw)
    cls = truth(classes, "cls")
    seen = 0
    for x, y in epoch(seq):
        assert y.shape == (len(x), 3) and y.dtype == np.float32
        np.testing.assert_array_equal(y.argmax(axis=1), [cls[u] for u in uids_of(seq, x)])
        seen += len(x)
    assert seen == 2300
    # labels from a branch, one-hot over num_classes
    seq = RootSequence(classes, labels="cls", one_hot=True, num_classes=3, **kw)
    assert "cls" not in seq.feature_names
    x, y = seq[0]
    np.testing.assert_array_equal(y.argmax(axis=1), [cls[u] for u in uids_of(seq, x)])
    with pytest.raises(ParameterError, match="not a class"):
        RootSequence(classes, labels="cls", one_hot=True, num_classes=2, batch_size=64, chunk_size=256)[0]


def test_event_and_file_weights_are_sample_weights(classes):
    fw = [0.5, 1.0, 2.0, 4.0]
    kw = dict(normalization=None, batch_size=50, chunk_size=200)
    seq = RootSequence(classes, labels=[0, 1, 2, 2], weights="genWeight", file_weights=fw, **kw)
    assert "genWeight" not in seq.feature_names
    gen = truth(classes, "genWeight")
    for x, _, w in epoch(seq):
        u = uids_of(seq, x)
        expected = np.array([gen[i] * fw[i // ID - 1] for i in u], dtype=np.float32)
        np.testing.assert_allclose(w, expected, rtol=1e-6)
    with pytest.raises(BranchError, match="weights branch 'nope'"):
        RootSequence(classes, labels=[0, 1, 2, 2], weights="nope")


@pytest.mark.parametrize("weights", [None, "genWeight"])
def test_balanced_classes_carry_equal_total_weight(classes, weights):
    seq = RootSequence(
        classes,
        labels=[0, 1, 2, 2],
        weights=weights,
        balance_classes=True,
        batch_size=100,
        chunk_size=300,
        validation_split=0.25,
        subset="training",
        seed=2,
    )
    totals = np.zeros(3)
    n = 0
    for _, y, w in epoch(seq):
        totals += np.bincount(y.astype(int), weights=w, minlength=3)
        n += len(y)
    np.testing.assert_allclose(totals, totals.mean(), rtol=1e-5)
    if weights is None:
        assert totals.sum() == pytest.approx(n, rel=1e-5)  # mean weight 1


def test_regression_targets_are_not_features(classes):
    seq = RootSequence(classes, targets="genPt", normalization=None, batch_size=64, chunk_size=256)
    assert "genPt" not in seq.feature_names
    gen = truth(classes, "genPt")
    x, y = seq[0]
    assert y.shape == (64,)
    np.testing.assert_allclose(y, [gen[u] for u in uids_of(seq, x)], rtol=1e-6)
    aliases = {"log_genPt": "log(genPt)"}
    seq = RootSequence(classes, targets=["genPt", "log_genPt"], aliases=aliases, batch_size=64, chunk_size=256)
    x, y = seq[0]
    assert y.shape == (64, 2) and "log_genPt" not in seq.feature_names
    np.testing.assert_allclose(np.exp(y[:, 1]), y[:, 0], rtol=1e-5)


def test_mask_output_feeds_a_model_with_named_inputs(classes):
    kw = dict(mask_output=True, max_lengths=4, batch_size=64, chunk_size=256, seed=1)
    seq = RootSequence(classes, labels=[0, 1, 2, 2], **kw)
    x, _ = seq[0]
    assert set(x) == {"features", "mask"} and x["mask"].shape == x["features"].shape
    jets = seq.flattener.columns("Jet_pt")
    assert (x["mask"][:, jets] == 0).any() and (x["features"][:, jets][x["mask"][:, jets] == 0] == 0).all()
    features = keras.Input((seq.num_features,), name="features")
    mask = keras.Input((seq.num_features,), name="mask")
    hidden = keras.layers.Dense(8, activation="relu")(keras.layers.Concatenate()([features * mask, mask]))
    model = keras.Model({"features": features, "mask": mask}, keras.layers.Dense(3, activation="softmax")(hidden))
    model.compile("adam", "sparse_categorical_crossentropy")
    history = model.fit(seq, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


@pytest.mark.slow
def test_three_class_weighted_training_end_to_end(classes):
    kw = dict(
        labels=[0, 1, 2, 2],
        one_hot=True,
        weights="genWeight",
        file_weights=[1.0, 1.0, 0.5, 0.5],
        balance_classes=True,
        cut="MET_pt > 10",
        aliases={"HT": "sum(Jet_pt)"},
        exclude=["uid", "cls"],
        batch_size=64,
        chunk_size=512,
        validation_split=0.25,
        seed=4,
    )
    train = RootSequence(classes, subset="training", **kw)
    val = RootSequence(classes, subset="validation", specs=train.specs, **kw)
    assert "HT" in train.feature_names
    keras.utils.set_random_seed(4)
    layers = [keras.layers.Dense(32, activation="relu"), keras.layers.Dense(3, activation="softmax")]
    model = keras.Sequential([keras.Input((train.num_features,)), *layers])
    model.compile(keras.optimizers.Adam(1e-2), "categorical_crossentropy", weighted_metrics=["accuracy"])
    history = model.fit(train, validation_data=val, epochs=4, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert history.history["val_accuracy"][-1] > 0.6  # three classes: chance is 1/3
