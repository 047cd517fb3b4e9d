"""Scores written back as friend trees: equal to model.predict on inputs made by hand, aligned with every entry."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pytest
import uproot

keras = pytest.importorskip("keras")

from conftest import write_tree  # noqa: E402

from mlaas4hep import BranchError, ParameterError, Preprocessing, RootSequence, write_scores  # noqa: E402
from mlaas4hep.stream.reader import ChunkReader  # noqa: E402
from mlaas4hep.workflow.cli import main  # noqa: E402


@dataclass
class Trained:
    model: Any
    model_path: Path
    recipe_path: Path
    files: list[Path]


@pytest.fixture(scope="module")
def trained(two_files: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A small model trained one epoch on both files (jets capped at 4), saved with its preprocessing."""
    d = tmp_path_factory.mktemp("trained")
    seq = RootSequence(
        two_files,
        labels=[1, 0],
        exclude=["uid", "run"],
        batch_size=100,
        chunk_size=500,
        seed=1,
        max_lengths={"Jet_pt": 4},
    )
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((seq.num_features,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer="adam", loss="binary_crossentropy")
    model.fit(seq, epochs=1, verbose=0)
    seq.close()
    recipe_path = seq.save_preprocessing(d / "model.preprocessing.json")
    model.save(d / "model.keras")
    return Trained(model, d / "model.keras", recipe_path, two_files)


def inputs_by_hand(path: Path, recipe_path: Path, tree: str = "Events") -> tuple[np.ndarray, np.ndarray]:
    """The model's inputs of every entry, from the raw branches: min-max from the saved specs, padded in a loop."""
    data = json.loads(recipe_path.read_text())
    specs = data["specs"]["branches"]
    flat = sorted(n for n, b in specs.items() if b["kind"] == "flat")
    jagged = sorted(n for n, b in specs.items() if b["kind"] == "jagged")
    assert data["branches"] == flat + jagged and data["normalization"] == "minmax"
    with uproot.open(path) as f:
        arrays = f[tree].arrays(flat + jagged, library="ak")
    columns = []
    for name in flat:
        values = ak.to_numpy(arrays[name]).astype(np.float64)
        columns.append(((values - specs[name]["min"]) / (specs[name]["max"] - specs[name]["min"]))[:, None])
    for name in jagged:
        width = data["widths"][name]
        block = np.full((len(arrays), width), np.nan)
        for i, values in enumerate(arrays[name].tolist()):
            kept = values[:width]
            block[i, : len(kept)] = kept
        columns.append((block - specs[name]["min"]) / (specs[name]["max"] - specs[name]["min"]))
    X = np.hstack(columns)
    mask = np.isfinite(X)
    X[~mask] = data["pad_value"]
    return X.astype(np.float32), mask


def read_scores(path: Path, tree: str = "Events") -> dict[str, np.ndarray]:
    with uproot.open(path) as f:
        return {name: array for name, array in f[tree].arrays(library="np").items()}


def test_scores_equal_predict_on_inputs_made_by_hand(trained: Trained, tmp_path: Path) -> None:
    written = write_scores(
        trained.model, trained.files, preprocessing=trained.recipe_path, output_dir=tmp_path / "out", batch_size=128
    )
    assert written == [tmp_path / "out" / "sig_score.root", tmp_path / "out" / "bkg_score.root"]
    for source, output in zip(trained.files, written, strict=True):
        with uproot.open(source) as f, uproot.open(output) as g:
            assert g.keys(cycle=False) == ["Events"]
            assert g["Events"].num_entries == f["Events"].num_entries  # one entry per input entry
            assert g["Events"].keys() == ["score"] and g["Events"].classname == "TTree"
        X, _ = inputs_by_hand(source, trained.recipe_path)
        expected = trained.model.predict(X, verbose=0).ravel()
        scores = read_scores(output)["score"]
        assert scores.dtype == np.float32 and not np.isnan(scores).any()
        np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["bkg_score.root", "sig_score.root"]  # no leftovers
    # files scored side by side on threads (sharing the model) give the same files
    threads = write_scores(
        trained.model,
        trained.files,
        preprocessing=trained.recipe_path,
        output_dir=tmp_path / "threads",
        batch_size=128,
        executor="threads",
    )
    for a, b in zip(written, threads, strict=True):
        np.testing.assert_array_equal(read_scores(a)["score"], read_scores(b)["score"])


def test_a_cut_gives_nan_where_it_fails(trained: Trained, tmp_path: Path) -> None:
    source = trained.files[1]
    (output,) = write_scores(
        str(trained.model_path),
        [source],
        preprocessing=Preprocessing.load(trained.recipe_path),
        output_dir=tmp_path,
        cut="(MET_pt > 40) & any(Jet_pt > 30)",
        chunk_size=300,
        batch_size=64,
    )
    with uproot.open(source) as f:
        raw = f["Events"].arrays(["MET_pt", "Jet_pt"], library="ak")
    passing = ak.to_numpy((raw["MET_pt"] > 40) & ak.any(raw["Jet_pt"] > 30, axis=1))
    assert 0 < passing.sum() < len(passing)
    scores = read_scores(output)["score"]
    assert len(scores) == len(passing)
    np.testing.assert_array_equal(np.isnan(scores), ~passing)
    X, _ = inputs_by_hand(source, trained.recipe_path)
    expected = trained.model.predict(X[passing], verbose=0).ravel()
    np.testing.assert_allclose(scores[passing], expected, rtol=1e-5, atol=1e-6)
    (none,) = write_scores(
        trained.model, [source], preprocessing=trained.recipe_path, output_dir=tmp_path / "none", cut="MET_pt < -1"
    )
    assert np.isnan(read_scores(none)["score"]).all() and len(read_scores(none)["score"]) == len(passing)


def test_every_chunk_is_read_once(trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One pass: nothing is read ahead past the end of the file, nothing twice."""
    reads: Counter[tuple[str, int]] = Counter()
    original = ChunkReader.read

    def counting(self: ChunkReader, k: int, files: Any = None) -> Any:
        reads[(self.sources[0].path, k)] += 1
        return original(self, k, files)

    monkeypatch.setattr(ChunkReader, "read", counting)
    write_scores(
        trained.model,
        trained.files,
        preprocessing=trained.recipe_path,
        output_dir=tmp_path,
        chunk_size=250,
        batch_size=100,
        executor="serial",
    )
    assert reads == Counter(
        {(str(f), k): 1 for f, n in zip(trained.files, (1200, 1800), strict=True) for k in range(n // 250 + 1)}
    )


def test_several_outputs_and_the_mask(two_files: list[Path], tmp_path: Path) -> None:
    """K outputs give name_0 .. name_{K-1}; a model with features and mask inputs gets both."""
    seq = RootSequence(
        two_files, labels=[1, 0], exclude=["uid", "run"], batch_size=100, chunk_size=500, seed=1, mask_output=True
    )
    seq.close()
    recipe = seq.save_preprocessing(tmp_path / "p.json")
    features = keras.Input((seq.num_features,), name="features")
    mask = keras.Input((seq.num_features,), name="mask")
    keras.utils.set_random_seed(2)
    hidden = keras.layers.Dense(8, activation="relu")(keras.layers.Concatenate()([features, mask]))
    model = keras.Model({"features": features, "mask": mask}, keras.layers.Dense(3, activation="softmax")(hidden))
    (output,) = write_scores(model, [two_files[0]], preprocessing=recipe, output_dir=tmp_path, name="p")
    scores = read_scores(output)
    assert list(scores) == ["p_0", "p_1", "p_2"]
    X, M = inputs_by_hand(two_files[0], recipe)
    expected = model.predict({"features": X, "mask": M.astype(np.float32)}, verbose=0)
    np.testing.assert_allclose(np.column_stack([scores[f"p_{k}"] for k in range(3)]), expected, rtol=1e-5, atol=1e-6)


def test_other_trees_empty_trees_and_rntuples(trained: Trained, tmp_path: Path, make_tree: Callable[..., Path]) -> None:
    other = make_tree(tmp_path / "other.root", 333, seed=5, tree="Other")
    with uproot.recreate(tmp_path / "empty.root") as f:
        jets = ak.zip({"pt": [[1.0]], "eta": [[1.0]]})[:0].type  # nJet, Jet_pt and Jet_eta
        f.mktree("Events", {"MET_pt": np.float32, "nPV": np.int32, "flag": np.bool_, "Jet": jets})
    written = write_scores(
        trained.model,
        [f"{other}:Other", tmp_path / "empty.root"],
        preprocessing=trained.recipe_path,
        output_dir=tmp_path / "out",
        rntuple=True,
    )
    with uproot.open(written[0]) as g:
        assert g["Other"].classname == "ROOT::RNTuple" and g["Other"].num_entries == 333
    X, _ = inputs_by_hand(other, trained.recipe_path, tree="Other")
    np.testing.assert_allclose(
        read_scores(written[0], "Other")["score"], trained.model.predict(X, verbose=0).ravel(), rtol=1e-5, atol=1e-6
    )
    (empty,) = write_scores(
        trained.model, [tmp_path / "empty.root"], preprocessing=trained.recipe_path, output_dir=tmp_path
    )
    with uproot.open(empty) as g:
        assert g["Events"].classname == "TTree" and g["Events"].num_entries == 0


def test_the_cli_writes_the_same_file(trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["-v", "0", "predict", "--model", str(trained.model_path), "--preprocessing", str(trained.recipe_path)]
    argv += ["--output-dir", str(tmp_path / "cli"), "--cut", "nPV > 18", *map(str, trained.files)]
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"wrote {tmp_path / 'cli' / f'{n}_score.root'}" for n in ("sig", "bkg")
    ]
    api = write_scores(
        trained.model_path,
        trained.files,
        preprocessing=trained.recipe_path,
        output_dir=tmp_path / "api",
        cut="nPV > 18",
    )
    for path in api:
        cli, ours = read_scores(tmp_path / "cli" / path.name), read_scores(path)
        np.testing.assert_array_equal(cli["score"], ours["score"])
    with pytest.raises(SystemExit) as exited:  # a second run refuses to replace the files
        main(argv)
    assert (
        exited.value.code == 2
        and "sig_score.root' exists; pass overwrite=True (--overwrite)" in capsys.readouterr().err
    )


@pytest.mark.slow
# distributed's nanny and worker processes may warn about their own shutdown (closed comms, leaked
# semaphores in the children); those are the cluster's, not ours
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore:.*[Cc]los.*:UserWarning:distributed.*")
def test_a_dask_cluster_writes_the_same_files(trained: Trained, tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    kw: dict[str, Any] = {
        "preprocessing": trained.recipe_path,
        "cut": "nJet >= 1",
        "chunk_size": 400,
        "batch_size": 100,
    }
    local = write_scores(trained.model_path, trained.files, output_dir=tmp_path / "threads", **kw)
    with (
        distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None, silence_logs=logging.ERROR
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        with pytest.raises(ParameterError, match=r"give the model as the path of its \.keras/\.h5 file"):
            write_scores(trained.model, trained.files, output_dir=tmp_path / "dask", executor=client, **kw)
        on_dask = write_scores(trained.model_path, trained.files, output_dir=tmp_path / "dask", executor=client, **kw)
        pids = client.run(os.getpid)
    assert len(set(pids.values())) == 2
    assert [p.name for p in on_dask] == [p.name for p in local]
    for a, b in zip(local, on_dask, strict=True):
        np.testing.assert_array_equal(read_scores(a)["score"], read_scores(b)["score"])


# -- bad input: a clear error, and nothing written --------------------------------------------------


def _nothing_written(directory: Path) -> bool:
    return not directory.exists() or not any(directory.iterdir())


def test_a_file_without_a_branch_fails_before_anything_is_written(trained: Trained, tmp_path: Path) -> None:
    with uproot.recreate(tmp_path / "nojets.root") as f:
        f.mktree("Events", {"MET_pt": np.float32, "nPV": np.int32, "flag": np.bool_, "nJet": np.int32})
        f["Events"].extend({"MET_pt": [1.0], "nPV": [1], "flag": [True], "nJet": [0]})
    out = tmp_path / "out"
    with pytest.raises(BranchError, match=r"nojets.root:Events lacks the branches \['Jet_eta', 'Jet_pt'\]"):
        write_scores(
            trained.model, [*trained.files, tmp_path / "nojets.root"], preprocessing=trained.recipe_path, output_dir=out
        )
    with pytest.raises(BranchError, match=r"cut 'nMuon > 0' uses \['nMuon'\]"):
        write_scores(trained.model, trained.files, preprocessing=trained.recipe_path, output_dir=out, cut="nMuon > 0")
    assert _nothing_written(out)


def test_a_model_of_another_input_size_fails_before_anything_is_written(trained: Trained, tmp_path: Path) -> None:
    small = keras.Sequential([keras.Input((5,)), keras.layers.Dense(1)])
    out = tmp_path / "out"
    n = trained.model.input_shape[-1]
    with pytest.raises(ParameterError, match=rf"takes inputs of 5 features, but the preprocessing makes {n}"):
        write_scores(small, trained.files, preprocessing=trained.recipe_path, output_dir=out)
    two = keras.Model(
        [i := keras.Input((n,)), j := keras.Input((n,))], [keras.layers.Dense(1)(i), keras.layers.Dense(1)(j)]
    )
    with pytest.raises(ParameterError, match=r"takes 2 inputs; the preprocessing makes 1"):
        write_scores(two, trained.files, preprocessing=trained.recipe_path, output_dir=out)
    with pytest.raises(ParameterError, match=r"model .*missing.keras' not found"):
        write_scores(tmp_path / "missing.keras", trained.files, preprocessing=trained.recipe_path, output_dir=out)
    assert _nothing_written(out)


def test_outputs_that_cannot_be_written(trained: Trained, tmp_path: Path) -> None:
    kw: dict[str, Any] = {"preprocessing": trained.recipe_path}
    (tmp_path / "file").write_text("")
    with pytest.raises(ParameterError, match=r"cannot be made: .*file' is not a directory"):
        write_scores(trained.model, trained.files, output_dir=tmp_path / "file" / "out", **kw)
    with pytest.raises(ParameterError, match=r"name must be a branch name"):
        write_scores(trained.model, trained.files, output_dir=tmp_path / "out", name="my score", **kw)
    with pytest.raises(ParameterError, match=r"executor=<.*ProcessPoolExecutor.*give the model as the path"):
        write_scores(trained.model, trained.files, output_dir=tmp_path / "out", executor=ProcessPoolExecutor(1), **kw)
    twins = [tmp_path / "a" / "sig.root", tmp_path / "b" / "sig.root"]
    for twin in twins:
        twin.parent.mkdir()
        shutil.copy(trained.files[0], twin)
    with pytest.raises(ParameterError, match=r"would both go to .*sig_score.root"):
        write_scores(trained.model, twins, output_dir=tmp_path / "out", **kw)
    shutil.copy(trained.files[1], tmp_path / "a" / "sig_score.root")
    with pytest.raises(ParameterError, match=r"would overwrite the input file .*sig_score.root"):
        write_scores(
            trained.model,
            [twins[0], tmp_path / "a" / "sig_score.root"],
            output_dir=tmp_path / "a",
            overwrite=True,
            **kw,
        )
    assert _nothing_written(tmp_path / "out")
    if os.geteuid() != 0:  # permissions do not bind root
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ParameterError, match=r"cannot be written: no permission"):
            write_scores(trained.model, trained.files, output_dir=locked / "out", **kw)


def test_an_existing_output_needs_overwrite(trained: Trained, tmp_path: Path) -> None:
    kw: dict[str, Any] = {"preprocessing": trained.recipe_path, "output_dir": tmp_path}
    (first,) = write_scores(trained.model, [trained.files[0]], **kw, cut="nPV > 20")
    before = first.read_bytes()
    with pytest.raises(ParameterError, match=r"sig_score.root' exists; pass overwrite=True"):
        write_scores(trained.model, trained.files, **kw)
    assert first.read_bytes() == before and not (tmp_path / "bkg_score.root").exists()
    write_scores(trained.model, trained.files, **kw, overwrite=True)
    assert not np.isnan(read_scores(first)["score"]).any()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bkg_score.root", "sig_score.root"]


def test_the_collections_layout_is_scored_as_it_was_served(two_files: list[Path], tmp_path: Path) -> None:
    """A deep-sets model on the collections layout: its scores equal predict over a sequence in file order."""
    from mlaas4hep.workflow.models import deep_sets

    kw: dict[str, Any] = {"exclude": ["uid", "run"], "batch_size": 100, "chunk_size": 500, "layout": "collections"}
    train = RootSequence(two_files, labels=[1, 0], seed=1, **kw)
    keras.utils.set_random_seed(2)
    model = deep_sets(train)
    recipe_path = train.save_preprocessing(tmp_path / "sets.preprocessing.json")
    recipe = Preprocessing.load(recipe_path)
    assert recipe.layout == "collections" and sorted(recipe.input_spec) == sorted(train.input_spec)
    (written,) = write_scores(model, two_files[:1], preprocessing=recipe_path, output_dir=tmp_path / "out")
    scores = uproot.open(written)["Events"]["score"].array(library="np")
    in_order = RootSequence(two_files[:1], specs=train.specs, shuffle=False, **kw)
    np.testing.assert_allclose(scores, model.predict(in_order, verbose=0).ravel(), rtol=1e-5, atol=1e-6)
    assert len(scores) == 1200


def test_a_model_that_is_not_keras_is_refused_by_name(trained: Trained, tmp_path: Path) -> None:
    class Module:  # as a torch.nn.Module: callable, no predict_on_batch
        def __call__(self, x: Any) -> Any:
            return x

    out = tmp_path / "out"
    with pytest.raises(ParameterError, match=r"model must be a Keras model .* got a .*Module \(no predict_on_batch\)"):
        write_scores(Module(), trained.files, preprocessing=trained.recipe_path, output_dir=out)
    assert _nothing_written(out)


def test_a_chunk_size_alone_sets_the_batches_too(trained: Trained, tmp_path: Path) -> None:
    """chunk_size=500 with the default batch_size (1000) is no error: a batch is at most a chunk."""
    written = write_scores(
        trained.model, trained.files, preprocessing=trained.recipe_path, output_dir=tmp_path, chunk_size=500
    )
    assert len(written) == len(trained.files)


def test_a_model_with_one_named_output_is_scored(trained: Trained, tmp_path: Path) -> None:
    """keras.Model(inputs, {"prob": ...}) predicts a dict of one output: its scores, not "has 1 outputs"."""
    base = trained.model
    named = keras.Model(base.inputs, {"prob": base.outputs[0]})
    (output,) = write_scores(named, [trained.files[0]], preprocessing=trained.recipe_path, output_dir=tmp_path)
    (reference,) = write_scores(
        base, [trained.files[0]], preprocessing=trained.recipe_path, output_dir=tmp_path / "ref"
    )
    np.testing.assert_array_equal(read_scores(output)["score"], read_scores(reference)["score"])


# -- several trees of one file: one friend file, one friend tree each ------------------------------


def write_trees(path: Path, trees: dict[str, tuple[int, int]]) -> Path:
    """One file holding several trees as conftest's write_tree makes them: ``{name: (entries, file_id)}``."""
    with uproot.recreate(path) as out:
        for name, (n, file_id) in trees.items():
            single = write_tree(path.with_name(f"{path.stem}.{file_id}.root"), n, seed=10 + file_id, file_id=file_id)
            with uproot.open(single) as f:
                arrays = f["Events"].arrays(library="ak")
            single.unlink()
            data: dict[str, Any] = {k: ak.to_numpy(arrays[k]) for k in ("uid", "run", "MET_pt", "nPV", "flag")}
            data["Jet"] = ak.zip({"pt": arrays["Jet_pt"], "eta": arrays["Jet_eta"]})
            tree = out.mktree(name, {k: (v.type if isinstance(v, ak.Array) else v.dtype) for k, v in data.items()})
            tree.extend(data)
    return path


TREES = {"sig_tree": (700, 1), "bkg_tree": (450, 0), "dir/Events": (300, 2)}


@pytest.fixture
def one_file(tmp_path: Path) -> Path:
    return write_trees(tmp_path / "f.root", TREES)


def test_the_trees_of_one_file_go_into_one_friend_file(trained: Trained, one_file: Path, tmp_path: Path) -> None:
    """One output, one friend per tree with its entries in order: as each tree scored alone, and as model.predict."""
    kw: dict[str, Any] = {"preprocessing": trained.recipe_path, "cut": "nPV > 18", "chunk_size": 200, "batch_size": 64}
    given = [f"{one_file}:{name}" for name in TREES]
    written = write_scores(trained.model, [*given, trained.files[0]], output_dir=tmp_path / "out", **kw)
    friend = tmp_path / "out" / "f_score.root"
    assert written == [friend, friend, friend, tmp_path / "out" / "sig_score.root"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["f_score.root", "sig_score.root"]
    with uproot.open(friend) as g, uproot.open(one_file) as f:
        assert g.classnames(cycle=False) == {**dict.fromkeys(TREES, "TTree"), "dir": "TDirectory"}
        for name, (n, _) in TREES.items():  # as AddFriend reads it: one entry per input entry
            assert g[name].num_entries == f[name].num_entries == n
    for k, name in enumerate(TREES):
        (alone,) = write_scores(trained.model, [given[k]], output_dir=tmp_path / f"alone{k}", **kw)
        scores, reference = read_scores(friend, name)["score"], read_scores(alone, name)["score"]
        np.testing.assert_array_equal(scores, reference)
        passing = uproot.open(one_file)[name]["nPV"].array(library="np") > 18
        np.testing.assert_array_equal(np.isnan(scores), ~passing)
        X, _ = inputs_by_hand(one_file, trained.recipe_path, tree=name)
        expected = trained.model.predict(X[passing], verbose=0).ravel()
        np.testing.assert_allclose(scores[passing], expected, rtol=1e-5, atol=1e-6)


def test_several_trees_as_rntuples_and_on_threads(trained: Trained, one_file: Path, tmp_path: Path) -> None:
    given = [f"{one_file}:{name}" for name in TREES]
    kw: dict[str, Any] = {"preprocessing": trained.recipe_path, "chunk_size": 256}
    serial = write_scores(trained.model, given, output_dir=tmp_path / "serial", **kw)
    rntuples = write_scores(trained.model, given, output_dir=tmp_path / "rn", executor="threads", rntuple=True, **kw)
    with uproot.open(rntuples[0]) as g:
        assert {name: g[name].classname for name in TREES} == dict.fromkeys(TREES, "ROOT::RNTuple")
    for name in TREES:
        np.testing.assert_array_equal(read_scores(serial[0], name)["score"], read_scores(rntuples[0], name)["score"])


def test_an_error_in_a_later_tree_leaves_no_output(
    trained: Trained, one_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first tree written, the second fails: no output file, no temporary, an existing output untouched."""
    import mlaas4hep.scores.write as scores

    original = scores._predictions
    calls: list[str] = []

    def failing(source: Any, *args: Any) -> Any:
        calls.append(source.tree)
        if source.tree == "bkg_tree":
            msg = f"broken while reading {source}"
            raise OSError(msg)
        return original(source, *args)

    monkeypatch.setattr(scores, "_predictions", failing)
    given = [f"{one_file}:sig_tree", f"{one_file}:bkg_tree"]
    out = tmp_path / "out"
    with pytest.raises(OSError, match=r"broken while reading .*f.root:bkg_tree"):
        write_scores(trained.model, given, preprocessing=trained.recipe_path, output_dir=out)
    assert calls == ["sig_tree", "bkg_tree"] and list(out.iterdir()) == []
    (out / "f_score.root").write_bytes(b"the user's file")
    with pytest.raises(OSError, match=r"broken while reading"):
        write_scores(trained.model, given, preprocessing=trained.recipe_path, output_dir=out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["f_score.root"]
    assert (out / "f_score.root").read_bytes() == b"the user's file"


def test_the_same_tree_twice_is_an_error(trained: Trained, one_file: Path, tmp_path: Path) -> None:
    kw: dict[str, Any] = {"preprocessing": trained.recipe_path, "output_dir": tmp_path / "out"}
    for twice in (
        [f"{one_file}:sig_tree", f"{one_file}:bkg_tree", f"{one_file}:sig_tree"],
        [f"{one_file}:dir/Events", f"{one_file}:/dir/Events;1"],
        [trained.files[0], f"{trained.files[0]}:Events"],  # the default tree, named
    ):
        with pytest.raises(ParameterError, match=r"tree '.*' in '.*' is given twice \(.*\): each tree is scored once"):
            write_scores(trained.model, twice, **kw)
    assert _nothing_written(tmp_path / "out")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "f_score.root").write_bytes(b"the user's file")
    with pytest.raises(ParameterError, match=r"f_score.root' exists; pass overwrite=True"):
        write_scores(trained.model, [f"{one_file}:sig_tree", f"{one_file}:bkg_tree"], **kw)
    assert (tmp_path / "out" / "f_score.root").read_bytes() == b"the user's file"


def test_the_cli_scores_two_trees_of_one_file_into_one(
    trained: Trained, one_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    given = [f"{one_file}:sig_tree", f"{one_file}:bkg_tree"]
    argv = ["-v", "0", "predict", "--model", str(trained.model_path), "--preprocessing", str(trained.recipe_path)]
    assert main([*argv, "--output-dir", str(tmp_path / "cli"), *given]) == 0
    assert capsys.readouterr().out.splitlines() == [f"wrote {tmp_path / 'cli' / 'f_score.root'}"]
    (api, _) = write_scores(trained.model_path, given, preprocessing=trained.recipe_path, output_dir=tmp_path / "api")
    with uproot.open(tmp_path / "cli" / "f_score.root") as g:
        assert g.keys(cycle=False) == ["sig_tree", "bkg_tree"]
    for name in ("sig_tree", "bkg_tree"):
        np.testing.assert_array_equal(
            read_scores(tmp_path / "cli" / "f_score.root", name)["score"], read_scores(api, name)["score"]
        )
