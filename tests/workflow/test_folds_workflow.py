"""params.json's folds: the workflow trains k models, model j tested on fold j; the report and the saved files."""

from __future__ import annotations

import json
import logging
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uproot
from sklearn.metrics import roc_auc_score

from mlaas4hep.errors import ParameterError
from mlaas4hep.preprocessing import Preprocessing
from mlaas4hep.workflow.folds import fold_path, predict_command
from mlaas4hep.workflow.params import WorkflowParams, load_params
from mlaas4hep.workflow.run import run_workflow


def small_model(idim: int) -> Any:
    import keras

    model = keras.Sequential([keras.Input(shape=(idim,)), keras.layers.Dense(4, activation="relu")])
    model.add(keras.layers.Dense(1, activation="sigmoid"))
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    return model


def test_three_folds_train_three_models_each_tested_on_its_fold(
    tmp_path: Path, make_tree: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    files = [make_tree(tmp_path / f"f{i}.root", 600, seed=i, file_id=i) for i in range(2)]
    params = {"folds": 3, "fold_by": "uid", "epochs": 1, "batch_size": 100, "chunk_size": 300}
    params |= {"exclude_branches": "run,uid", "validation_split": 0.25, "verbose": 1}
    with caplog.at_level(logging.INFO, logger="mlaas4hep"):
        result = run_workflow(files, [1, 0], small_model, params, fout=tmp_path / "model.keras")
    assert [f.fold for f in result.folds] == [0, 1, 2] and len(result.model) == 3
    # fold j's test set is every event with uid % 3 == j: together, each event once
    uids = [uproot.open(f)["Events"]["uid"].array(library="np") for f in files]
    assert [f.y_true.size for f in result.folds] == [sum(int((u % 3 == j).sum()) for u in uids) for j in range(3)]
    for j, fold in enumerate(result.folds):
        assert fold.model_path == tmp_path / f"model_fold{j}.keras" and fold.model_path.is_file()
        saved = Preprocessing.load(tmp_path / f"model_fold{j}.preprocessing.json")
        assert (saved.folds, saved.fold, saved.fold_by) == (3, j, "uid")
    # the pooled AUC: every event's score by its fold's model, the folds' predictions concatenated
    y_true = np.concatenate([f.y_true for f in result.folds])
    scores = np.concatenate([f.scores for f in result.folds])
    pooled = roc_auc_score(y_true, scores)
    assert result.roc_auc == pytest.approx(pooled, abs=1e-9) and result.metrics["pooled_roc_auc"] == result.roc_auc
    aucs = [f.metrics["roc_auc"] for f in result.folds]
    assert result.metrics["roc_auc"] == pytest.approx(np.mean(aucs))
    assert result.spreads["roc_auc"] == pytest.approx(np.std(aucs, ddof=1))
    # the report: each fold's test set, the means ± std, the pooled AUC, the predict command
    text = caplog.text
    assert all(f"fold {j} test set ({result.folds[j].y_true.size} events):" in text for j in range(3))
    assert f"roc_auc : {np.mean(aucs):.4f} ± {np.std(aucs, ddof=1):.4f}" in text
    assert f"pooled roc_auc : {pooled:.4f} (all {y_true.size} test events" in text
    models = " ".join(f"--model {tmp_path / f'model_fold{j}.keras'}" for j in range(3))
    assert models in text and "--preprocessing" in text
    # one params file for the run: it repeats the k-fold run
    assert load_params(tmp_path / "model.params.json") == result.params
    assert result.params.folds == 3 and result.params.test_split == 0


def test_without_folds_nothing_changes(two_files: list[Path]) -> None:
    result = run_workflow(two_files, [1, 0], small_model, {"epochs": 1, "verbose": 0, "exclude_branches": "run,uid"})
    assert result.folds == [] and result.params.folds is None and "pooled_roc_auc" not in result.metrics


def test_a_specs_object_is_refused_with_folds(two_files: list[Path]) -> None:
    from mlaas4hep import RootSequence

    with RootSequence(two_files, [1, 0]) as seq:
        specs = seq.specs
    with pytest.raises(ParameterError, match="with params' 'folds' give a specs path"):
        run_workflow(two_files, [1, 0], small_model, {"folds": 2, "fold_by": "uid", "verbose": 0}, specs=specs)


def test_fold_paths_and_the_predict_command() -> None:
    assert fold_path("out/model.keras", 1) == Path("out/model_fold1.keras")
    assert fold_path("specs.json", 0) == Path("specs_fold0.json")

    class Saved:
        def __init__(self, j: int) -> None:
            self.model_path, self.preprocessing_path = Path(f"m{j}.keras"), Path(f"m{j}.preprocessing.json")

    command = shlex.join(predict_command(["a.root"], [Saved(0), Saved(1)], "scores"))  # type: ignore[list-item]
    assert command == (
        "mlaas4hep predict a.root --model m0.keras --model m1.keras "
        "--preprocessing m0.preprocessing.json --preprocessing m1.preprocessing.json --output-dir scores"
    )


def test_params_folds_round_trip() -> None:
    params = WorkflowParams.from_dict({"folds": 4})
    assert (params.folds, params.fold_by, params.test_split) == (4, "event", 0)
    assert WorkflowParams.from_dict(json.loads(json.dumps(params.to_dict()))) == params
