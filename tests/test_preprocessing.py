"""The saved preprocessing: JSON round trip, the same inputs bit for bit, clear errors for what it cannot read."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uproot
from conftest import shared_tree
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlaas4hep import BranchError, ParameterError, Preprocessing, SpecsError
from mlaas4hep.inputs.contents import inspect_file
from mlaas4hep.inputs.sources import FileSource
from mlaas4hep.options import Options
from mlaas4hep.preprocessing import FORMAT, VERSION, preprocessing_path
from mlaas4hep.stream.pipeline import Pipeline
from mlaas4hep.stream.prepare import PreparedData, prepare


def _dataset(files: list[Path], **kw: Any) -> PreparedData:
    options = {"exclude": ["uid", "run"], "batch_size": 50, "chunk_size": 400, "seed": 1, **kw}
    return prepare([str(f) for f in files], [1, 0][: len(files)], Options(**options))


def _arrays(path: Path, names: list[str]) -> Any:
    with uproot.open(path) as f:
        return f["Events"].arrays(names, library="ak")


def test_round_trip_is_exact(two_files: list[Path], tmp_path: Path) -> None:
    aliases = {"log_MET": "log(MET_pt)", "twice_log": "2 * log_MET", "wsum": "nPV + 1"}
    dataset = _dataset(
        two_files,
        aliases=aliases,
        exclude=["uid", "run", "twice_log", "wsum"],
        weights="wsum",
        allow_leaks=["nPV"],
        cut="twice_log > 5",
        normalization="standard",
        pad_value=-1.5,
        max_lengths={"Jet_pt": 3},
        mask_output=True,
    )
    recipe = Preprocessing.from_prepared(dataset)
    path = recipe.save(tmp_path / "p.json")
    loaded = Preprocessing.load(path)
    assert loaded == recipe
    assert loaded.branches == dataset.flattener.branches
    assert loaded.num_features == dataset.flattener.num_features
    assert loaded.feature_names == dataset.flattener.feature_names
    assert loaded.widths == {"Jet_eta": dataset.specs["Jet_eta"].max_length, "Jet_pt": 3}
    assert (loaded.normalization, loaded.pad_value, loaded.mask_output) == ("standard", -1.5, True)
    # the aliases the features and the training cut need; not the weight's
    assert loaded.aliases == {"log_MET": "log(MET_pt)", "twice_log": "2 * log_MET"}
    assert loaded.cut == "twice_log > 5" and loaded.tree == "Events"
    assert loaded.specs.files == () and loaded.specs.selection == {}  # nothing of the training files
    data = json.loads(path.read_text())
    assert (data["format"], data["version"], data["layout"]) == (FORMAT, VERSION, "flat")
    assert data["branches"] == dataset.flattener.branches and data["num_features"] == loaded.num_features
    # scoring needs only the aliases of the features (and of its own cut)
    assert loaded.selection().aliases == {"log_MET": "log(MET_pt)"}
    assert loaded.options(cut="twice_log > 1").aliases == {"log_MET": "log(MET_pt)", "twice_log": "2 * log_MET"}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    normalization=st.sampled_from(["minmax", "standard", None]),
    pad_value=st.one_of(st.floats(-10, 10), st.just(math.nan)),
    cap=st.one_of(st.none(), st.integers(0, 12)),
)
def test_loaded_flattener_makes_the_same_inputs_bit_for_bit(
    tmp_path: Path, normalization: str | None, pad_value: float, cap: int | None
) -> None:
    files = [shared_tree(0, 700), shared_tree(1, 500)]
    dataset = _dataset(files, normalization=normalization, pad_value=pad_value, max_lengths=cap)
    loaded = Preprocessing.load(Preprocessing.from_prepared(dataset).save(tmp_path / "p.json"))
    arrays = _arrays(files[1], dataset.flattener.branches)
    X, M = dataset.flattener.transform(arrays)
    X2, M2 = loaded.flattener().transform(arrays)
    assert X.tobytes() == X2.tobytes()
    np.testing.assert_array_equal(M, M2)


def test_dataset_of_the_recipe_serves_the_training_inputs(two_files: list[Path]) -> None:
    """A dataset made from the recipe alone (no labels, no first pass) serves the sequence's x for the same file."""
    train = _dataset(two_files, aliases={"log_MET": "log(MET_pt)"}, max_lengths=4)
    recipe = Preprocessing.from_prepared(train)
    options = recipe.options(batch_size=70, chunk_size=300)
    assert options.shuffle is False and options.subset is None
    for file in two_files:
        dataset = prepare([str(file)], None, options)
        pipeline = Pipeline(dataset, dataset.epoch_plan())
        try:
            x = np.concatenate([pipeline.batch(0, s).x for s in range(dataset.epoch_plan().batches)])
        finally:
            pipeline.close()
        arrays = _arrays(file, [n for n in train.flattener.branches if n != "log_MET"])
        derived = {**{f: arrays[f] for f in arrays.fields}, **train.selection.derive(arrays, ["log_MET"], len(arrays))}
        expected, _ = train.flattener.transform(derived)
        assert x.tobytes() == expected.tobytes()


def test_save_preprocessing_of_a_sequence(two_files: list[Path], tmp_path: Path) -> None:
    pytest.importorskip("keras")
    from mlaas4hep import RootSequence

    seq = RootSequence(two_files, labels=[1, 0], exclude=["uid", "run"], batch_size=50, chunk_size=400, seed=1)
    try:
        path = seq.save_preprocessing(tmp_path / "model.preprocessing.json")
    finally:
        seq.close()
    assert path == tmp_path / "model.preprocessing.json"
    loaded = Preprocessing.load(path)
    assert loaded == Preprocessing.from_prepared(seq.prepared)
    assert loaded.num_features == seq.num_features and loaded.feature_names == seq.feature_names


def test_preprocessing_path_is_beside_the_model() -> None:
    assert preprocessing_path("out/model.keras") == Path("out/model.preprocessing.json")
    assert preprocessing_path(Path("m.h5")) == Path("m.preprocessing.json")


def _saved(two_files: list[Path], tmp_path: Path) -> dict[str, Any]:
    path = Preprocessing.from_prepared(_dataset(two_files)).save(tmp_path / "p.json")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"layout": "graphs"}, ParameterError, r"layout 'graphs' is not supported .* \('flat', 'collections'\)"),
        ({"version": VERSION + 1}, SpecsError, "version 2 is not one this mlaas4hep reads"),
        ({"format": "mlaas4hep-specs"}, SpecsError, "not a saved preprocessing"),
        ({"num_features": 3}, SpecsError, "do not match its specs"),
        ({"widths": {}}, SpecsError, "widths must name every jagged branch"),
        ({"cut": "MET_pt >"}, ParameterError, "cut"),
    ],
)
def test_what_it_cannot_read_is_a_clear_error(
    two_files: list[Path], tmp_path: Path, change: dict[str, Any], error: type[Exception], match: str
) -> None:
    data = {**_saved(two_files, tmp_path), **change}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(error, match=match) as info:
        Preprocessing.load(path)
    assert "bad.json" in str(info.value)


def test_missing_and_malformed_files(two_files: list[Path], tmp_path: Path) -> None:
    with pytest.raises(SpecsError, match="does not exist"):
        Preprocessing.load(tmp_path / "missing.json")
    (tmp_path / "text.json").write_text("not json")
    with pytest.raises(SpecsError, match="not valid JSON"):
        Preprocessing.load(tmp_path / "text.json")
    data = _saved(two_files, tmp_path)
    del data["specs"]
    (tmp_path / "short.json").write_text(json.dumps(data))
    with pytest.raises(SpecsError, match=r"malformed: KeyError: 'specs'"):
        Preprocessing.load(tmp_path / "short.json")


def test_options_refuse_what_the_recipe_fixes(two_files: list[Path]) -> None:
    recipe = Preprocessing.from_prepared(_dataset(two_files))
    with pytest.raises(ParameterError, match=r"fixes \['normalization', 'shuffle'\]"):
        recipe.options(normalization=None, shuffle=True)


def test_check_file(two_files: list[Path], tmp_path: Path) -> None:
    recipe = Preprocessing.from_prepared(_dataset(two_files, aliases={"log_MET": "log(MET_pt)"}))
    good = inspect_file(FileSource(str(two_files[0])))
    recipe.check_file(good, "nPV > 3")
    with pytest.raises(BranchError, match=r"cut 'nJt > 0' uses \['nJt'\], not a branch of .*sig.root"):
        recipe.check_file(good, "nJt > 0")
    with uproot.recreate(tmp_path / "other.root") as f:
        f.mktree("Events", {"MET_pt": np.float32, "nPV": np.int32, "flag": np.bool_, "nJet": np.int32})
        f.mktree("Flat", {name: np.float32 for name in ("MET_pt", "nPV", "flag", "nJet", "Jet_pt", "Jet_eta")})
    missing = inspect_file(FileSource(str(tmp_path / "other.root")))
    with pytest.raises(BranchError, match=r"lacks the branches \['Jet_eta', 'Jet_pt'\] that the preprocessing reads"):
        recipe.check_file(missing)
    flat = inspect_file(FileSource(str(tmp_path / "other.root"), "Flat"))
    with pytest.raises(BranchError, match=r"'Jet_eta' is flat, 'Jet_pt' is flat, unlike in the preprocessing"):
        recipe.check_file(flat)
