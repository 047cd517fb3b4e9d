"""The workflow's inputs: list files, labels, and the model file."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from mlaas4hep.errors import FileAccessError, ParameterError
from mlaas4hep.workflow.lists import load_model_function, parse_labels, read_list


def test_read_list_file_and_commas(tmp_path: Path) -> None:
    listing = tmp_path / "files.txt"
    listing.write_text("# signal first\na.root\n\n  b.root  # background\n")
    assert read_list(str(listing)) == ["a.root", "b.root"]
    assert read_list("a.root, b.root,") == ["a.root", "b.root"]
    assert read_list(["x.root"]) == ["x.root"]
    with pytest.raises(ParameterError, match=r"missing\.txt"):
        read_list("missing.txt")
    with pytest.raises(ParameterError, match="no entry"):
        read_list(" , ")
    (tmp_path / "binary.dat").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ParameterError, match="not a text file"):
        read_list(str(tmp_path / "binary.dat"))


def test_parse_labels(tmp_path: Path) -> None:
    listing = tmp_path / "labels.txt"
    listing.write_text("1\n0\n")
    assert parse_labels(str(listing)) == [1.0, 0.0]
    assert parse_labels("1,0") == [1.0, 0.0]
    assert parse_labels("is_signal") == "is_signal"
    with pytest.raises(ParameterError, match="not a number"):
        parse_labels("1,signal")


def test_load_model_function(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "keras_model.py"
    path.write_text('def model(idim):\n    "A model of idim inputs"\n    return ("model", idim)\n')
    with caplog.at_level(logging.INFO, logger="mlaas4hep"):
        function = load_model_function(path)
    assert function(3) == ("model", 3)
    assert "load " in caplog.text and "A model of idim inputs" in caplog.text
    with pytest.raises(FileAccessError, match=r"nope\.py"):
        load_model_function(tmp_path / "nope.py")
    (tmp_path / "no_model.py").write_text("model = 1\n")
    with pytest.raises(ParameterError, match=r"no_model\.py.*defines no function model\(idim\)"):
        load_model_function(tmp_path / "no_model.py")


@pytest.mark.parametrize("name", ["events.parquet", "events.csv", "events.jsonl", "events.avro", "events.root"])
def test_a_data_file_is_one_entry_never_a_list(tmp_path: Path, name: str) -> None:
    """mlaas4hep predict events.csv scores the file; it does not read it as a list of files."""
    path = tmp_path / name
    path.write_text("x,y\n1,2\n")
    assert read_list(str(path), "FILE") == [str(path)]
