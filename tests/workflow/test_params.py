"""params.json: defaults, the seed's example, and errors that name the key and the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mlaas4hep.errors import FileAccessError, ParameterError
from mlaas4hep.workflow.params import DEFAULT_PARAMS, WorkflowParams, load_params

# The seed's params.json, with fewer events and epochs (as tests/workflow/test_cli.py runs it).
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


def test_params_defaults_and_seed_example(tmp_path: Path) -> None:
    path = tmp_path / "params.json"
    path.write_text(json.dumps({**SEED_PARAMS, "identifier": "run,event"}))
    params = load_params(path)
    assert params.nevts == 3000 and params.hist == "pdfs" and params.branch == "Events"
    assert params.identifier == ("run", "event")
    assert params.exclude == ["run", "event", "luminosityBlock"]
    assert params.validation_split == 0.2 and params.test_split == 0.2
    assert WorkflowParams.from_dict({"chunk_size": -1}).chunk_size == -1
    assert params.layout == "flat" and WorkflowParams.from_dict({"layout": "collections"}).layout == "collections"
    assert set(DEFAULT_PARAMS) >= set(SEED_PARAMS)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"nevt": 10}, "unknown key 'nevt'; did you mean 'nevts'"),
        ({"exclude_branch": []}, "did you mean 'exclude_branches'"),
        ({"bogus_thing": 1}, "unknown key 'bogus_thing'; valid keys"),
        ({"epochs": 0}, "'epochs' must be an integer >= 1"),
        ({"shuffle": "yes"}, "'shuffle' must be true or false"),
        ({"chunk_size": -2}, "'chunk_size'"),
        ({"validation_split": 0.6, "test_split": 0.5}, "must be below 1"),
        ({"exclude_branches": [1, 2]}, "'exclude_branches'"),
        ({"seed": True}, "'seed' must be an integer or null"),
        ({"normalization": "zscore"}, '\'normalization\' must be "minmax", "standard" or null'),
        ({"hist": 1}, "'hist' must be a string"),
        ({"test_split": 1}, r"'test_split' must be a number in \[0, 1\)"),
        ({"verbose": -1}, "'verbose' must be an integer >= 0, got -1"),
        ({"layout": "sets"}, "'layout' must be one of \\('flat', 'collections'\\), got 'sets'"),
        ({"folds": 1}, "'folds' must be an integer >= 2"),
        ({"folds": 2.5}, "'folds' must be an integer >= 2"),
        ({"folds": True}, "'folds' must be an integer >= 2"),
        ({"folds": 5, "test_split": 0.2}, "'test_split' \\(0.2\\) does not go with 'folds' \\(5\\)"),
        ({"fold_by": "event"}, "'fold_by' \\('event'\\) needs 'folds'"),
        ({"folds": 3, "fold_by": ""}, "'fold_by' must be a branch name or an expression"),
    ],
)
def test_params_errors_name_the_key(tmp_path: Path, data: dict[str, Any], match: str) -> None:
    path = tmp_path / "params.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ParameterError, match=match) as info:
        load_params(path)
    assert str(path) in str(info.value)


def test_params_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FileAccessError, match=r"nope\.json"):
        load_params(tmp_path / "nope.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ParameterError, match="not a JSON object"):
        load_params(tmp_path / "list.json")


def test_folds_params() -> None:
    params = WorkflowParams.from_dict({"folds": 5, "validation_split": 0.1, "test_split": 0})
    assert (params.folds, params.fold_by, params.test_split, params.validation_split) == (5, "event", 0, 0.1)
    assert WorkflowParams.from_dict({"folds": 2, "fold_by": "evrun"}).fold_by == "evrun"
    assert WorkflowParams.from_dict(params.to_dict()) == params  # a saved run's params repeat it
    assert (WorkflowParams().folds, WorkflowParams().fold_by) == (None, None)
