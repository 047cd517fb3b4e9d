"""The options, declared once in Options: both faces take them, checked before any file is opened, and document them."""

from __future__ import annotations

import dataclasses
import inspect
import math
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlaas4hep import ParameterError
from mlaas4hep.options import Options, OptionView, option_docs

KERAS_ONLY = ("workers", "use_multiprocessing", "max_queue_size", "shard_index", "num_shards")

# (option, a bad value): each given alone, with files that do not exist
BAD: list[tuple[str, Any]] = [
    ("tree", ""),
    ("tree", 3),
    ("branches", [1, "MET_pt"]),
    ("branches", 5),
    ("exclude", {"run": 1}),
    ("common_branches", "yes"),
    ("cut", ""),
    ("cut", 3),
    ("cut", "(nMuon >= 1"),
    ("aliases", ["log_pt"]),
    ("aliases", {"log_pt": 1}),
    ("aliases", {"": "log(Jet_pt)"}),
    ("aliases", {"a": "2 * b", "b": "a + 1"}),
    ("targets", []),
    ("targets", ["MET_pt", ""]),
    ("weights", ""),
    ("weights", ["genWeight"]),
    ("allow_leaks", [3]),
    ("allow_leaks", 5),
    ("file_weights", [1.0, -1.0]),
    ("file_weights", [math.nan]),
    ("file_weights", "1, 2"),
    ("cross_sections", [1.0, -1.0]),
    ("cross_sections", [1.0, 2.0]),  # without luminosity
    ("luminosity", 10.0),  # without cross_sections
    ("balance_classes", 1),
    ("one_hot", "no"),
    ("num_classes", 1),
    ("num_classes", 2.5),
    ("mask_output", None),
    ("batch_size", 0),
    ("batch_size", 2.5),
    ("chunk_size", 0),
    ("nevts", 0),
    ("shuffle", "yes"),
    ("seed", -1),
    ("seed", 1.5),
    ("specs", 3),
    ("validation_split", 1.0),
    ("test_split", -0.1),
    ("subset", "testing"),
    ("folds", 1),
    ("folds", 2.5),
    ("fold", 0),  # without folds
    ("fold_by", "event"),  # without folds
    ("normalization", "minmx"),
    ("pad_value", math.inf),
    ("pad_value", "0"),
    ("max_lengths", -1),
    ("max_lengths", 2.5),
    ("max_lengths", {"Jet_pt": -1}),
    ("max_lengths", {3: 10}),
    ("length_quantile", 0),
    ("length_quantile", 1.5),
    ("layout", "graphs"),
    ("redirector", None),
    ("retries", -1),
    ("retry_backoff", -1),
    ("timeout", 0.5),
    ("drop_nonfinite", "no"),
    ("workers", 0),
    ("use_multiprocessing", 1),
    ("max_queue_size", 0),
    ("cache_chunks", 0),
    ("prefetch", -1),
    ("shard_index", 2),
    ("num_shards", 0),
    ("files_per_chunk", 0),
    ("max_open_files", 0),
]


def _face(name: str) -> Any:
    if name == "RootDataset":
        pytest.importorskip("torch")
        from mlaas4hep.torch import RootDataset

        return RootDataset
    pytest.importorskip("keras")
    from mlaas4hep import RootSequence

    return RootSequence


@pytest.fixture(params=["RootSequence", "RootDataset"])
def face(request: pytest.FixtureRequest) -> Any:
    return _face(request.param)


def test_the_table_tries_every_option() -> None:
    assert {name for name, _ in BAD} == set(Options.names()) - {"collections"}


@pytest.mark.parametrize(("name", "value"), BAD, ids=[f"{n}={v!r}" for n, v in BAD])
def test_a_bad_option_is_refused_before_any_file_is_opened(face: Any, tmp_path: Path, name: str, value: Any) -> None:
    """Files that do not exist: a FileAccessError, had the option been checked only once they were opened."""
    files = [str(tmp_path / "missing_a.root"), str(tmp_path / "missing_b.root")]
    with pytest.raises(ParameterError, match=re.escape(name)):
        face(files, [1, 0], **{name: value})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_lengths": 10, "length_quantile": 0.99}, "max_lengths or length_quantile"),
        ({"layout": "collections", "mask_output": True}, "mask_output"),
        ({"validation_split": 0.2}, "subset"),
        ({"batch_size": 200, "chunk_size": 100}, "batch_size=200"),
    ],
)
def test_options_that_do_not_go_together_are_refused_before_any_file_is_opened(
    face: Any, tmp_path: Path, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ParameterError, match=match):
        face([str(tmp_path / "missing.root")], [1], **kwargs)


def test_an_unknown_keyword_is_refused_with_the_closest_option(face: Any, tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match=r"'batchsize' is not an option of Root\w+; did you mean 'batch_size'"):
        face([str(tmp_path / "missing.root")], [1], batchsize=10)
    with pytest.raises(ParameterError, match=r"'colour' is not an option .*the options are \["):
        face([str(tmp_path / "missing.root")], [1], colour="red")


def test_an_option_of_one_face_only_is_refused_by_the_other(tmp_path: Path) -> None:
    dataset = _face("RootDataset")
    for name in KERAS_ONLY:
        with pytest.raises(ParameterError, match=f"'{name}' is an option of RootSequence only, not of RootDataset"):
            dataset([str(tmp_path / "missing.root")], [1], **{name: 1})
    with pytest.raises(ParameterError, match="'collections' is an option that no face takes"):
        dataset([str(tmp_path / "missing.root")], [1], collections={"Jet": ["Jet_pt"]})


def test_the_faces_signatures_are_the_options_fields(face: Any) -> None:
    """Every option a face takes is in its signature, keyword-only, with the field's default and type."""
    own = {"RootSequence": ["files", "labels"], "RootDataset": ["files", "labels", "rank", "world_size"]}
    expected = [
        n for n in Options.names() if n != "collections" and (face.__name__ == "RootSequence" or n not in KERAS_ONLY)
    ]
    assert list(Options.names(face.__name__)) == expected
    parameters = inspect.signature(face).parameters
    assert list(parameters) == [*own[face.__name__], *expected]
    fields = {f.name: f for f in dataclasses.fields(Options)}
    for name in expected:
        parameter = parameters[name]
        assert parameter.kind is inspect.Parameter.KEYWORD_ONLY
        assert parameter.default == fields[name].default and parameter.annotation == fields[name].type


def test_every_option_is_documented_once_in_options_and_in_each_face_s_help(face: Any) -> None:
    assert list(option_docs()) == list(Options.names())  # one entry per field, in order
    assert all(kind and text for kind, text in option_docs().values())
    doc = inspect.getdoc(face) or ""
    for name in Options.names():
        count = len(re.findall(rf"^{name} : ", doc, flags=re.MULTILINE))
        assert count == (name in Options.names(face.__name__)), name
    source = inspect.getsource(face)  # the face's own docstring points to Options instead
    assert "**options" in source and "batch_size : int" not in source


def test_option_views_read_the_options_with_their_docs(face: Any) -> None:
    view = face.__dict__["batch_size"]
    assert isinstance(view, OptionView) and view.__doc__ == "int: " + " ".join(option_docs()["batch_size"][1])
    obj = object.__new__(face)
    obj.options = Options(batch_size=64, seed=3)
    assert (obj.batch_size, obj.seed, obj.shuffle, obj.subset) == (64, 3, True, None)
    with pytest.raises(AttributeError, match="batch_size is an option"):
        obj.batch_size = 10
    with pytest.raises(TypeError, match="no option is named 'batchsize'"):
        OptionView().__set_name__(face, "batchsize")  # as a class body "batchsize = OptionView()" calls it


def test_options_are_normalized_and_pickle() -> None:
    options = Options(
        targets=["MET_pt"],
        file_weights=[1, np.float32(0.5)],
        max_lengths={"Jet": np.int64(3)},
        pad_value=np.float32(-1),
        num_classes=np.int64(3),
        seed=1,
    )
    assert options.targets == ("MET_pt",) and Options(targets="MET_pt").targets == "MET_pt"  # one name: y is 1-D
    assert options.file_weights == (1.0, 0.5) and options.max_lengths == {"Jet": 3}
    assert options.pad_value == -1.0 and math.isnan(Options(pad_value=math.nan).pad_value)
    assert type(options.num_classes) is int
    assert pickle.loads(pickle.dumps(options)) == options
    with pytest.raises(TypeError):
        Options(100)  # type: ignore[misc]  # keyword only
    with pytest.raises(ParameterError, match="collections needs layout='collections'"):
        Options(collections={"Jet": ["Jet_pt"]})
