"""The command line: ``mlaas4hep specs|workflow|demo`` and the original ``workflow`` command."""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import uproot

from mlaas4hep.specs.values import Specs
from mlaas4hep.workflow.cli import main, workflow_main
from mlaas4hep.workflow.demo import make_demo_files

# The original's keras_model.py, in Keras 3 spelling (learning_rate instead of lr) and nothing else.
SEED_KERAS_MODEL = '''\
#!/usr/bin/env python
#-*- coding: utf-8 -*-
"""
File       : keras_model.py
Description: Keras model for the MLaaS4HEP workflow
"""
import keras


def model(idim):
    "Simple Keras model for testing purposes"
    ml_model = keras.models.Sequential([
        keras.layers.Dense(128, activation='relu', input_shape=(idim,)),
        keras.layers.Dropout(0.5),
        keras.layers.Dense(64, activation='relu'),
        keras.layers.Dropout(0.5),
        keras.layers.Dense(1, activation='sigmoid')
    ])
    ml_model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3),
                     loss=keras.losses.BinaryCrossentropy(),
                     metrics=[keras.metrics.BinaryAccuracy(name='accuracy'), keras.metrics.AUC(name='auc')])
    return ml_model
'''

# The seed's params.json, with fewer events and epochs so that the test is quick.
SEED_PARAMS = {
    "nevts": 3000,
    "shuffle": True,
    "chunk_size": 1000,
    "epochs": 1,
    "batch_size": 100,
    "identifier": "",
    "branch": "Events",
    "selected_branches": "",
    "exclude_branches": ["run", "event", "luminosityBlock"],
    "hist": "pdfs",
    "redirector": "",
    "verbose": 1,
}


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The CLI sets up the mlaas4hep logger; leave it as it was for the other tests."""
    logger = logging.getLogger("mlaas4hep")
    handlers, level = list(logger.handlers), logger.level
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return make_demo_files(tmp_path_factory.mktemp("demo"), n_events=2000)


def _env() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}


def _script(name: str) -> list[str]:
    """The console script ``name`` of this venv, or the same entry point through the interpreter."""
    path = Path(sys.executable).parent / name
    if path.exists():
        return [str(path)]
    function = {"workflow": "workflow_main", "mlaas4hep": "main"}[name]
    return [sys.executable, "-c", f"import sys; from mlaas4hep.workflow.cli import {function}; sys.exit({function}())"]


# -- specs ----------------------------------------------------------------------------------------


def test_specs_table_and_json(demo_files: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "specs.json"
    assert main(["-v", "0", "specs", *map(str, demo_files), "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "events, (15-flat, 48-jagged) branches" in text
    header = text.splitlines()[1]
    for column in ("branch", "kind", "dtype", "min", "max", "mean", "std", "max_len", "len_99.9%"):
        assert column in header
    jet = next(line for line in text.splitlines() if line.startswith("Jet_pt "))
    assert "jagged" in jet and "float32" in jet
    assert "run " not in text  # excluded by default, as in the workflow
    specs = Specs.load(out)
    assert "Jet_pt" in specs.jagged and specs.n_events == 4060


def test_specs_does_not_import_tensorflow(demo_files: list[Path]) -> None:
    code = (
        "import sys; from mlaas4hep.workflow.cli import main; "
        f"main(['-v', '0', 'specs', {str(demo_files[0])!r}, '--exclude', '']); "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TensorFlow was imported'"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120)
    assert run.returncode == 0, run.stderr
    assert "luminosityBlock" in run.stdout  # --exclude "" shows every branch


def test_cli_errors_exit_2_with_message(
    demo_files: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["specs", str(tmp_path / "missing.root")])
    assert info.value.code == 2
    assert "missing.root" in capsys.readouterr().err
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"epoch": 1}))
    args = ["--files", ",".join(map(str, demo_files)), "--labels", "1,0", "--model", "m.py", "--params", str(params)]
    with pytest.raises(SystemExit) as info:
        workflow_main(args)
    assert info.value.code == 2
    assert "did you mean 'epochs'" in capsys.readouterr().err
    params.write_text("{}")
    with pytest.raises(SystemExit):
        workflow_main([*args, "--preproc", "preproc.py"])
    err = capsys.readouterr().err
    assert "--preproc" in err and "preproc.py" in err and "does not exist" in err
    with pytest.raises(SystemExit):
        workflow_main([*args, "--dtype", "csv"])
    assert "only ROOT files" in capsys.readouterr().err


# -- workflow -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_seed_recipe_runs_as_the_original(demo_files: list[Path], tmp_path: Path) -> None:
    """The recipe: workflow --files=files.txt --labels=labels.txt --model=keras_model.py --params=params.json."""
    (tmp_path / "files.txt").write_text("\n".join(map(str, demo_files)) + "\n")
    (tmp_path / "labels.txt").write_text("1\n0\n")
    (tmp_path / "keras_model.py").write_text(SEED_KERAS_MODEL)
    (tmp_path / "params.json").write_text(json.dumps(SEED_PARAMS, indent=4))
    command = [
        *_script("workflow"),
        "--files=files.txt",
        "--labels=labels.txt",
        "--model=keras_model.py",
        "--params=params.json",
        "--specs=specs.json",
        "--fout=model.keras",
    ]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=_env(), timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert "load keras_model.py" in out and "Simple Keras model for testing purposes" in out
    assert "first pass: 1802 events, (15-flat, 48-jagged) branches" in out  # the training events of nevts=3000
    assert "MB/sec" in out and "kHz" in out
    assert "Epoch 1/1" in out and "val_auc" in out
    for metric in ("loss :", "accuracy :", "auc :"):
        assert metric in out
    assert "I0000" not in run.stderr and "oneDNN" not in run.stderr  # no TensorFlow start-up noise
    assert (tmp_path / "model.keras").stat().st_size > 0
    assert json.loads((tmp_path / "model.preprocessing.json").read_text())["format"] == "mlaas4hep-preprocessing"
    assert Specs.load(tmp_path / "specs.json").n_events == 1802  # over the training events only
    for name in ("features.pdf", "history.pdf", "roc.pdf"):
        data = (tmp_path / "pdfs" / name).read_bytes()
        assert data.startswith(b"%PDF-") and len(data) > 1000


@pytest.mark.slow
def test_demo_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["demo", "--directory", str(tmp_path / "demo"), "--events", "2000", "--epochs", "1"]
    argv += ["--chunk-size", "1000", "--hist", str(tmp_path / "plots")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "test set (" in out and "roc_auc" in out  # told once, by the workflow's log
    assert (tmp_path / "demo" / "specs.json").exists()
    assert (tmp_path / "plots" / "roc.pdf").read_bytes().startswith(b"%PDF-")
    assert f"plots: {tmp_path / 'plots' / 'features.pdf'}, " in out


@pytest.mark.slow
def test_the_demo_explains_itself_and_its_predict_command_runs(tmp_path: Path) -> None:
    """At most 80 lines: synthetic files, which is the signal, the split, one line per epoch, the test metrics once."""
    directory = tmp_path / "demo data"  # a space: the printed command quotes it
    argv = ["demo", "--directory", str(directory), "--events", "2000", "--epochs", "3", "--chunk-size", "500"]
    run = subprocess.run(
        [*_script("mlaas4hep"), *argv], capture_output=True, text=True, env=_env(), timeout=300, cwd=tmp_path
    )
    assert run.returncode == 0, run.stdout + run.stderr
    lines = (run.stdout + run.stderr).splitlines()
    assert len(lines) <= 80, "\n".join(lines)
    text = "\n".join(lines)
    assert "synthetic" in text and "reduced-NanoAOD schema" in text and "not CMS data" in text
    signal = next(line for line in lines if "GluGluToHToTauTau.root" in line)
    assert signal.split()[:3] == ["signal", "(label", "1)"] and "2000 events" in signal
    assert "background (label 0)" in text and "VBF_HToTauTau.root" in text
    assert "the next 20% validate" in text and "the last 20% are the test set" in text and "seed 1" in text
    epochs = [line for line in lines if line.startswith("Epoch ")]
    assert [e.split(" - ")[0] for e in epochs] == ["Epoch 1/3", "Epoch 2/3", "Epoch 3/3"]
    assert all("loss:" in e and "auc:" in e and "events/s, waited" in e for e in epochs)
    assert sum(line.startswith("test set") for line in lines) == 1
    assert sum("roc_auc" in line for line in lines) == 1 and sum(line.startswith("loss :") for line in lines) == 1
    assert "read chunk" not in text and "wrote specs" not in text and "loader:" not in text
    for name in ("model.keras", "model.preprocessing.json", "model.params.json"):
        assert (directory / name).stat().st_size > 0
    # it ends with the command that scores the files with the saved model: run it as printed
    command = shlex.split(lines[-1])
    assert command[:2] == ["mlaas4hep", "predict"]
    scored = subprocess.run(
        [*_script("mlaas4hep"), *command[1:]], capture_output=True, text=True, env=_env(), timeout=300, cwd=tmp_path
    )
    assert scored.returncode == 0, scored.stdout + scored.stderr
    for stem, n in (("GluGluToHToTauTau", 2000), ("VBF_HToTauTau", 2060)):
        with uproot.open(directory / "scores" / f"{stem}_score.root") as f:
            scores = f["Events"]["score"].array(library="np")
        assert len(scores) == n and np.all((scores >= 0) & (scores <= 1))
