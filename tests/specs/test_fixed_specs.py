"""Fixed-size array branches (``double[3]``): their kind, their specs, and files that disagree on them."""

from __future__ import annotations

import json
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

from mlaas4hep import BranchError, BranchSpec, SpecBuilder, Specs
from mlaas4hep.inputs.formats.root import describe_branches, kind_of_form
from mlaas4hep.specs.kinds import fixed_shape, fixed_width, is_usable


def _write(path: Path, **data: np.ndarray | ak.Array) -> Path:
    """A tree ``Events`` of the branches ``data``; a 2-d numpy array is a fixed-size array branch."""
    types = {
        k: v.type.content if isinstance(v, ak.Array) else np.dtype((v.dtype, v.shape[1:])) for k, v in data.items()
    }
    with uproot.recreate(path) as f:
        f.mktree("Events", types).extend(data)
    return path


def test_fixed_size_arrays_of_numbers_are_a_kind_of_their_own(tmp_path):
    n = 4
    path = _write(
        tmp_path / "a.root",
        p3=np.zeros((n, 3)),
        m=np.zeros((n, 2, 3), np.int32),
        flags=np.zeros((n, 2), np.bool_),
        x=np.zeros(n),
        j=ak.Array([[1.0]] * n),
    )
    with uproot.open(path) as f:
        kinds = {b.name: (b.kind, b.dtype) for b in describe_branches(f["Events"])}
    assert kinds["p3"] == ("fixed[3]", "float64")
    assert kinds["m"] == ("fixed[2][3]", "int32")
    assert kinds["flags"] == ("fixed[2]", "bool")
    assert kinds["x"] == ("flat", "float64") and kinds["j"] == ("jagged", "float64")
    # a NumpyForm with an inner shape (as RNTuples and older uproots give) is one too
    assert kind_of_form(ak.forms.NumpyForm("float32", inner_shape=(4,))) == ("fixed[4]", "float32")
    # fixed-width strings, arrays of records and arrays of size 0 stay unusable
    chars = ak.forms.RegularForm(ak.forms.NumpyForm("uint8", parameters={"__array__": "char"}), 8)
    assert kind_of_form(chars) == ("string", "string")
    records = ak.forms.RegularForm(ak.forms.RecordForm([ak.forms.NumpyForm("float64")], ["a"]), 3)
    assert kind_of_form(records) == ("fixed-size array", "object")
    assert kind_of_form(ak.forms.RegularForm(ak.forms.NumpyForm("float64"), 0))[0] == "fixed-size array"
    assert fixed_shape("fixed[2][3]") == (2, 3) and fixed_width("fixed[2][3]") == 6
    assert fixed_shape("fixed[0]") is None and fixed_shape("fixed-size array") is None
    assert is_usable("fixed[3]") and not is_usable("fixed-size array") and not is_usable("string")


def test_specs_of_a_fixed_array_are_over_all_its_numbers(tmp_path):
    rng = np.random.default_rng(3)
    p3 = rng.normal([1.0, 10.0, 100.0], [1.0, 2.0, 3.0], (500, 3))
    p3[7, 1] = np.nan
    p3[9, 2] = np.inf
    m = rng.integers(-5, 50, (500, 2, 3)).astype(np.int32)
    path = _write(tmp_path / "a.root", p3=p3, m=m, x=rng.normal(size=500))
    specs = SpecBuilder([path], step_size=128).build()  # several steps, merged
    assert specs.names == ["m", "p3", "x"] and specs.flat == ["m", "p3", "x"] and specs.jagged == []
    spec = specs["p3"]
    assert spec.kind == "fixed[3]" and spec.width == 3 and spec.is_fixed and not spec.is_jagged
    assert spec.max_length == 0 and spec.length_hist == ()
    finite = p3[np.isfinite(p3)]
    assert spec.count == 1498 and spec.nonfinite == 2
    assert spec.min == finite.min() and spec.max == finite.max()
    np.testing.assert_allclose([spec.mean, spec.std], [finite.mean(), finite.std()], rtol=1e-12)
    ints = specs["m"]
    assert ints.kind == "fixed[2][3]" and ints.width == 6 and ints.count == 3000
    assert (ints.min, ints.max) == (int(m.min()), int(m.max())) and isinstance(ints.min, int)
    np.testing.assert_allclose(ints.mean_value, m.mean(), rtol=1e-12)
    assert specs.num_features == 6 + 3 + 1
    assert specs["x"].width == 1 and not specs["x"].is_fixed


def test_fixed_arrays_keep_their_kind_and_width_through_json(tmp_path):
    rng = np.random.default_rng(4)
    path = _write(tmp_path / "a.root", p3=rng.normal(size=(50, 3)), x=rng.normal(size=50))
    specs = SpecBuilder([path]).build(tmp_path / "specs.json")
    data = json.loads((tmp_path / "specs.json").read_text())
    assert data["branches"]["p3"]["kind"] == "fixed[3]" and data["branches"]["p3"]["width"] == 3
    assert "width" not in data["branches"]["x"] and "max_length" not in data["branches"]["p3"]
    loaded = Specs.load(tmp_path / "specs.json")
    assert loaded["p3"] == specs["p3"] and loaded["p3"].width == 3 and loaded.num_features == 4


def test_specs_written_before_fixed_arrays_still_load(tmp_path):
    old = {
        "format": "mlaas4hep-specs",
        "version": 1,
        "files": [],
        "branches": {
            "x": {"kind": "flat", "dtype": "float64", "count": 2, "min": 0.0, "max": 1.0, "mean": 0.5, "m2": 0.5},
            "j": {"kind": "jagged", "dtype": "float32", "count": 3, "min": 1.0, "max": 3.0, "length_hist": [0, 1, 1]},
        },
        "skipped": {"PSWeight": "fixed-size array"},
        "selection": {"branches": None, "exclude": []},
    }
    (tmp_path / "old.json").write_text(json.dumps(old))
    specs = Specs.load(tmp_path / "old.json")
    assert specs.flat == ["x"] and specs.jagged == ["j"] and specs["j"].max_length == 2
    assert specs.num_features == 3 and specs.skipped == {"PSWeight": "fixed-size array"}


def test_a_fixed_array_of_another_shape_or_jagged_in_another_file_names_both(tmp_path):
    n = 5
    a = _write(tmp_path / "a.root", p3=np.zeros((n, 3)), x=np.zeros(n))
    b = _write(tmp_path / "b.root", p3=np.zeros((n, 4)), x=np.zeros(n))
    c = _write(tmp_path / "c.root", p3=ak.Array([[1.0, 2.0, 3.0]] * n), x=np.zeros(n))
    for other, kind in ((b, "fixed\\[4\\]"), (c, "jagged")):
        for common in (False, True):  # both usable: no common_branches can pick one
            with pytest.raises(BranchError, match=rf"'p3' is fixed\[3\] \(float64\) in '.*a.root' but {kind}.*{other}"):
                SpecBuilder([a, other], common_branches=common).build()
    # specs of parts merged by hand refuse it too
    with pytest.raises(BranchError, match=r"'p3' is fixed\[3\] in some files and fixed\[4\] in others"):
        BranchSpec("p3", "fixed[3]", "float64").merge(BranchSpec("p3", "fixed[4]", "float64"))


def test_skipped_fixed_size_arrays_say_why():
    from mlaas4hep.specs.first_pass import describe_skipped

    assert describe_skipped({"w": "fixed-size array"}, why=True) == (
        "'w' (fixed-size array: fixed-size arrays of anything but numbers)"
    )
