"""The k models of a k-fold training scoring files together: each entry by the model that never saw it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uproot

keras = pytest.importorskip("keras")

from mlaas4hep import DataWarning, ParameterError, Preprocessing, RootSequence, write_scores  # noqa: E402
from mlaas4hep.workflow.cli import main  # noqa: E402

K = 3


def write_events(path: Path, n: int, *, seed: int) -> Path:
    """A tree ``Events`` with an ``event`` number (shuffled, some negative) and two features."""
    rng = np.random.default_rng(seed)
    data = {
        "event": rng.permutation(np.arange(-40, n - 40)).astype(np.int64),
        "x": rng.normal(0, 1, n).astype(np.float32),
        "y": rng.exponential(2.0, n).astype(np.float32),
    }
    with uproot.recreate(path) as f:
        f.mktree("Events", {k: v.dtype for k, v in data.items()}).extend(data)
    return path


@dataclass
class Folds:
    files: list[Path]
    models: list[Path]  # model j scores fold j
    recipes: list[Path]


@pytest.fixture(scope="module")
def folds(tmp_path_factory: pytest.TempPathFactory) -> Folds:
    """Three folded preprocessings of two files, and a Dense(1) per fold with its own weights."""
    d = tmp_path_factory.mktemp("folds")
    files = [write_events(d / "sig.root", 310, seed=1), write_events(d / "bkg.root", 250, seed=2)]
    models, recipes = [], []
    for j in range(K):
        seq = RootSequence(
            files, [1, 0], exclude=["event"], folds=K, fold=j, fold_by="event", subset="training", chunk_size=100
        )
        recipes.append(seq.save_preprocessing(d / f"fold{j}.preprocessing.json"))
        seq.close()
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        model.set_weights([np.array([[1.0 + j], [-2.0 * j]], np.float32), np.array([10.0 * j], np.float32)])
        model.save(d / f"fold{j}.keras")
        models.append(d / f"fold{j}.keras")
    return Folds(files, models, recipes)


def read(path: Path) -> dict[str, np.ndarray]:
    with uproot.open(path) as f:
        return dict(f["Events"].arrays(library="np"))


def events(path: Path) -> np.ndarray:
    with uproot.open(path) as f:
        return np.asarray(f["Events"]["event"].array(library="np"))


def test_each_entry_is_scored_by_the_model_of_its_fold(folds: Folds, tmp_path: Path) -> None:
    order = [2, 0, 1]  # any order, paired by position
    written = write_scores(
        [folds.models[j] for j in order],
        folds.files,
        preprocessing=[folds.recipes[j] for j in order],
        output_dir=tmp_path / "all",
        chunk_size=100,
    )
    alone = {}
    for j in range(K):  # each model alone on its test fold (it warns: a folded model alone)
        with pytest.warns(DataWarning, match=f"fold {j} of a 3-fold training"):
            alone[j] = write_scores(
                folds.models[j],
                folds.files,
                preprocessing=folds.recipes[j],
                output_dir=tmp_path / f"fold{j}",
                cut=f"(event % {K}) == {j}",
            )
    for i, (path, file) in enumerate(zip(written, folds.files, strict=True)):
        got, fold = read(path), np.mod(events(file), K)
        assert set(got) == {"score", "fold"} and got["fold"].dtype == np.int32
        np.testing.assert_array_equal(got["fold"], fold)
        assert not np.isnan(got["score"]).any() and len(got["score"]) == len(fold)  # every entry, once
        for j in range(K):
            own = read(alone[j][i])["score"]
            assert np.isnan(own[fold != j]).all()
            np.testing.assert_array_equal(got["score"][fold == j], own[fold == j])
            other = read(alone[(j + 1) % K][i])["score"]  # the models differ: another one's would not do
            assert not np.allclose(got["score"][fold == j], other[fold == j], equal_nan=True)


def test_a_cut_leaves_nan_and_keeps_the_fold(folds: Folds, tmp_path: Path) -> None:
    everything = write_scores(folds.models, folds.files[:1], preprocessing=folds.recipes, output_dir=tmp_path / "a")
    cut = write_scores(
        folds.models, folds.files[:1], preprocessing=folds.recipes, output_dir=tmp_path / "c", cut="x > 0", rntuple=True
    )
    full, some = read(everything[0]), read(cut[0])
    with uproot.open(folds.files[0]) as f:
        passed = f["Events"]["x"].array(library="np") > 0
    np.testing.assert_array_equal(some["fold"], full["fold"])
    np.testing.assert_array_equal(some["score"][passed], full["score"][passed])
    assert np.isnan(some["score"][~passed]).all() and 0 < passed.sum() < len(passed)


def test_threads_give_the_same_scores(folds: Folds, tmp_path: Path) -> None:
    serial = write_scores(folds.models, folds.files, preprocessing=folds.recipes, output_dir=tmp_path / "s")
    loaded = [keras.models.load_model(m, compile=False) for m in folds.models]
    recipes = [Preprocessing.load(p) for p in folds.recipes]
    threads = write_scores(loaded, folds.files, preprocessing=recipes, output_dir=tmp_path / "t", executor="threads")
    for a, b in zip(serial, threads, strict=True):
        np.testing.assert_array_equal(read(a)["score"], read(b)["score"])


def _recipes(folds: Folds) -> list[Preprocessing]:
    return [Preprocessing.load(p) for p in folds.recipes]


def _smaller(folds: Folds, tmp_path: Path) -> Preprocessing:
    """The preprocessing of fold 2 of a training without the branch ``y``: one feature."""
    seq = RootSequence(folds.files, [1, 0], exclude=["event", "y"], folds=K, fold=2, fold_by="event", subset="training")
    seq.close()
    return Preprocessing.load(seq.save_preprocessing(tmp_path / "small.json"))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", r"folds=3 needs the 3 models of folds 0 to 2, got 2: fold 1 missing"),
        ("twice", r"fold 0 is given twice \('.*fold0.preprocessing.json' and '.*fold0.preprocessing.json'\)"),
        ("other k", r"have folds=3 and 4"),
        ("other fold_by", r"have fold_by='event' and 'event \+ 1'"),
        ("unfolded", r"the preprocessing preprocessing\[1\] was made without folds"),
        ("lengths", r"give one preprocessing per model, paired by position: got 3 models and 2 preprocessings"),
        ("sizes", r"model\[2\] \(of fold 2\): the model takes inputs of 2 features"),
        ("name", r"other than 'fold', got 'fold'"),
    ],
)
def test_models_that_are_not_one_k_fold_set_are_refused(folds: Folds, tmp_path: Path, case: str, message: str) -> None:
    models: list[Any] = list(folds.models)
    recipes: list[Any] = list(folds.recipes)
    name = "score"
    if case == "missing":
        models, recipes = [models[0], models[2]], [recipes[0], recipes[2]]
    elif case == "twice":
        recipes[1] = recipes[0]
    elif case in ("other k", "other fold_by", "unfolded"):
        change = {"other k": {"folds": 4}, "other fold_by": {"fold_by": "event + 1"}}
        fields = change.get(case, {"folds": None, "fold": None, "fold_by": None})
        recipes = _recipes(folds)
        recipes[1] = dataclasses.replace(recipes[1], **fields)
    elif case == "lengths":
        recipes = recipes[:2]
    elif case == "sizes":
        recipes = [*_recipes(folds)[:2], _smaller(folds, tmp_path)]
    else:
        name = "fold"
    out = tmp_path / "out"
    with pytest.raises(ParameterError, match=message):
        write_scores(models, folds.files, preprocessing=recipes, output_dir=out, name=name)
    assert not out.exists()


def test_a_model_of_another_input_size_is_named(folds: Folds, tmp_path: Path) -> None:
    wide = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    models: list[Any] = [folds.models[0], wide, folds.models[2]]
    with pytest.raises(ParameterError, match=r"model\[1\] \(of fold 1\): the model takes inputs of 3 features"):
        write_scores(models, folds.files, preprocessing=folds.recipes, output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_folded_model_alone_warns_once_and_scores_every_entry(folds: Folds, tmp_path: Path) -> None:
    with pytest.warns(DataWarning) as caught:
        written = write_scores(folds.models[1], folds.files, preprocessing=folds.recipes[1], output_dir=tmp_path)
    messages = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert len(messages) == 1
    assert "fold 1 of a 3-fold training (fold_by='event')" in messages[0] and "give the 3 models" in messages[0]
    for path in written:
        got = read(path)
        assert set(got) == {"score"} and not np.isnan(got["score"]).any()


def test_the_cli_scores_with_the_three_models(folds: Folds, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["-v", "0", "predict", "--output-dir", str(tmp_path / "cli"), *map(str, folds.files)]
    for model, recipe in zip(folds.models, folds.recipes, strict=True):
        argv += ["--model", str(model), "--preprocessing", str(recipe)]
    assert main(argv) == 0
    api = write_scores(folds.models, folds.files, preprocessing=folds.recipes, output_dir=tmp_path / "api")
    assert capsys.readouterr().out.splitlines() == [f"wrote {tmp_path / 'cli' / p.name}" for p in api]
    for path in api:
        cli, ours = read(tmp_path / "cli" / path.name), read(path)
        np.testing.assert_array_equal(cli["score"], ours["score"])
        np.testing.assert_array_equal(cli["fold"], ours["fold"])
    with pytest.raises(SystemExit) as exited:  # a preprocessing short
        main([*argv[:-2], "--overwrite"])
    assert exited.value.code == 2 and "got 3 models and 2 preprocessings" in capsys.readouterr().err


def test_a_fold_by_alias_is_saved_and_scores_each_entry_by_its_fold(folds: Folds, tmp_path: Path) -> None:
    """An alias that only fold_by uses is saved with each preprocessing (it was dropped: scoring failed)."""
    models, recipes = [], []
    for j in range(2):
        seq = RootSequence(
            folds.files,
            [1, 0],
            branches=["x", "y"],
            aliases={"evt": "event + 40"},
            folds=2,
            fold=j,
            fold_by="evt",
            subset="training",
            chunk_size=100,
        )
        recipes.append(seq.save_preprocessing(tmp_path / f"alias{j}.preprocessing.json"))
        seq.close()
        assert Preprocessing.load(recipes[-1]).aliases == {"evt": "event + 40"}
        models.append(folds.models[j])
    written = write_scores(models, folds.files, preprocessing=recipes, output_dir=tmp_path / "out")
    for path, friend in zip(folds.files, written, strict=True):
        with uproot.open(path) as f, uproot.open(friend) as g:
            event = f["Events"]["event"].array(library="np")
            np.testing.assert_array_equal(g["Events"]["fold"].array(library="np"), (event + 40) % 2)
