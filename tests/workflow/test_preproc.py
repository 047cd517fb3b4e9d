"""The original MLaaS4HEP's preproc.json: translation, errors, and a run through the workflow command."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pytest
import uproot

from mlaas4hep import FileAccessError, ParameterError, Specs
from mlaas4hep.inputs.selection import decode_mask
from mlaas4hep.workflow.preproc import load_preproc, translate_preproc

ORIGINAL = {
    "new_branch": {
        "log_partonE": {
            "def": "log(partonE)",
            "type": "jagged",
            "cut_1": ["log_partonE<6.31", "any"],
            "cut_2": ["log_partonE>5.85", "all"],
            "remove": "False",
            "keys_to_remove": ["partonE"],
        },
        "nJets_square": {
            "def": "nJets**2",
            "type": "flat",
            "cut": "1<=nJets_square<=16",
            "remove": "False",
            "keys_to_remove": ["nJets"],
        },
    },
    "flat_cut": {"nLeptons": {"cut": "0<=nLeptons<=2", "remove": "False"}},
    "jagged_cut": {"partonPt": {"cut": ["partonPt>200", "all"], "remove": "False"}},
}
CUT = (
    "(any(log_partonE<6.31)) & (all(log_partonE>5.85)) & (1<=nJets_square<=16) & (0<=nLeptons<=2) & (all(partonPt>200))"
)


def test_translation_of_the_original_example() -> None:
    p = translate_preproc(ORIGINAL)
    assert p.cut == CUT
    assert dict(p.aliases) == {"log_partonE": "log(partonE)", "nJets_square": "nJets**2"}
    assert p.exclude == ("partonE", "nJets")
    p = translate_preproc({"flat_cut": {"nLeptons": {"cut_2": "nLeptons<3", "cut_1": "nLeptons>0", "remove": "True"}}})
    assert p.cut == "(nLeptons>0) & (nLeptons<3)" and p.exclude == ("nLeptons",) and not p.aliases


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"new_branches": {}}, "did you mean 'new_branch'"),
        ({"flat_cut": {"x": {"cut": "x>1", "remove": "maybe"}}}, r"\['remove'\] must be"),
        ({"jagged_cut": {"pt": {"cut": "pt>1"}}}, "jagged branch"),
        ({"jagged_cut": {"pt": {"cut": ["pt>1", "some"]}}}, '"any" or "all"'),
        ({"flat_cut": {"x": {"cut": ["x>1", "any"]}}}, "plain string"),
        ({"new_branch": {"y": {"type": "flat"}}}, 'needs a "def"'),
        ({"new_branch": {"y": {"def": "log(x", "type": "flat"}}}, "not a valid expression"),
        ({"flat_cut": {"x": {"cutt": "x>1"}}}, "unknown key 'cutt'"),
    ],
)
def test_preproc_errors_name_the_place(data: dict[str, Any], match: str) -> None:
    with pytest.raises(ParameterError, match=match):
        translate_preproc(data)


def test_load_preproc_errors(tmp_path: Path) -> None:
    with pytest.raises(FileAccessError, match="does not exist"):
        load_preproc(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ParameterError, match="not valid JSON"):
        load_preproc(bad)


def write_partons(path: Path, n: int, seed: int) -> Path:
    """A file with the branches of the original example: partonE and partonPt (jagged), nJets, nLeptons."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 4, n)
    total = int(counts.sum())
    data = {
        "partonE": ak.unflatten(rng.uniform(330, 620, total).astype(np.float32), counts),
        "partonPt": ak.unflatten(rng.uniform(170, 500, total).astype(np.float32), counts),
        "nJets": rng.integers(0, 7, n).astype(np.int32),
        "nLeptons": rng.integers(0, 4, n).astype(np.int32),
        "MET": rng.exponential(40 + 10 * seed, n).astype(np.float32),
    }
    with uproot.recreate(path) as f:
        f.mktree("Events", {k: (v.type if isinstance(v, ak.Array) else v.dtype) for k, v in data.items()})
        f["Events"].extend(data)
    return path


MODEL = """
import keras

def model(idim):
    "Small model for the preproc test"
    layers = [keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1, activation="sigmoid")]
    m = keras.Sequential([keras.Input((idim,)), *layers])
    m.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    return m
"""


@pytest.fixture
def _restore_logging() -> Iterator[None]:
    """The workflow command sets up the mlaas4hep logger; leave it as it was for the other tests."""
    logger = logging.getLogger("mlaas4hep")
    handlers, level = list(logger.handlers), logger.level
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)


@pytest.mark.usefixtures("_restore_logging")
def test_original_preproc_runs_through_the_workflow_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mlaas4hep.workflow.cli import workflow_main

    files = [write_partons(tmp_path / f"f{i}.root", 3000, seed=i) for i in (1, 2)]
    (tmp_path / "preproc.json").write_text(json.dumps(ORIGINAL))
    (tmp_path / "model.py").write_text(MODEL)
    params = {"epochs": 1, "chunk_size": 200, "batch_size": 20, "verbose": 0, "seed": 1, "exclude_branches": []}
    (tmp_path / "params.json").write_text(json.dumps(params))
    args = ["--files", ",".join(map(str, files)), "--labels", "1,0", "--model", str(tmp_path / "model.py")]
    args += ["--params", str(tmp_path / "params.json"), "--specs", str(tmp_path / "specs.json")]
    assert workflow_main([*args, "--preproc", str(tmp_path / "preproc.json")]) == 0
    assert "test set: " in capsys.readouterr().out
    specs = Specs.load(tmp_path / "specs.json")
    # derived branches are features, the keys_to_remove are not
    assert set(specs.names) == {"log_partonE", "nJets_square", "nLeptons", "partonPt", "MET", "npartonE", "npartonPt"}
    assert specs["log_partonE"].kind == "jagged" and specs["nJets_square"].kind == "flat"
    # the survivors are those the cut selects, computed with uproot
    for f, path in zip(specs.files, files, strict=True):
        a = uproot.open(path)["Events"].arrays(["partonE", "partonPt", "nJets", "nLeptons"])
        log_e = np.log(a["partonE"])
        keep = (
            ak.any(log_e < 6.31, axis=1)
            & ak.all(log_e > 5.85, axis=1)
            & (a["nJets"] ** 2 >= 1)
            & (a["nJets"] ** 2 <= 16)
            & (a["nLeptons"] <= 2)
            & ak.all(a["partonPt"] > 200, axis=1)
        )
        assert f.mask is not None and f.selected is not None  # a cut records both
        stop = f.entries if f.stop is None else f.stop  # with a split: over the training entries only
        np.testing.assert_array_equal(decode_mask(f.mask, stop), ak.to_numpy(keep)[:stop])
        assert 50 < f.selected < stop
    assert specs["nJets_square"].min >= 1 and specs["nJets_square"].max <= 16
