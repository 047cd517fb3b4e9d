"""ZLIB baskets inflated with ISA-L: the same numbers as zlib, chosen by default unless the user chose."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os

import awkward as ak
import numpy as np
import pytest
import uproot
import uproot.compression
from conftest import SHARED_DATA, write_tree

from mlaas4hep import RootSequence, use_zlib, zlib_library
from mlaas4hep.errors import ParameterError
from mlaas4hep.inputs.executors import map_files
from mlaas4hep.inputs.formats import decompression

pytest.importorskip("isal")


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch):
    """A process in which neither mlaas4hep nor the user chose a ZLIB library yet (restored after)."""
    decompressor = uproot.compression._decompress_ZLIB
    before = dict(vars(decompressor))
    monkeypatch.setattr(decompression, "_decided", False)
    monkeypatch.setattr(decompression, "_ours", False)
    monkeypatch.setattr(type(decompressor), "library", "zlib")
    monkeypatch.delenv(decompression.ENVIRONMENT, raising=False)
    vars(decompressor).pop("library", None)
    assert zlib_library() == "zlib"
    yield
    vars(decompressor).clear()
    vars(decompressor).update(before)


def _arrays(path, library: str) -> ak.Array:
    use_zlib(library)
    with uproot.open(path) as f:
        return f["Events" if "Events" in f else "events"].arrays()


@pytest.mark.parametrize("level", [1, 9])
def test_isal_reads_the_same_numbers_as_zlib(fresh, tmp_path, level):
    path = tmp_path / "zlib.root"
    rng = np.random.default_rng(level)
    counts = rng.poisson(3, 5000)
    with uproot.recreate(path, compression=uproot.ZLIB(level)) as f:
        f.mktree("Events", {"x": np.float64, "n": np.int64, "v": "var * float32"})
        f["Events"].extend(
            {
                "x": rng.normal(size=5000),
                "n": rng.integers(-(2**60), 2**60, 5000),
                "v": ak.unflatten(rng.normal(size=int(counts.sum())).astype(np.float32), counts),
            }
        )
    with uproot.open(path) as f:
        assert f.file.compression == uproot.ZLIB(level)
        assert f["Events"]["x"].compressed_bytes < f["Events"]["x"].uncompressed_bytes
    with_zlib, with_isal = _arrays(path, "zlib"), _arrays(path, "isal")
    assert zlib_library() == "isal"
    assert ak.array_equal(with_zlib, with_isal)


def test_isal_is_what_inflates_the_baskets(fresh, tmp_path, monkeypatch):
    import isal.isal_zlib

    calls = []
    inflate = isal.isal_zlib.decompress
    monkeypatch.setattr(isal.isal_zlib, "decompress", lambda *a, **k: calls.append(1) or inflate(*a, **k))
    path = write_tree(tmp_path / "a.root", 2000, seed=2)
    _arrays(path, "zlib")
    assert not calls
    _arrays(path, "isal")
    assert calls


def test_isal_reads_the_zmumu_file_as_zlib_does(fresh):
    path = SHARED_DATA / "uproot-Zmumu.root"  # a real file, ZLIB level 4
    assert ak.array_equal(_arrays(path, "zlib"), _arrays(path, "isal"))


def test_opening_a_file_chooses_isal_once(fresh, tmp_path):
    path = write_tree(tmp_path / "a.root", 300, seed=1)
    seq = RootSequence([str(path)], labels=[1], batch_size=100)
    try:
        assert zlib_library() == "isal"
        x, _ = seq[0]
        assert x.shape[0] == 100
    finally:
        seq.close()
    use_zlib("zlib")  # a choice made after it stays
    assert decompression.default_zlib() == "zlib"


def test_the_environment_keeps_zlib(fresh, monkeypatch):
    monkeypatch.setenv(decompression.ENVIRONMENT, "zlib")
    assert decompression.default_zlib() == "zlib"


def test_a_library_chosen_in_uproot_is_left_alone(fresh):
    uproot.compression._decompress_ZLIB.library = "deflate"  # the fixture puts it back
    assert decompression.default_zlib() == "deflate"


def test_zlib_chosen_in_uproot_before_is_left_alone(fresh):
    uproot.compression._decompress_ZLIB.library = "zlib"  # the same value as uproot's default, but chosen
    assert decompression.default_zlib() == "zlib"


def test_a_library_chosen_on_uproots_class_after_the_default_is_used(fresh):
    assert decompression.default_zlib() == "isal"
    type(uproot.compression._decompress_ZLIB).library = "deflate"  # the fixture puts it back
    assert decompression.default_zlib() == "deflate"


def _library(_: object) -> str:
    return zlib_library()


def test_use_zlib_goes_with_the_tasks_to_processes_started_afresh_and_leaves_the_environment_alone(fresh):
    use_zlib("isal")  # a fresh process decompresses with zlib until told otherwise
    assert decompression.ENVIRONMENT not in os.environ
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
        assert map_files(_library, [1, 2], executor=pool) == ["isal", "isal"]


def test_the_environment_may_name_isal(fresh, monkeypatch):
    monkeypatch.setenv(decompression.ENVIRONMENT, " ISAL ")
    assert decompression.default_zlib() == "isal"


def test_an_unknown_library_in_the_environment_is_refused_at_every_open(fresh, monkeypatch, tmp_path):
    monkeypatch.setenv(decompression.ENVIRONMENT, "gzip")
    path = write_tree(tmp_path / "a.root", 300, seed=1)
    for _ in range(2):
        with pytest.raises(ParameterError, match=r"MLAAS4HEP_ZLIB must be one of .*, got 'gzip'"):
            RootSequence([str(path)], labels=[1], batch_size=100)


def test_without_isal_zlib_stays(fresh, monkeypatch):
    real = decompression.importlib.import_module

    def no_isal(name, *args):
        if name.startswith("isal"):
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(decompression.importlib, "import_module", no_isal)
    assert decompression.default_zlib() == "zlib"
    with pytest.raises(ParameterError, match="pip install isal"):
        use_zlib("isal")


def test_an_uproot_without_the_setting_reads_with_zlib(fresh, monkeypatch):
    monkeypatch.delattr(uproot.compression, "_decompress_ZLIB")
    assert decompression.default_zlib() == "zlib" and zlib_library() == "zlib"
    with pytest.raises(ParameterError, match="decompresses ZLIB only with zlib"):
        use_zlib("isal")
    use_zlib("zlib")  # nothing to set: fine


def test_an_unknown_library_is_refused(fresh):
    with pytest.raises(ParameterError, match=r"library must be one of \('zlib', 'isal', 'deflate'\), got 'gzip'"):
        use_zlib("gzip")
    assert zlib_library() == "zlib"
