"""Statistics from training events only: with a split, the specs are computed over the training events alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uproot

from mlaas4hep import ParameterError, SpecBuilder, Specs
from mlaas4hep.options import Options
from mlaas4hep.stream.prepare import PreparedData, prepare


def _write(path: Path, n: int, offset: int = 0) -> Path:
    """A file whose ``x`` is the entry index (plus ``offset``): its first and last parts differ."""
    index = np.arange(n, dtype=np.int64)
    with uproot.recreate(path) as f:
        f["Events"] = {"x": (index + offset).astype(np.float64), "y": np.sin(index), "odd": index % 2}
    return path


@pytest.fixture
def files(tmp_path: Path) -> list[str]:
    return [str(_write(tmp_path / "a.root", 1000)), str(_write(tmp_path / "b.root", 600, offset=5000))]


def _prepare(files: list[str], **options: Any) -> PreparedData:
    return prepare(files, [1, 0], Options(**{"chunk_size": 200, "seed": 1, **options}))


def test_the_specs_count_the_training_events_only(hzz: Path) -> None:
    """The user's report: 2,421 events counted for a training sequence of 1,816."""
    train = prepare(f"{hzz}:events", [1], Options(validation_split=0.25, subset="training", chunk_size=500))
    assert train.n_events == 1816
    assert train.specs.n_events == 1816
    assert train.specs.files[0].entries == 2421  # the fingerprint stays the whole file's
    everything = prepare(f"{hzz}:events", [1], Options(chunk_size=500))
    assert everything.specs.n_events == 2421  # no split: all events


def test_min_and_max_come_from_the_training_part(files: list[str]) -> None:
    train = _prepare(files, validation_split=0.2, test_split=0.1, subset="training")
    assert train.ranges == ((0, 700), (0, 420))
    spec = train.specs["x"]
    assert spec.min == 0 and spec.max == 5419  # not 999 or 5599: validation and test events left out
    assert spec.count == train.n_events == 1120
    assert [f.stop for f in train.specs.files] == [700, 420]
    assert spec.mean == pytest.approx(np.concatenate([np.arange(700), np.arange(420) + 5000]).mean())


@pytest.mark.parametrize("extra", [{}, {"cut": "odd == 1"}, {"nevts": 800}, {"cut": "odd == 1", "nevts": 500}])
def test_every_part_of_one_split_computes_the_same_specs(files: list[str], extra: dict[str, Any]) -> None:
    split = {"validation_split": 0.2, "test_split": 0.1, **extra}
    train = _prepare(files, subset="training", **split)
    parts = [_prepare(files, subset=subset, **split) for subset in ("validation", "test")]
    assert train.specs.n_events == train.n_events
    for part in parts:
        assert part.specs.branches == train.specs.branches
        assert part.specs.n_events == train.n_events
    entries = train.selected or tuple(np.arange(n) for n in train.entries)
    x = np.concatenate([e[a:b] + offset for e, (a, b), offset in zip(entries, train.ranges, (0, 5000), strict=True)])
    spec = train.specs["x"]  # x is the entry (plus the file's offset): the statistics of the served training events
    assert (spec.count, spec.min, spec.max) == (x.size, x.min(), x.max())
    assert spec.mean == pytest.approx(x.mean())


def test_with_a_cut_the_statistics_are_those_of_the_training_events(files: list[str]) -> None:
    train = _prepare(files, validation_split=0.25, subset="training", cut="odd == 1")
    # 500 and 300 selected events: 375 and 225 for training, entries 1..749 and 1..449
    assert train.ranges == ((0, 375), (0, 225))
    assert train.specs.n_events == 600
    spec = train.specs["x"]
    assert (spec.min, spec.max) == (1, 5449)
    assert [f.stop for f in train.specs.files] == [750, 450]
    assert [f.selected for f in train.specs.files] == [375, 225]
    val = _prepare(files, validation_split=0.25, subset="validation", cut="odd == 1", specs=train.specs)
    assert val.ranges == ((375, 500), (225, 300)) and val.n_events == 200  # the masks over whole files


def test_with_nevts_the_stops_follow_the_apportioned_events(files: list[str]) -> None:
    train = _prepare(files, nevts=800, validation_split=0.5, subset="training")
    assert train.ranges == ((0, 250), (0, 150))
    assert train.specs.n_events == 400
    assert train.specs["x"].max == 5149


def test_the_specs_of_a_split_are_not_those_of_all_events(files: list[str]) -> None:
    """The session's reuse and the specs files tell specs over all events from specs over training events."""
    everything = _prepare(files)
    train = _prepare(files, validation_split=0.2, subset="training")
    again = _prepare(files)
    assert everything.specs["x"].max == again.specs["x"].max == 5599
    assert train.specs["x"].max == 5479


def test_a_specs_file_round_trip_keeps_the_training_statistics(files: list[str], tmp_path: Path) -> None:
    cache = tmp_path / "specs.json"
    train = _prepare(files, validation_split=0.2, subset="training", specs=cache)
    data = json.loads(cache.read_text())
    assert data["selection"]["stops"] == [800, 480] and data["files"][0]["stop"] == 800
    loaded = Specs.load(cache)
    assert loaded.branches == train.specs.branches and loaded.n_events == train.specs.n_events == 1280
    val = _prepare(files, validation_split=0.2, subset="validation", specs=cache)
    assert val.specs.branches == train.specs.branches
    assert json.loads(cache.read_text())["selection"]["stops"] == [800, 480]  # reused, not rebuilt
    with pytest.raises(ParameterError, match=r"validation_split=0\.3"):
        _prepare(files, validation_split=0.3, subset="validation", specs=cache)
    assert json.loads(cache.read_text())["selection"]["stops"] == [800, 480]  # the refused part left it as it was
    everything = _prepare(files, specs=tmp_path / "all.json")  # no split: all events, its own file
    assert everything.specs.n_events == 1600 and "stops" not in everything.specs.selection


def test_a_spec_builder_used_directly_reads_every_event(files: list[str]) -> None:
    specs = SpecBuilder(files).build()
    assert specs.n_events == 1600 and specs["x"].max == 5599
    assert [f.stop for f in specs.files] == [None, None] and "stops" not in specs.selection
    part = SpecBuilder(files, stops=[10, 0], step_size=3).build()
    assert part.n_events == 10 and (part["x"].min, part["x"].max) == (0, 9)
    with pytest.raises(ParameterError, match="stops"):
        SpecBuilder(files, stops=[10])
