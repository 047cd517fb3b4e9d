"""Remote files over real servers on loopback: XRootD (``root://``) and HTTP with range requests.

The servers are started by the tests (``servers.py``). Without the xrootd daemon or
the client packages these tests skip, except under CI, where they fail.
Each test checks that every event of an epoch is served exactly once; the fault
tests stop the server in the middle of an epoch.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import write_tree
from servers import HTTPServer, XRootDServer, start_xrootd, unavailable

from mlaas4hep import FileAccessError  # before keras, as the docs advise: XRootD can then load here
from mlaas4hep.inputs import remote as _remote

keras = pytest.importorskip("keras")

from mlaas4hep import RootSequence  # noqa: E402

ID = 1_000_000  # uid = file_id * ID + entry
SIZES = (600, 900)
#: XRootD client settings that make a dead server fail in a second rather than minutes
XRD_FAST = {"ConnectionWindow": 1, "ConnectionRetry": 1, "RequestTimeout": 5, "StreamErrorWindow": 0}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two small files with many baskets, so every chunk makes its own requests."""
    directory = tmp_path_factory.mktemp("served")
    for file_id, n in enumerate(SIZES):
        write_tree(directory / f"f{file_id}.root", n, seed=file_id, file_id=file_id, basket=100)
    return directory


@pytest.fixture(scope="module")
def xrootd(served: Path) -> Iterator[XRootDServer]:
    if importlib.util.find_spec("XRootD") is None:
        unavailable("the XRootD client is not installed: pip install 'mlaas4hep[xrootd]'")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in XRD_FAST.items():  # for helper processes started from now on
            mp.setenv(f"XRD_{key.upper()}", str(value))
        if "XRootD.client" in sys.modules:  # for this process (never import it here after TensorFlow)
            client = sys.modules["XRootD.client"]
            for key, value in XRD_FAST.items():
                client.EnvPutInt(key, value)
        server = start_xrootd(served)
        yield server
        server.stop()


@pytest.fixture(scope="module")
def http(served: Path) -> Iterator[HTTPServer]:
    if importlib.util.find_spec("aiohttp") is None:
        unavailable("aiohttp is not installed: pip install 'mlaas4hep[http]'")
    server = HTTPServer(served)
    server.start()
    yield server
    server.stop()


def sequence(files: list[str], **kw: Any) -> RootSequence:
    args = dict(labels=[1, 0], branches=["uid", "MET_pt", "Jet_pt"], normalization=None, batch_size=50)
    args.update(chunk_size=300, seed=3, prefetch=0, retry_backoff=0.2)
    return RootSequence(files, **{**args, **kw})


def serve_epoch(seq: RootSequence, after: int = -1, fault: Callable[[], object] | None = None) -> np.ndarray:
    """The uids of one epoch, calling ``fault()`` after batch ``after``."""
    column = seq.feature_names.index("uid")
    seq.on_epoch_begin()
    uids = []
    for i in range(len(seq)):
        x, _ = seq[i]
        uids.append(x[:, column].astype(np.int64))
        if i == after and fault is not None:
            fault()
    seq.on_epoch_end()
    return np.concatenate(uids)


def check_exactly_once(uids: np.ndarray) -> None:
    expected = np.concatenate([f * ID + np.arange(n) for f, n in enumerate(SIZES)])
    assert len(uids) == len(expected)
    assert np.array_equal(np.sort(uids), expected)


# -- XRootD -----------------------------------------------------------------------------------


def test_xrootd_epoch_exactly_once(xrootd: XRootDServer, xrootd_mode: str) -> None:
    seq = sequence([xrootd.url("f0.root"), xrootd.url("f1.root")])
    try:
        check_exactly_once(serve_epoch(seq))
        source = seq.reader._open[0].file.file.source
        assert type(source).__name__ == ("XRootDSource" if xrootd_mode == "in-process" else "WorkerXRootDSource")
    finally:
        seq.close()


def test_xrootd_redirector_with_bare_names(
    xrootd: XRootDServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the bare names do not exist here, so they get the prefix
    seq = sequence(["f0.root", "f1.root"], redirector=xrootd.redirector)
    try:
        assert [s.path for s in seq.sources] == [xrootd.url("f0.root"), xrootd.url("f1.root")]
        check_exactly_once(serve_epoch(seq))
    finally:
        seq.close()


@pytest.mark.slow
def test_xrootd_trains(xrootd: XRootDServer) -> None:
    seq = sequence([xrootd.url("f0.root"), xrootd.url("f1.root")], normalization="minmax", prefetch=2)
    model = keras.Sequential([keras.Input((seq.num_features,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile("adam", "binary_crossentropy")
    try:
        history = model.fit(seq, epochs=2, verbose=0)
    finally:
        seq.close()
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()


@pytest.mark.slow
def test_xrootd_after_keras_in_a_fresh_interpreter(xrootd: XRootDServer) -> None:
    """`import keras` and then `import XRootD.client` crashes; mlaas4hep must read root:// anyway."""
    code = f"""
import keras, sys
import numpy as np
from mlaas4hep import RootSequence
assert "tensorflow" in sys.modules and "XRootD.client" not in sys.modules
seq = RootSequence({[xrootd.url("f0.root"), xrootd.url("f1.root")]!r}, labels=[1, 0], branches=["uid"],
                   normalization=None, batch_size=100, chunk_size=500, seed=1)
uids = np.sort(np.concatenate([seq[i][0][:, 0] for i in range(len(seq))]).astype(np.int64))
assert np.array_equal(uids, np.concatenate([np.arange(600), {ID} + np.arange(900)])), uids
assert "XRootD.client" not in sys.modules  # read through the helper process
print("served", len(uids))
"""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, f"exit status {run.returncode}\n{run.stdout}\n{run.stderr[-3000:]}"
    assert "served 1500" in run.stdout


def test_xrootd_server_restarts_mid_epoch(
    xrootd: XRootDServer, xrootd_mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    seq = sequence([xrootd.url("f0.root"), xrootd.url("f1.root")], retries=4)
    restart = threading.Timer(0.5, xrootd.start)

    def restart_later() -> None:
        xrootd.stop()
        restart.start()

    try:
        with caplog.at_level(logging.WARNING, logger="mlaas4hep.stream.reader"):
            uids = serve_epoch(seq, after=7, fault=restart_later)
    finally:
        seq.close()
        restart.join(15)  # the server listens again before the next test
    check_exactly_once(uids)
    assert any("retry 1 of 4" in r.getMessage() for r in caplog.records), caplog.text


def test_xrootd_server_stays_down(xrootd: XRootDServer, xrootd_mode: str) -> None:
    seq = sequence([xrootd.url("f0.root"), xrootd.url("f1.root")], retries=2, retry_backoff=0.05)
    try:
        with pytest.raises(FileAccessError, match=r"root://localhost:\d+//.*f[01]\.root.*tried 3 times"):
            serve_epoch(seq, after=3, fault=xrootd.stop)
    finally:
        seq.close()
        xrootd.start()


# -- HTTP -------------------------------------------------------------------------------------


def test_http_epoch_exactly_once(http: HTTPServer) -> None:
    seq = sequence([http.url("f0.root"), http.url("f1.root")])
    try:
        check_exactly_once(serve_epoch(seq))
    finally:
        seq.close()


def test_http_server_restarts_mid_epoch(http: HTTPServer, caplog: pytest.LogCaptureFixture) -> None:
    seq = sequence([http.url("f0.root"), http.url("f1.root")], retries=4)
    restart = threading.Timer(0.5, http.start)

    def restart_later() -> None:
        http.stop()
        restart.start()

    try:
        with caplog.at_level(logging.WARNING, logger="mlaas4hep.stream.reader"):
            uids = serve_epoch(seq, after=7, fault=restart_later)
    finally:
        seq.close()
        restart.join(15)
    check_exactly_once(uids)
    assert any("retry 1 of 4" in r.getMessage() for r in caplog.records), caplog.text


def test_http_server_stays_down(http: HTTPServer) -> None:
    seq = sequence([http.url("f0.root"), http.url("f1.root")], retries=2, retry_backoff=0.05)
    try:
        with pytest.raises(FileAccessError, match=r"http://127\.0\.0\.1:\d+/f[01]\.root.*tried 3 times"):
            serve_epoch(seq, after=3, fault=http.stop)
    finally:
        seq.close()
        http.start()


def test_missing_client_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_remote, "_installed", lambda module: False)
    with pytest.raises(FileAccessError, match=r"pip install 'mlaas4hep\[xrootd\]'"):
        _remote.open_options("root://localhost:1094//data/f.root")
    with pytest.raises(FileAccessError, match=r"pip install 'mlaas4hep\[http\]'"):
        _remote.open_options("https://example.org/f.root")
    assert _remote.open_options("/data/f.root") == {}


# -- bounded waits ------------------------------------------------------------------------------------
_UNREACHABLE = """
import sys, time
from mlaas4hep import RootSequence
t0 = time.perf_counter()
try:
    RootSequence([sys.argv[1]], labels=[1], **({"timeout": float(sys.argv[2])} if len(sys.argv) > 2 else {}))
except Exception as err:
    print(type(err).__name__, "|", err)
print("seconds", time.perf_counter() - t0)
"""


def _unreachable(url: str, *timeout: str) -> tuple[str, float]:
    """Make a sequence of ``url`` in a fresh interpreter with XRootD's own defaults; its error and how long it took."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("XRD_")}
    result = subprocess.run(
        [sys.executable, "-c", _UNREACHABLE, url, *timeout], capture_output=True, text=True, timeout=300, env=env
    )
    lines = result.stdout.strip().splitlines()
    return lines[0], float(lines[-1].split()[-1])


def _free_port() -> int:
    from servers import free_port

    return free_port()


@pytest.mark.skipif(importlib.util.find_spec("XRootD") is None, reason="the XRootD client is not installed")
def test_an_unreachable_xrootd_server_fails_within_the_timeout() -> None:
    url = f"root://127.0.0.1:{_free_port()}//data/f.root"  # nothing listens there
    error, seconds = _unreachable(url, "4")
    assert error.startswith("FileAccessError |") and url in error
    assert seconds < 4 + 10


@pytest.mark.slow  # the documented default: 30 s
@pytest.mark.skipif(importlib.util.find_spec("XRootD") is None, reason="the XRootD client is not installed")
def test_an_unreachable_xrootd_server_fails_within_the_default_timeout() -> None:
    url = f"root://127.0.0.1:{_free_port()}//data/f.root"
    error, seconds = _unreachable(url)
    assert error.startswith("FileAccessError |") and url in error
    assert seconds < 30 + 15


def test_an_unreachable_http_server_fails_at_once() -> None:
    url = f"http://127.0.0.1:{_free_port()}/f.root"
    error, seconds = _unreachable(url, "4")
    assert error.startswith("FileAccessError |") and url in error
    assert seconds < 4 + 10


def test_a_web_server_without_byte_ranges_is_named(served: Path) -> None:
    if importlib.util.find_spec("aiohttp") is None:
        unavailable("aiohttp is not installed: pip install 'mlaas4hep[http]'")
    server = HTTPServer(served, ranges=False)
    server.start()
    try:
        with pytest.raises(FileAccessError, match=r"does not serve byte ranges"):
            RootSequence([server.url("f0.root")], labels=[1], timeout=5)
    finally:
        server.stop()


# -- the collections layout -----------------------------------------------------------------------


@pytest.mark.parametrize("server", ["xrootd", "http"])
def test_collections_layout_reads_remote_files_as_local_ones(
    server: str, served: Path, request: pytest.FixtureRequest
) -> None:
    remote: Any = request.getfixturevalue(server)
    kw = {"layout": "collections", "shuffle": True}
    far = sequence([remote.url("f0.root"), remote.url("f1.root")], **kw)
    near = sequence([str(served / "f0.root"), str(served / "f1.root")], **kw)
    try:
        column = far.flattener.feature_order["event"].index("uid")
        uids = []
        for i in range(len(far)):
            (x, y), (x_local, y_local) = far[i], near[i]
            assert set(x) == {"event", "Jet", "Jet_mask"}
            for name in x:
                np.testing.assert_array_equal(x[name], x_local[name])
            np.testing.assert_array_equal(y, y_local)
            uids.append(x["event"][:, column].astype(np.int64))
        check_exactly_once(np.concatenate(uids))
    finally:
        far.close()
        near.close()
