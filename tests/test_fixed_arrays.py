"""Fixed-size array branches (``double[3]``) end to end: served, saved, checked against other files, and scored."""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

from mlaas4hep import BranchError, Preprocessing, RootSequence, SpecBuilder


def _write(path: Path, n: int, *, seed: int, size: int = 3, uid: int = 0) -> Path:
    """Events with an id ``uid``, a ``double[size]`` ``p3`` (a NaN in event 5), a flat ``x`` and a jet collection."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(2.0, n)
    p3 = rng.normal(np.arange(size) * 10.0, 1.0 + np.arange(size), (n, size))
    p3[5, 1] = np.nan
    data = {
        "uid": np.arange(uid, uid + n, dtype=np.int64),
        "p3": p3,
        "x": rng.normal(size=n),
        "Jet": ak.zip({"pt": ak.unflatten(rng.exponential(30.0, int(counts.sum())), counts)}),
    }
    types = {k: v.type if isinstance(v, ak.Array) else np.dtype((v.dtype, v.shape[1:])) for k, v in data.items()}
    with uproot.recreate(path) as f:
        tree = f.mktree("Events", types)
        for start in range(0, n, 150):  # several baskets
            tree.extend({k: v[start : start + 150] for k, v in data.items()})
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("fixed")
    return [_write(d / "a.root", 400, seed=1), _write(d / "b.root", 300, seed=2, uid=10_000)]


def _served(seq: RootSequence) -> tuple[dict[str, np.ndarray] | np.ndarray, ...]:
    batches = [seq[i] for i in range(len(seq))]
    x = [b[0] for b in batches]
    if isinstance(x[0], dict):
        return ({k: np.concatenate([b[k] for b in x]) for k in x[0]},)
    return (np.concatenate(x),)


def test_the_flat_layout_serves_each_number_of_the_array_as_a_normalized_column(files):
    seq = RootSequence(files, labels=[1, 0], batch_size=100, chunk_size=250, shuffle=False, mask_output=True)
    names = seq.feature_names
    assert names[:7] == ["nJet", "p3_0", "p3_1", "p3_2", "uid", "x", "Jet_pt_0"] and seq.specs["p3"].kind == "fixed[3]"
    assert not seq.specs.skipped
    batches = [seq[i][0] for i in range(len(seq))]
    X = np.concatenate([b["features"] for b in batches])
    M = np.concatenate([b["mask"] for b in batches])
    p3 = np.concatenate([uproot.open(f)["Events"]["p3"].array(library="np") for f in files])
    uids = np.concatenate([uproot.open(f)["Events"]["uid"].array(library="np") for f in files])
    served = np.rint(seq.flattener.inverse_transform(X)[:, names.index("uid")]).astype(np.int64)
    assert sorted(served) == sorted(uids)  # the files' events interleave in chunks: matched by their id
    p3 = p3[np.searchsorted(uids, served)]
    lo, hi = np.nanmin(p3), np.nanmax(p3)  # one range for the whole branch
    expected = (p3 - lo) / (hi - lo)
    for j in range(3):
        column = names.index(f"p3_{j}")
        real = np.isfinite(expected[:, j])
        np.testing.assert_allclose(X[real, column], expected[real, j], rtol=1e-5, atol=1e-6)
        assert (X[~real, column] == 0).all() and M[:, column].tolist() == real.tolist()
    assert M[:, 1:4].sum() == 3 * 700 - 2  # only the NaNs (one per file) are masked
    seq.close()


def test_the_collections_layout_puts_the_array_in_the_event_input(files):
    args = {"labels": [1, 0], "batch_size": 100, "chunk_size": 250, "seed": 3, "normalization": "standard"}
    flat = RootSequence(files, **args)
    seq = RootSequence(files, layout="collections", **args)
    assert seq.input_spec["event"] == ((6,), "float32") and seq.input_spec["Jet"][0][1] == 1
    order = seq.flattener.feature_order["event"]
    assert order == ["nJet", "p3_0", "p3_1", "p3_2", "uid", "x"]
    for i in range(len(seq)):
        x, xf = seq[i][0], flat[i][0]
        np.testing.assert_array_equal(x["event"], xf[:, [flat.feature_names.index(b) for b in order]])
    flat.close()
    seq.close()


def test_specs_saved_with_an_array_serve_another_part_and_refuse_another_shape(files, tmp_path):
    path = tmp_path / "specs.json"
    kw = {"labels": [1, 0], "batch_size": 100, "chunk_size": 250, "validation_split": 0.25, "seed": 4}
    train = RootSequence(files, subset="training", specs=path, **kw)
    val = RootSequence(files, subset="validation", specs=path, **kw)
    assert val.specs["p3"] == train.specs["p3"] and val.feature_names == train.feature_names
    wider = _write(tmp_path / "wider.root", 400, seed=1, size=4)
    with pytest.raises(BranchError, match=r"wider\.root.*'p3' is fixed\[4\], unlike in the specs"):
        RootSequence([wider, files[1]], labels=[1, 0], specs=train.specs, batch_size=100)
    with pytest.raises(BranchError, match=r"'p3' is fixed\[3\] \(float64\) in '.*a\.root' but fixed\[4\].*wider"):
        SpecBuilder([files[0], wider]).build()
    train.close()
    val.close()


def test_scores_of_a_model_on_an_array_equal_predict_in_file_order(files, tmp_path):
    keras = pytest.importorskip("keras")
    from mlaas4hep import write_scores

    kw = {"exclude": ["uid"], "batch_size": 100, "chunk_size": 250}
    train = RootSequence(files, labels=[1, 0], **kw)
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((train.num_features,)), keras.layers.Dense(1, activation="sigmoid")])
    recipe_path = train.save_preprocessing(tmp_path / "model.preprocessing.json")
    recipe = Preprocessing.load(recipe_path)
    assert recipe.feature_names == train.feature_names and recipe.specs["p3"].kind == "fixed[3]"
    (written,) = write_scores(model, files[:1], preprocessing=recipe_path, output_dir=tmp_path / "out")
    scores = uproot.open(written)["Events"]["score"].array(library="np")
    in_order = RootSequence(files[:1], specs=train.specs, shuffle=False, **kw)
    np.testing.assert_allclose(scores, model.predict(in_order, verbose=0).ravel(), rtol=1e-5, atol=1e-6)
    assert len(scores) == 400
    train.close()
    in_order.close()
