"""run_workflow: the sequences, training, evaluation, plots and saving, called from Python."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pytest

from mlaas4hep.errors import ParameterError
from mlaas4hep.preprocessing import Preprocessing
from mlaas4hep.workflow.lists import parse_labels
from mlaas4hep.workflow.run import run_workflow

# A keras.Model subclass with its own fit(x_train, y_train, **kwds), as the original's models.py.
SUBCLASS_MODEL = """\
import keras

CALLS = []


class MyModel(keras.Model):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def call(self, x, training=False):
        return self.inner(x, training=training)

    def fit(self, x_train, y_train, **kwds):
        CALLS.append((type(x_train).__name__, y_train, sorted(kwds)))
        return super().fit(x_train, y_train, **kwds)


def model(idim):
    inner = keras.Sequential([keras.Input(shape=(idim,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(1, activation="sigmoid")])
    my_model = MyModel(inner)
    my_model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy", keras.metrics.AUC(name="auc")])
    return my_model
"""


def test_subclass_fit_receives_the_sequences(
    tmp_path: Path, make_tree: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    files = [make_tree(tmp_path / f"f{i}.root", 1500, seed=i, file_id=i) for i in range(2)]
    (tmp_path / "my_model.py").write_text(SUBCLASS_MODEL)
    params = {"epochs": 2, "chunk_size": 500, "batch_size": 50, "verbose": 1, "seed": 1, "exclude_branches": "run,uid"}
    with caplog.at_level(logging.INFO, logger="mlaas4hep"):
        result = run_workflow(files, [1, 0], tmp_path / "my_model.py", params)
    module = sys.modules[type(result.model).__module__]
    assert module.CALLS == [("RootSequence", None, ["callbacks", "epochs", "validation_data", "verbose"])]
    assert len(result.history["loss"]) == 2 and "val_auc" in result.history
    assert set(result.metrics) >= {"loss", "accuracy", "auc", "roc_auc"}
    assert 0.5 < result.metrics["roc_auc"] <= 1
    assert "--- first pass:" in caplog.text and "Epoch 2/2" in caplog.text
    # verbose 1: one line per epoch on the loader (LoaderStats)
    loader_lines = [r.getMessage() for r in caplog.records if r.name == "mlaas4hep.loader_stats"]
    assert len(loader_lines) == 2 and all("events/s" in line and "chunks read" in line for line in loader_lines)


def test_label_branch_and_one_chunk(tmp_path: Path, make_tree: Callable[..., Path]) -> None:
    from mlaas4hep.workflow.models import seed_model

    files = [make_tree(tmp_path / f"f{i}.root", 1000, seed=i, file_id=i) for i in range(2)]
    params = {"epochs": 1, "chunk_size": -1, "verbose": 0, "test_split": 0, "identifier": ["uid", "run"]}
    result = run_workflow(files, parse_labels("flag"), seed_model, params)
    assert "flag" not in result.specs.names and "uid" not in result.specs.names
    assert set(result.metrics) >= {"loss", "roc_auc"}  # test_split 0: metrics of the validation set


def test_fout_must_end_in_keras_or_h5(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match=r"--fout: .*model\.pt.* must end in \.keras"):
        run_workflow(["a.root"], [1], lambda idim: None, {}, fout=tmp_path / "model.pt")


def test_sequences_are_closed_when_the_model_fails(two_files: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from mlaas4hep.sequence import RootSequence

    closed: list[str | None] = []
    close = RootSequence.close

    def recording_close(self: RootSequence) -> None:
        closed.append(self.subset)
        close(self)

    def broken_model(idim: int) -> NoReturn:
        msg = f"no model for {idim} features"
        raise RuntimeError(msg)

    monkeypatch.setattr(RootSequence, "close", recording_close)
    with pytest.raises(RuntimeError, match="no model for"):
        run_workflow(two_files, [1, 0], broken_model, {"chunk_size": 300, "verbose": 0})
    assert closed == ["training", "validation", "test"]


def test_categorical_loss_gets_one_hot_labels(
    tmp_path: Path, make_tree: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    import keras

    def model(idim: int) -> Any:
        m = keras.Sequential([keras.Input((idim,)), keras.layers.Dense(3, activation="softmax")])
        m.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
        return m

    files = [make_tree(tmp_path / f"f{i}.root", 600, seed=i, file_id=i) for i in range(3)]
    params = {"epochs": 1, "chunk_size": 300, "batch_size": 50, "verbose": 0, "seed": 1, "exclude_branches": "run,uid"}
    with caplog.at_level(logging.INFO, logger="mlaas4hep"):
        result = run_workflow(files, [0, 1, 2], model, params, fout=tmp_path / "model.keras")
    assert "one-hot labels over 3 classes" in caplog.text
    assert "test set (360 events):" in caplog.text
    assert set(result.metrics) == {"loss", "accuracy", "roc_auc"} and 0 <= result.metrics["roc_auc"] <= 1
    assert result.roc_auc == result.metrics["roc_auc"] and result.plots == []
    assert result.model_path == tmp_path / "model.keras"
    assert keras.models.load_model(result.model_path).output_shape == (None, 3)
    # the preprocessing is saved beside the model, for write_scores
    assert result.preprocessing_path == tmp_path / "model.preprocessing.json"
    recipe = Preprocessing.load(result.preprocessing_path)
    assert recipe.num_features == result.model.input_shape[-1] and "run" not in recipe.branches


def test_fit_without_history_skips_its_plot(
    tmp_path: Path, make_tree: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    """A fit that takes neither callbacks nor validation data, and returns nothing: ROC plot, no history plot."""
    pytest.importorskip("matplotlib")
    import keras

    class OwnFit(keras.Model):  # type: ignore[misc]  # keras has no type information
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def call(self, x: Any, training: bool = False) -> Any:
            return self.inner(x, training=training)

        def fit(self, x_train: Any, epochs: int = 1) -> None:
            super().fit(x_train, epochs=epochs, verbose=0)

    def model(idim: int) -> Any:
        inner = keras.Sequential([keras.Input((idim,)), keras.layers.Dense(1, activation="sigmoid")])
        m = OwnFit(inner)
        m.compile(optimizer="adam", loss="binary_crossentropy")
        return m

    files = [make_tree(tmp_path / f"f{i}.root", 600, seed=i, file_id=i) for i in range(2)]
    hist = tmp_path / "plots"
    params = {"epochs": 1, "chunk_size": 300, "batch_size": 50, "verbose": 0, "hist": str(hist), "test_split": 0}
    with caplog.at_level(logging.INFO, logger="mlaas4hep"):
        result = run_workflow(files, [1, 0], model, params)
    assert "OwnFit.fit takes no ['verbose', 'callbacks', 'validation_data']; not passing them" in caplog.text
    assert "no training history to plot: OwnFit.fit passed no callbacks" in caplog.text
    assert "validation set (240 events):" in caplog.text
    assert result.history == {} and set(result.metrics) == {"loss", "roc_auc"}
    assert result.plots == [hist / "features.pdf", hist / "roc.pdf"]
    assert all(p.read_bytes().startswith(b"%PDF-") for p in result.plots)
    assert result.model_path is None


COLLECTIONS_MODEL = """\
from mlaas4hep.workflow.models import deep_sets


def model(idim):
    return deep_sets(idim, hidden=(8,), head=(8,))
"""


@pytest.mark.slow
def test_collections_layout_from_params(tmp_path: Path, make_tree: Callable[..., Path]) -> None:
    files = [make_tree(tmp_path / f"f{i}.root", 1200, seed=i, file_id=i) for i in range(2)]
    (tmp_path / "sets.py").write_text(COLLECTIONS_MODEL)
    hist = tmp_path / "plots"
    params = {"epochs": 2, "chunk_size": 400, "batch_size": 50, "verbose": 0, "seed": 1, "hist": str(hist)}
    params.update({"exclude_branches": "run,uid", "layout": "collections"})
    (tmp_path / "params.json").write_text(json.dumps(params))  # as workflow --params=params.json reads it
    result = run_workflow(files, [1, 0], tmp_path / "sets.py", tmp_path / "params.json", fout=tmp_path / "sets.keras")
    assert sorted(result.model.input) == ["Jet", "Jet_mask", "event"]  # model(idim) was given the input_spec
    assert len(result.history["loss"]) == 2 and 0.5 < result.metrics["roc_auc"] <= 1
    assert {p.name for p in result.plots} == {"features.pdf", "roc.pdf", "history.pdf"}
    assert (tmp_path / "sets.keras").stat().st_size > 0


FLAT_MODEL = """\
import keras


def model(idim):
    m = keras.Sequential([keras.Input((idim,)), keras.layers.Dense(1, activation="sigmoid")])
    m.compile(optimizer="adam", loss="binary_crossentropy")
    return m
"""


def test_a_flat_model_with_the_collections_layout_is_refused_clearly(
    tmp_path: Path, make_tree: Callable[..., Path]
) -> None:
    files = [make_tree(tmp_path / f"f{i}.root", 300, seed=i, file_id=i) for i in range(2)]
    (tmp_path / "flat.py").write_text(FLAT_MODEL)
    params = {"epochs": 1, "chunk_size": 300, "batch_size": 50, "verbose": 0, "seed": 1, "layout": "collections"}
    (tmp_path / "params.json").write_text(json.dumps({**params, "exclude_branches": "run,uid"}))
    with pytest.raises(ParameterError, match=r'"layout": "collections" gives model\(idim\) the inputs \[.Jet.'):
        run_workflow(files, [1, 0], tmp_path / "flat.py", tmp_path / "params.json", fout=tmp_path / "m.keras")


def test_a_drawn_seed_is_told_saved_and_repeats_the_run(
    tmp_path: Path, make_tree: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    """A seed drawn for "seed": null is told and saved; the saved params repeat the run: same split, same training."""
    from mlaas4hep.workflow.models import seed_model

    files = [make_tree(tmp_path / f"f{i}.root", 800, seed=i, file_id=i) for i in range(2)]
    params = {"epochs": 2, "chunk_size": 400, "batch_size": 50, "seed": None, "exclude_branches": "run,uid"}
    with caplog.at_level(logging.INFO, logger="mlaas4hep"):
        first = run_workflow(files, [1, 0], seed_model, params, fout=tmp_path / "first.keras")
    assert isinstance(first.seed, int) and first.params.seed == first.seed
    assert f'seed {first.seed} (drawn at random for "seed": null)' in caplog.text
    assert first.params_path == tmp_path / "first.params.json"
    saved = json.loads(first.params_path.read_text())
    assert saved["seed"] == first.seed and saved["epochs"] == 2 and saved["exclude_branches"] == ["run", "uid"]
    split = [r.getMessage() for r in caplog.records if r.getMessage().startswith("split of each file's events")]
    assert split == [
        "split of each file's events, in order: the first 60% train (960 events, 20 batches of 50), "
        "the next 20% validate (320 events; validation_split), the last 20% are the test set (320 events; test_split)"
    ]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mlaas4hep"):
        again = run_workflow(files, [1, 0], seed_model, first.params_path)  # workflow --params=first.params.json
    assert again.seed == first.seed and f"seed {first.seed} (params.json's seed)" in caplog.text
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("split of")] == split
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(again.history[key], first.history[key], rtol=1e-5)
    assert again.metrics["roc_auc"] == pytest.approx(first.metrics["roc_auc"], rel=1e-5)


def test_runs_are_reproducible_by_default(two_files: list[Path], caplog: pytest.LogCaptureFixture) -> None:
    from mlaas4hep.workflow.params import DEFAULT_SEED, WorkflowParams

    assert WorkflowParams().seed == DEFAULT_SEED == 1
    params = {"epochs": 1, "chunk_size": 600, "batch_size": 100, "exclude_branches": "run,uid", "test_split": 0}
    with caplog.at_level(logging.INFO, logger="mlaas4hep"):
        result = run_workflow(two_files, [1, 0], _tiny_model, params)
    assert result.seed == 1 and "seed 1 (the default)" in caplog.text
    assert "no test set (test_split 0): the final metrics are the validation set's" in caplog.text


def _tiny_model(idim: int) -> Any:
    import keras

    m = keras.Sequential([keras.Input((idim,)), keras.layers.Dense(1, activation="sigmoid")])
    m.compile(optimizer="adam", loss="binary_crossentropy", metrics=[keras.metrics.AUC(name="auc")])
    return m


def test_test_metrics_are_logged_once_with_one_auc(two_files: list[Path], caplog: pytest.LogCaptureFixture) -> None:
    """Keras' binned AUC stays in the metrics, but the log tells one AUC: the exact one of every score."""
    params = {"epochs": 1, "chunk_size": 600, "batch_size": 100, "exclude_branches": "run,uid"}
    with caplog.at_level(logging.INFO, logger="mlaas4hep"):
        result = run_workflow(two_files, [1, 0], _tiny_model, params)
    assert {"auc", "roc_auc", "loss"} <= set(result.metrics)
    lines = [r.getMessage() for r in caplog.records if r.name == "mlaas4hep.workflow.evaluation"]
    assert lines == [
        "test set (600 events):",
        f"loss : {result.metrics['loss']:.4f}",
        f"roc_auc : {result.roc_auc:.4f}",
    ]
    epochs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Epoch ")]
    assert len(epochs) == 1 and "events/s, waited" in epochs[0] and "val_auc:" in epochs[0]


LIBRARY_CALL = """
import os, sys
sys.path.insert(0, {tests!r})
from conftest import write_tree
from mlaas4hep.workflow.run import run_workflow
from mlaas4hep.workflow.models import seed_model

files = [write_tree(__import__("pathlib").Path({tmp!r}) / f"f{{i}}.root", 400, seed=i, file_id=i) for i in range(2)]
environ = dict(os.environ)
redirected = []
dup2 = os.dup2
os.dup2 = lambda *args, **kwargs: redirected.append(args) or dup2(*args, **kwargs)
run_workflow(files, [1, 0], seed_model, {{"epochs": 1, "chunk_size": 400, "exclude_branches": "run,uid"}})
assert not redirected, f"file descriptors redirected: {{redirected}}"
changed = {{k: v for k, v in os.environ.items() if environ.get(k) != v}}
assert not changed and set(environ) == set(os.environ), f"environment changed: {{changed}}"
print("clean")
"""


def test_a_library_call_leaves_the_process_alone(tmp_path: Path) -> None:
    """run_workflow neither redirects a file descriptor nor sets an environment variable (the CLI alone may)."""
    import subprocess

    tests = str(Path(__file__).resolve().parents[1])
    code = LIBRARY_CALL.format(tests=tests, tmp=str(tmp_path))
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "KERAS_BACKEND")}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0 and run.stdout.strip().endswith("clean"), run.stdout + run.stderr
