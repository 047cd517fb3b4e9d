"""The models: deep_sets learns the demo files from the collections layout, and ignores the order of entries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from mlaas4hep import ParameterError, RootSequence  # noqa: E402
from mlaas4hep.workflow.demo import make_demo_files  # noqa: E402
from mlaas4hep.workflow.models import deep_sets, seed_model  # noqa: E402

SPEC = {
    "event": ((3,), "float32"),
    "Jet": ((4, 2), "float32"),
    "Jet_mask": ((4,), "float32"),
    "Muon": ((2, 3), "float32"),
    "Muon_mask": ((2,), "float32"),
}


@pytest.mark.slow
def test_deep_sets_learns_the_demo_files(tmp_path: Path) -> None:
    files = make_demo_files(tmp_path, n_events=6000, seed=3)
    kw = {"labels": [1, 0], "batch_size": 100, "chunk_size": 2000, "validation_split": 0.25, "seed": 1}
    train = RootSequence(files, subset="training", layout="collections", **kw)
    val = RootSequence(files, subset="validation", layout="collections", specs=train.specs, **kw)
    assert [n for n in train.input_spec if not n.endswith("_mask")] == ["event", "Electron", "Jet", "Muon", "Tau"]
    keras.utils.set_random_seed(1)
    model = deep_sets(train)
    history = model.fit(train, validation_data=val, epochs=3, verbose=0)
    assert history.history["val_auc"][-1] >= 0.75
    assert train.epoch == 3
    train.close()
    val.close()


def _batch(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    x = {name: rng.normal(size=(n, *shape)).astype(np.float32) for name, (shape, _) in SPEC.items()}
    for name in ("Jet", "Muon"):
        length = SPEC[name][0][0]
        real = np.arange(length) < rng.integers(0, length + 1, n)[:, None]
        x[f"{name}_mask"] = real.astype(np.float32)
        x[name][~real] = 0.0  # padding
    return x


def test_deep_sets_ignores_the_order_of_entries_and_the_padding() -> None:
    keras.utils.set_random_seed(3)
    model = deep_sets(SPEC, hidden=(8,), head=(8,))
    assert sorted(model.input) == sorted(SPEC)  # inputs named as x's keys
    rng = np.random.default_rng(4)
    x = _batch(rng, 32)
    before = model.predict_on_batch(x)
    shuffled = dict(x)
    for name in ("Jet", "Muon"):
        perm = rng.permutation(SPEC[name][0][0])  # entries and their mask, permuted together
        shuffled[name], shuffled[f"{name}_mask"] = x[name][:, perm], x[f"{name}_mask"][:, perm]
    np.testing.assert_allclose(model.predict_on_batch(shuffled), before, rtol=1e-5, atol=1e-6)
    padded = dict(x)  # what a padded entry holds does not matter
    padded["Jet"] = np.where(x["Jet_mask"][..., None] == 0, 5.0, x["Jet"]).astype(np.float32)
    np.testing.assert_allclose(model.predict_on_batch(padded), before, rtol=1e-5, atol=1e-6)


def test_deep_sets_saves_and_loads(tmp_path: Path) -> None:
    model = deep_sets(SPEC, hidden=(4,), head=(4,), pooling="mean")
    x = _batch(np.random.default_rng(1), 8)
    model.train_on_batch(x, np.arange(8) % 2)  # as trained models are saved
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(again.predict_on_batch(x), model.predict_on_batch(x), rtol=1e-6)


def test_deep_sets_needs_collections() -> None:
    with pytest.raises(ParameterError, match="layout='collections'"):
        deep_sets({"features": ((10,), "float32")})
    with pytest.raises(ParameterError, match="pooling"):
        deep_sets(SPEC, pooling="max")
    assert seed_model(5).input_shape == (None, 5)
