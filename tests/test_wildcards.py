"""Wildcards in file lists: every face that takes files expands patterns, and pairs labels and weights per pattern.

A pattern (``"data/sig_*.root:events"``) names the files that match, sorted;
a label or a file weight given for it goes to each of them. Each test writes
files whose event ids (``uid = file_id * ID + entry``) say which file an event
came from, and checks every event's label and weight by its id.
"""

from __future__ import annotations

import importlib.util
import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import uproot
from conftest import SHARED_DATA, write_tree
from servers import XRootDServer, free_port, start_xrootd, unavailable

from mlaas4hep import FileAccessError, ParameterError, SpecBuilder  # before keras: XRootD can then load here
from mlaas4hep.inputs import remote as _remote
from mlaas4hep.inputs.sources import parse_sources

keras = pytest.importorskip("keras")

from mlaas4hep import RootSequence, write_scores  # noqa: E402
from mlaas4hep.workflow.cli import main  # noqa: E402

ID = 1_000_000
#: file name -> (file id, entries); sorted by name, the signal files are sig_10 then sig_2
FILES = {"sig_2": (1, 120), "sig_10": (2, 80), "bkg_1": (3, 150), "bkg_3": (4, 90)}


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("samples")
    for name, (file_id, n) in FILES.items():
        write_tree(directory / f"{name}.root", n, seed=file_id, file_id=file_id)
    return directory


def served(files: object, **kw: object) -> tuple[RootSequence, np.ndarray, np.ndarray, np.ndarray | None]:
    """A sequence of ``files`` in the files' order, and its one batch: the uids, labels and weights."""
    args: dict[str, object] = dict(branches=["uid"], normalization=None, shuffle=False, batch_size=10_000)
    seq = RootSequence(files, **{**args, "chunk_size": -1, **kw})
    batch = seq[0]
    seq.close()
    uids = batch[0][:, seq.feature_names.index("uid")].astype(np.int64)
    return seq, uids, np.asarray(batch[1]), None if len(batch) < 3 else np.asarray(batch[2])


def test_labels_and_file_weights_go_to_every_file_of_their_pattern(samples: Path) -> None:
    seq, uids, y, w = served(
        [f"{samples}/sig_*.root", f"{samples}/bkg_*.root:Events"], labels=[1, 0], file_weights=[2.0, 0.5]
    )
    assert [Path(s.path).stem for s in seq.prepared.sources] == ["sig_10", "sig_2", "bkg_1", "bkg_3"]
    assert len(uids) == sum(n for _, n in FILES.values())
    file_id = uids // ID
    np.testing.assert_array_equal(y, np.where(file_id <= 2, 1.0, 0.0))  # sig_* are files 1 and 2
    assert w is not None
    np.testing.assert_array_equal(w, np.where(file_id <= 2, 2.0, 0.5))
    assert seq.prepared.outputs.file_weights is not None
    assert seq.prepared.outputs.file_weights.tolist() == [2.0, 2.0, 0.5, 0.5]


def test_the_mappings_of_labels_and_of_trees_take_patterns(samples: Path) -> None:
    _, uids, y, _ = served({f"{samples}/bkg_*.root": 0, f"{samples}/sig_1*.root": 1})
    np.testing.assert_array_equal(y, np.where(uids // ID == 2, 1.0, 0.0))  # sig_10 only
    assert len(uids) == 150 + 90 + 80
    seq, uids, y, _ = served({f"{samples}/sig_*.root": "Events", f"{samples}/bkg_3.root": None}, labels=[1, 0])
    np.testing.assert_array_equal(y, np.where(uids // ID <= 2, 1.0, 0.0))
    assert len(seq.prepared.sources) == 3
    with pytest.raises(ParameterError, match="mapping whose values are trees and labels"):
        RootSequence({f"{samples}/sig_*.root": "Events", f"{samples}/bkg_3.root": 0})


def test_counts_per_pattern_are_checked_before_any_file_is_read(samples: Path) -> None:
    patterns = [f"{samples}/sig_*.root", f"{samples}/bkg_*.root"]
    with pytest.raises(ParameterError, match="got 4 labels for 2 entries of files, which name 4 files"):
        RootSequence(patterns, labels=[1, 1, 0, 0])
    with pytest.raises(ParameterError, match="got 4 file_weights for 2 entries of files"):
        RootSequence(patterns, labels=[1, 0], file_weights=[1, 1, 1, 1])
    with pytest.raises(ParameterError, match=re.escape(f"{patterns[0]!r} and by files[1] '{samples}/*_10.root'")):
        RootSequence([patterns[0], f"{samples}/*_10.root"], labels=[1, 0])
    with pytest.raises(FileAccessError, match=re.escape(f"{samples}/nothing_*.root")):
        RootSequence([patterns[0], f"{samples}/nothing_*.root:Events"], labels=[1, 0])


def test_the_issue_hzz_by_pattern(hzz: Path) -> None:
    pattern = f"{SHARED_DATA.resolve()}/uproot-H*.root:events"
    seq = RootSequence(pattern, labels=[1])  # as the issue wrote it
    with uproot.open(hzz) as f:
        entries = f["events"].num_entries
    assert [(Path(s.path).name, s.tree) for s in seq.prepared.sources] == [("uproot-HZZ.root", "events")]
    assert seq.n_events == entries and len(seq) == -(-entries // seq.batch_size)
    _, y = seq[0]
    assert set(np.asarray(y).tolist()) == {1.0}
    seq.close()
    assert len(uproot.concatenate(pattern, ["NMuon"])) == entries  # what uproot reads from the same pattern


def test_spec_builder_the_specs_command_and_write_scores_take_patterns(
    samples: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    specs = SpecBuilder(f"{samples}/sig_*.root", branches=["uid", "MET_pt"]).build()
    assert [Path(f.path).stem for f in specs.files] == ["sig_10", "sig_2"]
    assert specs["uid"].max == 2 * ID + 79 and specs["uid"].min == 1 * ID
    assert main(["specs", f"{samples}/bkg_*.root", "--branches", "uid"]) == 0
    assert capsys.readouterr().out.startswith("2 files: 240 events")
    seq = RootSequence(f"{samples}/sig_*.root", labels=[1], branches=["uid", "MET_pt"], batch_size=50)
    model = keras.Sequential([keras.Input((seq.num_features,)), keras.layers.Dense(1, activation="sigmoid")])
    model.save(tmp_path / "m.keras")
    recipe = seq.save_preprocessing(tmp_path / "m.preprocessing.json")
    seq.close()
    written = write_scores(tmp_path / "m.keras", f"{samples}/bkg_*.root", preprocessing=recipe, output_dir=tmp_path)
    assert [p.name for p in written] == ["bkg_1_score.root", "bkg_3_score.root"]
    for path, n in zip(written, (150, 90), strict=True):
        with uproot.open(path) as f:
            assert f["Events"].num_entries == n


# -- root:// -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def xrootd(samples: Path) -> Iterator[XRootDServer]:
    if importlib.util.find_spec("XRootD") is None:
        unavailable("the XRootD client is not installed: pip install 'mlaas4hep[xrootd]'")
    (samples / "sig_folder.root").mkdir(exist_ok=True)  # a folder is no file
    server = start_xrootd(samples)
    yield server
    server.stop()


def test_a_root_url_pattern_lists_its_folder(xrootd: XRootDServer, xrootd_mode: str) -> None:
    sources = parse_sources(xrootd.url("sig_*.root") + ":Events")
    assert [s.path for s in sources] == [xrootd.url("sig_10.root"), xrootd.url("sig_2.root")]
    _, uids, y, _ = served([xrootd.url("sig_*.root"), xrootd.url("bkg_[3].root")], labels=[1, 0])
    np.testing.assert_array_equal(y, np.where(uids // ID <= 2, 1.0, 0.0))
    assert len(uids) == 80 + 120 + 90
    with pytest.raises(FileAccessError, match=re.escape(xrootd.url("none_*.root"))):
        parse_sources(xrootd.url("none_*.root"))
    with pytest.raises(ParameterError, match="only the file name may be a pattern"):
        parse_sources(xrootd.url("*/sig_2.root"))
    (query,) = parse_sources(xrootd.url("sig_1*.root") + "?xrd.wantprot=unix")
    assert query.path == xrootd.url("sig_10.root") + "?xrd.wantprot=unix"


def test_a_root_url_pattern_waits_no_longer_than_the_timeout(xrootd_mode: str) -> None:
    if importlib.util.find_spec("XRootD") is None:
        unavailable("the XRootD client is not installed: pip install 'mlaas4hep[xrootd]'")
    url = f"root://localhost:{free_port()}//nowhere/sig_*.root"  # nobody listens there
    start = time.monotonic()
    with pytest.raises(FileAccessError, match=re.escape(f"cannot expand the pattern {url!r}")):
        parse_sources(url, timeout=2)
    assert time.monotonic() - start < 20


def test_without_the_xrootd_client_a_root_url_pattern_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_remote, "_installed", lambda module: False)
    with pytest.raises(FileAccessError, match=r"needs the XRootD client: pip install 'mlaas4hep\[xrootd\]'"):
        parse_sources("root://host//store/sig_*.root")
    (plain,) = parse_sources("root://host//store/sig_1.root")  # no pattern: nothing to list
    assert plain.path == "root://host//store/sig_1.root"


def test_a_pattern_in_files_txt_takes_its_line_of_labels_txt(samples: Path, tmp_path: Path) -> None:
    """The workflow's files.txt may hold patterns: each line is one entry, labelled by its line of labels.txt."""
    from mlaas4hep.workflow.lists import parse_labels, read_list
    from mlaas4hep.workflow.models import seed_model
    from mlaas4hep.workflow.run import run_workflow

    (tmp_path / "files.txt").write_text(f"{samples}/sig_*.root\n{samples}/bkg_*.root  # two backgrounds\n")
    (tmp_path / "labels.txt").write_text("1\n0\n")
    files, labels = read_list(str(tmp_path / "files.txt")), parse_labels(str(tmp_path / "labels.txt"))
    assert files == [f"{samples}/sig_*.root", f"{samples}/bkg_*.root"] and labels == [1.0, 0.0]
    params = {"epochs": 1, "chunk_size": -1, "verbose": 0, "test_split": 0, "validation_split": 0.5, "seed": 1}
    result = run_workflow(files, labels, seed_model, params)
    assert result.specs.n_events == sum(n - n // 2 for _, n in FILES.values())  # every file's training half
    _, uids, y, _ = served(files, labels=labels)
    np.testing.assert_array_equal(y, np.where(uids // ID <= 2, 1.0, 0.0))  # file ids 1, 2 are the sig_* files
