"""Shared fixtures: small ROOT files written with uproot for each test session."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def keras_probe(*, built: bool = False) -> tuple[list[int] | None, int]:
    """What Keras' ``fit`` asks a PyDataset for before its first epoch, under the backend in use.

    TensorFlow probes indices 0 and 1 outside any epoch (forgotten by the
    sequence). JAX and PyTorch build an unbuilt model on the first batch of an
    epoch they begin and abandon: one index, Keras' first, which the first
    epoch serves again when its index comes, reading its chunk (and the ones
    read ahead of it) again. Returns the indices (None: any one) and how many.
    """
    if os.environ["KERAS_BACKEND"] == "tensorflow":
        return [0, 1], 2
    return None, 0 if built else 1


def write_tree(path: Path, n: int, *, seed: int, file_id: int = 0, tree: str = "Events", basket: int = 0) -> Path:
    """Write a TTree with an event id ``uid``, flat branches and a NanoAOD-like jet collection.

    The jets are ``nJet``, ``Jet_pt`` and ``Jet_eta``.
    """
    rng = np.random.default_rng(seed)
    counts = rng.poisson(2.0, n)
    counts[rng.random(n) < 0.01] += 7  # a rare tail
    total = int(counts.sum())
    data = {
        "uid": (file_id * 1_000_000 + np.arange(n)).astype(np.int64),
        "run": np.full(n, 1, np.int32),
        "MET_pt": rng.exponential(30.0, n).astype(np.float32) + 5 * file_id,
        "nPV": rng.poisson(20, n).astype(np.int32),
        "flag": rng.random(n) < 0.5 + 0.2 * file_id,
        "Jet": ak.zip(
            {
                "pt": ak.unflatten(rng.exponential(40.0, total).astype(np.float32) + 10 * file_id, counts),
                "eta": ak.unflatten(rng.normal(0, 2.0, total).astype(np.float32), counts),
            }
        ),
    }
    with uproot.recreate(path) as f:
        t = f.mktree(tree, {k: (v.type if isinstance(v, ak.Array) else v.dtype) for k, v in data.items()})
        step = basket or n
        for start in range(0, n, step):
            t.extend({k: v[start : start + step] for k, v in data.items()})
    return path


_SHARED_FILES = Path(tempfile.mkdtemp(prefix="mlaas4hep-tests-"))
atexit.register(shutil.rmtree, _SHARED_FILES, ignore_errors=True)
_shared_written: dict[tuple[int, int], Path] = {}
_shared_lock = threading.Lock()


def shared_tree(file_id: int, n: int) -> Path:
    """File ``file_id`` with ``n`` entries, written once per test session (for hypothesis examples)."""
    with _shared_lock:
        path = _shared_written.get((file_id, n))
        if path is None:
            path = write_tree(_SHARED_FILES / f"f{file_id}_{n}.root", n, seed=file_id, file_id=file_id)
            _shared_written[(file_id, n)] = path
    return path


@pytest.fixture(scope="session")
def make_tree():
    """The :func:`write_tree` helper, for tests that need their own files."""
    return write_tree


@pytest.fixture
def count_buffers(monkeypatch: pytest.MonkeyPatch):
    """A function that starts counting the chunk buffers made in this process and returns the growing list."""

    def start() -> list[int]:
        from mlaas4hep.stream import buffers

        made: list[int] = []
        mapped = buffers.mapped
        monkeypatch.setattr(buffers, "mapped", lambda *args, **kw: made.append(1) or mapped(*args, **kw))
        return made

    return start


@pytest.fixture(scope="session")
def two_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two files of different sizes (1200 and 1800 entries), labels 1 and 0."""
    d = tmp_path_factory.mktemp("two")
    return [
        write_tree(d / "sig.root", 1200, seed=1, file_id=0, basket=500),
        write_tree(d / "bkg.root", 1800, seed=2, file_id=1, basket=500),
    ]


@pytest.fixture(scope="session")
def hzz() -> Path:
    path = SHARED_DATA / "uproot-HZZ.root"
    if not path.exists():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(scope="session")
def zmumu() -> Path:
    path = SHARED_DATA / "uproot-Zmumu.root"
    if not path.exists():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(params=["in-process", "helper"])
def xrootd_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Reach root:// in this process, or through the helper process used once TensorFlow is loaded."""
    from mlaas4hep.inputs import remote

    if request.param == "helper":
        monkeypatch.setattr(remote, "_xrootd_in_process", lambda: False)
    elif "XRootD.client" not in sys.modules:
        pytest.skip("TensorFlow was imported first here: XRootD can only be reached through the helper")
    mode: str = request.param
    return mode
