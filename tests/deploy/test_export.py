"""The exported bundle: ONNX Runtime fed from preprocess.json and the raw branches alone gives write_scores' scores."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pytest
import uproot


def _require(module: str) -> Any:
    """The module, or this file skipped without it; under CI (``CI`` set), where the test extra has it, a failure."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        reason = f"{module} is not installed ({err}): pip install 'mlaas4hep[onnx]' keras"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)", pytrace=False)
        pytest.skip(reason, allow_module_level=True)


keras = _require("keras")
onnxruntime = _require("onnxruntime")
_require("tf2onnx")

from mlaas4hep import FileAccessError, ParameterError, Preprocessing, RootSequence, export, write_scores  # noqa: E402
from mlaas4hep.deploy.layout import plan_inputs, preprocess_json  # noqa: E402
from mlaas4hep.inputs.selection import Selection  # noqa: E402
from mlaas4hep.workflow.cli import main  # noqa: E402
from mlaas4hep.workflow.models import deep_sets  # noqa: E402

MATH = {name: getattr(np, name) for name in ("log", "exp", "sqrt", "abs", "sin", "cos", "arctan2", "hypot")}


def write_events(path: Path, n: int, *, seed: int, shift: float) -> Path:
    """A NanoAOD-like tree with NaN and inf among the values, a fixed-size array and a large-offset branch."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(2.5, n)
    total = int(counts.sum())
    met = (rng.exponential(30.0, n) + 5 * shift).astype(np.float32)
    met[rng.random(n) < 0.02] = np.nan
    met[rng.random(n) < 0.01] = np.inf
    jet_pt = (rng.exponential(40.0, total) + 10 * shift).astype(np.float32)
    jet_pt[rng.random(total) < 0.02] = np.nan
    data = {
        "MET_pt": met,
        "nPV": rng.poisson(20, n).astype(np.int32),
        "flag": rng.random(n) < 0.5 + 0.2 * shift,
        "p3": rng.normal(shift, 1.0, (n, 3)),
        "timestamp": (1_700_000_000 + rng.integers(0, 100, n)).astype(np.int64),
        "Jet": ak.zip(
            {
                "pt": ak.unflatten(jet_pt, counts),
                "eta": ak.unflatten(rng.normal(0.3 * shift, 2.0, total).astype(np.float32), counts),
            }
        ),
    }
    with uproot.recreate(path) as f:
        f.mktree(
            "Events", {k: (v.type if isinstance(v, ak.Array) else (v.dtype, v.shape[1:])) for k, v in data.items()}
        )
        f["Events"].extend(data)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("events")
    return [
        write_events(d / "sig.root", 600, seed=1, shift=1.0),
        write_events(d / "bkg.root", 800, seed=2, shift=0.0),
        write_events(d / "other.root", 500, seed=3, shift=2.0),
    ]


@dataclass
class Trained:
    model_path: Path
    recipe_path: Path
    files: list[Path]


def train(
    files: list[Path], directory: Path, model: Any, *, suffix: str = ".keras", labels: Any = (1, 0), **kw: Any
) -> Trained:
    """Fit ``model(seq)`` one epoch on ``files``; save it and its preprocessing in ``directory``."""
    options: dict[str, Any] = {"batch_size": 100, "chunk_size": 500, "seed": 1, "exclude": ["timestamp"], **kw}
    seq = RootSequence(files, labels=list(labels), **options)
    keras.utils.set_random_seed(1)
    net = model(seq)
    net.fit(seq, epochs=1, verbose=0)
    seq.close()
    recipe = seq.save_preprocessing(directory / "model.preprocessing.json")
    net.save(directory / f"model{suffix}")
    return Trained(directory / f"model{suffix}", recipe, files)


def dense(seq: Any, outputs: int = 1) -> Any:
    net = keras.Sequential(
        [
            keras.Input((seq.num_features,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(outputs, activation="sigmoid" if outputs == 1 else "softmax"),
        ]
    )
    net.compile(optimizer="adam", loss="binary_crossentropy" if outputs == 1 else "categorical_crossentropy")
    return net


# -- the consumer: what a C++ program does with preprocess.json, in float32 numpy --------------------
# (its new variables from the aliases as mlaas4hep writes them; test_aliases.py and
# test_the_new_variables_compile_in_cpp_to_mlaas4hep_values run their C++ form)


def _variable(tree: Any, name: str, aliases: dict[str, str], cache: dict[str, Any]) -> Any:
    """A branch's raw values, or a new variable computed from the branches by its alias's expression."""
    if name not in cache:
        if name in aliases:
            used = [n for n in re.findall(r"[A-Za-z_][\w.]*", aliases[name]) if n not in MATH]
            scope = {n: _variable(tree, n, aliases, cache) for n in used}
            cache[name] = eval(aliases[name], {"__builtins__": {}, **MATH}, scope)  # a test's own text
        else:
            cache[name] = tree[name].array()
    return cache[name]


def consumer_inputs(bundle: Path, file: Path) -> dict[str, np.ndarray]:
    """Each input group's tensor for every entry of ``file``, from preprocess.json and the raw branches only."""
    config = json.loads((bundle / "preprocess.json").read_text())
    extra = config["mlaas4hep"]
    tree = uproot.open(file)[extra["tree"]]
    n, cache = tree.num_entries, {}
    feeds = {}
    for group in config["input_names"]:
        entry = config[group]
        names, length = entry["var_names"], entry["var_length"]
        out = np.empty((n, len(names), length), dtype=np.float32)
        for v, var in enumerate(names):
            info = {k: np.float32(x) for k, x in entry["var_infos"][var].items()}
            if var == f"{group}_mask":  # 1 for each element the event has (its collection's first variable's)
                raw = ak.ones_like(_variable(tree, names[0], extra["aliases"], cache))
            else:
                raw = _variable(tree, var, extra["aliases"], cache)
            if raw.ndim == 1:
                raw = ak.unflatten(raw, 1)
            padded = ak.pad_none(raw, length, clip=True)
            present = ~ak.to_numpy(ak.is_none(padded, axis=1))
            x = ak.to_numpy(ak.fill_none(padded, 0.0)).astype(np.float32)
            x = np.where(np.isfinite(x) & (np.abs(x) <= 1e32), x, info["replace_inf_value"])
            value = np.clip((x - info["median"]) * info["norm_factor"], info["lower_bound"], info["upper_bound"])
            out[:, v] = np.where(present, value, info["pad"])
        feeds[group] = out
    return feeds


def onnx_scores(bundle: Path, file: Path) -> np.ndarray:
    config = json.loads((bundle / "preprocess.json").read_text())
    session = onnxruntime.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    return np.concatenate(session.run(config["output_names"], consumer_inputs(bundle, file)), axis=1)


def written_scores(trained: Trained, file: Path, out: Path, names: list[str]) -> np.ndarray:
    (path,) = write_scores(trained.model_path, [file], preprocessing=trained.recipe_path, output_dir=out)
    tree = uproot.open(path)["Events"]
    return np.stack([tree[name].array(library="np") for name in names], axis=1)


def assert_parity(trained: Trained, bundle: Path, tmp_path: Path) -> None:
    """On every entry of every file, ONNX Runtime's scores are write_scores' within 1e-5."""
    names = json.loads((bundle / "preprocess.json").read_text())["output_names"]
    for k, file in enumerate(trained.files):
        expected = written_scores(trained, file, tmp_path / f"scores{k}", names)
        got = onnx_scores(bundle, file)
        assert got.shape == expected.shape == (uproot.open(file)["Events"].num_entries, len(names))
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


# -- parity ------------------------------------------------------------------------------------------


def test_flat_layout_with_nan_a_fixed_array_and_an_alias(files: list[Path], tmp_path: Path) -> None:
    aliases = {"log_MET_pt": "log(MET_pt)", "Jet_ptx": "Jet_pt * cos(Jet_eta) / 2"}
    trained = train(files[:2], tmp_path, dense, aliases=aliases, max_lengths={"Jet_pt": 3})
    bundle = export(trained.model_path, trained.recipe_path, tmp_path / "bundle")
    config = json.loads((bundle / "preprocess.json").read_text())
    assert config["input_names"] == ["event", "p3", "Jet_3", "Jet_9"]  # Jet_pt capped at 3, the others at 9
    assert config["event"]["var_names"] == ["MET_pt", "flag", "log_MET_pt", "nJet", "nPV"]
    assert config["p3"]["var_length"] == 3 and config["event"]["var_length"] == 1
    assert config["Jet_9"]["var_names"] == ["Jet_eta", "Jet_ptx"]
    assert config["mlaas4hep"]["aliases"] == aliases
    assert config["mlaas4hep"]["new_variables"] == {
        "log_MET_pt": "log(MET_pt)",
        "Jet_ptx": "1.0 * (Jet_pt * cos(Jet_eta)) / 2",
    }
    info = config["event"]["var_infos"]["MET_pt"]
    spec = Preprocessing.load(trained.recipe_path).specs["MET_pt"]
    assert info["median"] == pytest.approx(spec.min) and info["norm_factor"] == pytest.approx(1 / (spec.max - spec.min))
    assert (info["lower_bound"], info["upper_bound"], info["pad"]) == (-1e32, 1e32, 0.0)
    assert config["output_names"] == ["score"]
    assert_parity(trained, bundle, tmp_path)


def test_collections_layout_with_its_masks_and_a_pad_value(files: list[Path], tmp_path: Path) -> None:
    """deep_sets on x["Jet"], x["Jet_mask"] and x["event"]; padding -1 (a NaN becomes -1 too, its mask stays 1)."""
    trained = train(files[:2], tmp_path, deep_sets, layout="collections", pad_value=-1.0)
    bundle = export(trained.model_path, trained.recipe_path, tmp_path / "bundle", name="sets")
    config = json.loads((bundle / "preprocess.json").read_text())
    assert config["input_names"] == ["event", "p3", "Jet"]  # p3's numbers join x["event"] in the graph
    assert config["Jet"]["var_names"] == ["Jet_eta", "Jet_pt", "Jet_mask"]
    assert config["Jet"]["var_infos"]["Jet_mask"] == {
        "median": 0.0,
        "norm_factor": 1.0,
        "replace_inf_value": 0.0,
        "lower_bound": -1e32,
        "upper_bound": 1e32,
        "pad": 0.0,
    }
    pt = config["Jet"]["var_infos"]["Jet_pt"]
    assert (pt["replace_inf_value"] - pt["median"]) * pt["norm_factor"] == pytest.approx(-1.0)
    assert (bundle / "triton" / "sets" / "1" / "model.onnx").read_bytes() == (bundle / "model.onnx").read_bytes()
    assert_parity(trained, bundle, tmp_path)


def test_a_softmax_model_saved_as_h5(files: list[Path], tmp_path: Path) -> None:
    """Three classes, one-hot, standardized: three outputs named as write_scores' branches, each (batch, 1)."""
    net = lambda seq: dense(seq, 3)  # noqa: E731
    trained = train(files, tmp_path, net, suffix=".h5", labels=(0, 1, 2), one_hot=True, normalization="standard")
    bundle = export(trained.model_path, trained.recipe_path, tmp_path / "bundle")
    session = onnxruntime.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [(o.name, o.shape) for o in session.get_outputs()] == [(f"score_{k}", ["batch", 1]) for k in range(3)]
    assert all(i.shape[0] == "batch" and i.type == "tensor(float)" for i in session.get_inputs())
    config = (bundle / "triton" / "model" / "config.pbtxt").read_text()
    assert re.findall(r'name: "(\w+)"', config) == ["model", "event", "p3", "Jet", "score_0", "score_1", "score_2"]
    groups = json.loads((bundle / "preprocess.json").read_text())
    dims = [f"[ -1, {len(groups[g]['var_names'])}, {groups[g]['var_length']} ]" for g in ("event", "p3", "Jet")]
    assert re.findall(r"dims: (\[.*\])", config) == [*dims, *["[ -1, 1 ]"] * 3] and dims[1] == "[ -1, 1, 3 ]"
    assert 'backend: "onnxruntime"' in config and "max_batch_size: 0" in config
    nPV = json.loads((bundle / "preprocess.json").read_text())["event"]["var_infos"]["nPV"]
    spec = Preprocessing.load(trained.recipe_path).specs["nPV"]
    assert (nPV["median"], nPV["norm_factor"]) == pytest.approx((spec.mean_value, 1 / spec.std))
    assert_parity(trained, bundle, tmp_path)
    scores = onnx_scores(bundle, files[0])
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-5)


# -- the command line and the files ------------------------------------------------------------------


@pytest.fixture(scope="module")
def small(files: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return train(files[:2], tmp_path_factory.mktemp("small"), dense, exclude=["timestamp", "p3"])


def test_the_cli_writes_the_bundle(small: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bundle"
    argv = ["export", "--model", str(small.model_path), "--preprocessing", str(small.recipe_path)]
    assert main([*argv, "--output-dir", str(out), "--name", "tagger"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "README.md",
        "model.onnx",
        "preprocess.json",
        "triton/tagger/1/model.onnx",
        "triton/tagger/config.pbtxt",
    ]
    assert "/v2/models/tagger/infer" in (out / "README.md").read_text()
    with pytest.raises(SystemExit):  # an existing bundle needs --overwrite
        main([*argv, "--output-dir", str(out)])
    assert "give overwrite=True" in capsys.readouterr().err
    assert main([*argv, "--output-dir", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in (out / "triton").iterdir()) == ["model"]  # replaced, the old one gone


def test_a_failed_export_leaves_the_old_bundle(small: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = export(small.model_path, small.recipe_path, tmp_path / "bundle")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def failing(self: Any, directory: Path) -> None:
        (directory / "model.onnx").write_bytes(b"half")
        msg = "disk full"
        raise OSError(msg)

    monkeypatch.setattr("mlaas4hep.deploy.exporter._Bundle.fill", failing)
    with pytest.raises(OSError, match="disk full"):
        export(small.model_path, small.recipe_path, out, overwrite=True)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_a_graph_that_gives_other_scores_is_refused(
    small: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe in ONNX Runtime against Keras: here the graph holds a copy of the model with new weights."""
    from mlaas4hep.deploy import graph

    wrapper = graph._wrapper
    monkeypatch.setattr(graph, "_wrapper", lambda model, *a: wrapper(keras.models.clone_model(model), *a))
    with pytest.raises(ParameterError, match=r"gives scores that differ from Keras' by up to .* not exported"):
        export(small.model_path, small.recipe_path, tmp_path / "bundle")
    assert _refused(tmp_path)


def test_an_existing_directory_with_other_files_is_never_touched(small: Trained, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    with pytest.raises(FileAccessError, match=r"holds \['notes.txt'\], which an export does not write"):
        export(small.model_path, small.recipe_path, out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # no temporary directory left


# -- refusals ----------------------------------------------------------------------------------------


def _refused(tmp_path: Path) -> bool:
    return not (tmp_path / "bundle").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def recipe(files: list[Path], path: Path, **kw: Any) -> Path:
    """The preprocessing of a sequence on ``files`` (no model trained: export refuses it before loading one)."""
    return RootSequence(files, labels=[1, 0], **{"exclude": ["timestamp"], **kw}).save_preprocessing(path)


def test_an_alias_a_consumer_cannot_compute_is_refused(small: Trained, tmp_path: Path) -> None:
    made = recipe(small.files, tmp_path / "ht.json", aliases={"ht": "sum(Jet_pt)"}, branches=["ht", "MET_pt"])
    assert Preprocessing.load(made).branches == ["MET_pt", "ht"]
    with pytest.raises(ParameterError, match=r"alias 'ht' = 'sum\(Jet_pt\)' calls 'sum'"):
        export(small.model_path, made, tmp_path / "bundle")
    assert _refused(tmp_path)


def test_the_new_variables_compile_in_cpp_to_mlaas4hep_values(small: Trained, tmp_path: Path) -> None:
    """preprocess.json's new_variables, compiled by g++ on the int32 and float32 branches, give the features' values."""
    from cxx_consumer import evaluate

    aliases = {"half_nPV": "nPV / 2", "per_pv": "nJet / nPV", "r": "nPV ** 2 / (MET_pt + e)", "s": "half_nPV * pi"}
    made = recipe(small.files, tmp_path / "aliases.json", aliases=aliases, branches=["MET_pt", *aliases])
    preprocessing = Preprocessing.load(made)
    config = preprocess_json(plan_inputs(preprocessing), ["score"], preprocessing)
    assert config["event"]["var_names"] == ["MET_pt", "half_nPV", "per_pv", "r", "s"]
    assert list(config["mlaas4hep"]["new_variables"]) == ["half_nPV", "per_pv", "r", "s"]
    arrays = uproot.open(small.files[0])["Events"].arrays(["nPV", "nJet", "MET_pt"], library="np")
    assert arrays["nPV"].dtype == arrays["nJet"].dtype == np.int32
    got = evaluate(config["mlaas4hep"]["new_variables"], arrays, tmp_path)
    expected = Selection(aliases=aliases).derive(arrays, list(aliases), len(arrays["nPV"]))
    assert (expected["half_nPV"] % 1 == 0.5).any()
    for name in aliases:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-6, atol=1e-6, equal_nan=True, err_msg=name)


def test_what_cannot_be_exported_exactly_is_refused(small: Trained, tmp_path: Path) -> None:
    masked = recipe(small.files, tmp_path / "masked.json", mask_output=True)
    with pytest.raises(ParameterError, match=r"mask_output=True cannot be exported"):
        export(small.model_path, masked, tmp_path / "bundle")
    big = recipe(small.files, tmp_path / "big.json", exclude=["p3"])  # timestamp: 1.7e9 over a range of 100
    with pytest.raises(ParameterError, match=r"branch 'timestamp' holds values up to 1\.7e\+09"):
        export(small.model_path, big, tmp_path / "bundle")
    constant = recipe(small.files, tmp_path / "constant.json", aliases={"one": "nPV * 0 + 1"}, pad_value=-1.0)
    with pytest.raises(ParameterError, match=r"branch 'one' is constant .* pad_value=-1.0"):
        export(small.model_path, constant, tmp_path / "bundle")
    assert _refused(tmp_path)


@keras.saving.register_keras_serializable(package="mlaas4hep_tests")
class NumpyLayer(keras.layers.Layer):
    """A layer that runs numpy inside the graph: Keras runs it, tf2onnx cannot convert it."""

    def call(self, x: Any) -> Any:
        import tensorflow as tf

        y = tf.numpy_function(lambda a: a * 2, [x], tf.float32, stateful=False)
        y.set_shape(x.shape)
        return y

    def compute_output_shape(self, shape: Any) -> Any:
        return shape


def test_a_model_that_cannot_be_loaded_or_converted_is_refused(small: Trained, tmp_path: Path) -> None:
    seq_features = Preprocessing.load(small.recipe_path).num_features
    inputs = keras.Input((seq_features,))
    custom = keras.Model(inputs, keras.layers.Dense(1)(NumpyLayer()(inputs)))
    with pytest.raises(
        ParameterError, match=r"the model given cannot be converted to ONNX by tf2onnx: .*PyFuncStateless"
    ):
        export(custom, small.recipe_path, tmp_path / "bundle")
    assert _refused(tmp_path)
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a zip file")
    with pytest.raises(ParameterError, match=r"the model '.*broken.keras' cannot be loaded by Keras"):
        export(broken, small.recipe_path, tmp_path / "bundle")
    assert _refused(tmp_path)


@pytest.mark.parametrize("ci", ["1", ""])
def test_this_file_without_tf2onnx_is_skipped_or_under_ci_fails(ci: str, tmp_path: Path) -> None:
    """Collected with tf2onnx hidden (a module of that name saying it is not installed): skipped; under CI, an error."""
    (tmp_path / "tf2onnx.py").write_text("raise ModuleNotFoundError(\"No module named 'tf2onnx'\", name='tf2onnx')\n")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]), "CI": ci}
    command = [sys.executable, "-m", "pytest", "-c", str(root / "pyproject.toml"), "--rootdir", str(root)]
    command += ["-q", "-p", "no:cacheprovider", "-rs", "--collect-only", __file__]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False, env=env, cwd=tmp_path)
    if ci:
        assert run.returncode == 2, run.stdout + run.stderr  # an error in collection
        assert "tf2onnx is not installed" in run.stdout and "CI is set, so this is a failure" in run.stdout
    else:
        assert run.returncode == 5, run.stdout + run.stderr  # nothing collected: skipped
        assert "SKIPPED" in run.stdout and "tf2onnx is not installed" in run.stdout


def test_a_missing_extra_says_what_to_install(small: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.import_module

    def without_tf2onnx(name: str, *args: Any) -> Any:
        if name == "tf2onnx":
            msg = "No module named 'tf2onnx'"
            raise ModuleNotFoundError(msg, name="tf2onnx")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_tf2onnx)
    with pytest.raises(ParameterError, match=r"pip install 'mlaas4hep\[onnx\]' \(tf2onnx is missing"):
        export(small.model_path, small.recipe_path, tmp_path / "bundle")
