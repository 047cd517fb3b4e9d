"""Remote files: what :func:`uproot.open` needs for a URL, folders listed for patterns, XRootD whatever came first.

The optional remote dependencies are looked up here and nowhere else:
``root://`` needs the ``xrootd`` package (``pip install 'mlaas4hep[xrootd]'``),
``http(s)://`` needs ``aiohttp`` (``pip install 'mlaas4hep[http]'``).

**Import order.** Importing ``XRootD.client`` into a process that has already
loaded TensorFlow kills it with a segmentation fault (the two bring clashing
native libraries); the other order works. So:

* ``import mlaas4hep`` imports ``XRootD.client`` (about 15 ms) when it is
  installed and TensorFlow is not loaded yet; ``root://`` files are then read
  in-process by :class:`uproot.source.xrootd.XRootDSource`.
* When TensorFlow came first (``import keras`` before ``import mlaas4hep``),
  ``XRootD.client`` is never imported in-process: :class:`WorkerXRootDSource`
  hands the byte ranges uproot asks for to a helper interpreter that has
  XRootD and no TensorFlow, started once per process (and again in a forked
  child) with :mod:`subprocess`, and talked to over a socket pair.
"""

from __future__ import annotations

import atexit
import importlib.util
import itertools
import math
import os
import queue
import socket
import subprocess
import sys
import threading
import urllib.request
import warnings
from multiprocessing.connection import Connection
from typing import Any

import uproot
import uproot.source.chunk
import uproot.source.futures

from ..errors import FileAccessError

__all__ = ["XROOTD_SCHEMES", "WorkerXRootDSource", "list_xrootd", "open_options", "preload_xrootd"]

XROOTD_SCHEMES = ("root", "roots", "xroot", "xroots")
"""The URL schemes XRootD reads."""
_HTTP_SCHEMES = ("http", "https")
_XROOTD_TIMEOUT = 206  # XRootD's status code of an operation that timed out (errOperationExpired)
#: Exceptions that cross from the helper process by name; anything else arrives as OSError.
_ERRORS: dict[str, type[OSError]] = {"FileNotFoundError": FileNotFoundError, "TimeoutError": TimeoutError}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _xrootd_in_process() -> bool:
    """Whether ``XRootD.client`` is, or can safely be, imported in this process."""
    return "XRootD.client" in sys.modules or "tensorflow" not in sys.modules


#: XRootD's own settings that mlaas4hep changes unless they are set in the environment: its timeouts are
#: checked every 15 s by default, which would make any wait shorter than that last 15 s
XROOTD_DEFAULTS = {"XRD_TIMEOUTRESOLUTION": "1"}


def _xrootd_settings() -> dict[str, str]:
    """The settings of :data:`XROOTD_DEFAULTS` that the environment does not set."""
    return {key: value for key, value in XROOTD_DEFAULTS.items() if key not in os.environ}


def preload_xrootd() -> None:
    """Import ``XRootD.client`` now, if it is installed and TensorFlow is not loaded yet.

    XRootD reads its settings from the environment when its client starts:
    :data:`XROOTD_DEFAULTS` are in the environment only while it is imported
    (and in the helper process's), so that the process's environment is left as it was.
    """
    if "XRootD.client" in sys.modules or "tensorflow" in sys.modules or not _installed("XRootD"):
        return
    added = _xrootd_settings()
    os.environ.update(added)
    try:
        import XRootD.client  # noqa: F401
    except ImportError:  # a broken install: open_options says what to do when a root:// file is used
        return
    finally:
        for key in added:
            os.environ.pop(key, None)
    atexit.register(_quiet_xrootd_exit)  # after XRootD's own exit handler, so it runs before it


def _quiet_xrootd_exit() -> None:
    # XRootD's exit handler looks at every object left (gc.get_objects()), PyTorch's deprecated
    # torch.distributed.reduce_op among them, which warns when looked at: a warning for no one
    warnings.filterwarnings("ignore", category=FutureWarning, module="XRootD.client.finalize")


def open_options(path: str, timeout: float = 30.0) -> dict[str, Any]:
    """Keyword arguments for :func:`uproot.open` to read ``path`` (none for local files).

    Remote files wait at most ``timeout`` seconds for the server: XRootD's
    requests (its connection attempts included) and HTTP's connections and reads.

    Raises
    ------
    FileAccessError
        The URL needs an optional dependency that is not installed; the message
        says what to ``pip install``.
    """
    scheme = path.split("://", 1)[0].lower() if "://" in path else ""
    if scheme in XROOTD_SCHEMES:
        if not _installed("XRootD"):
            msg = f"reading {path!r} needs the XRootD client: pip install 'mlaas4hep[xrootd]'"
            raise FileAccessError(msg)
        seconds = max(1, math.ceil(timeout))  # XRootD takes whole seconds
        if _xrootd_in_process():
            import uproot.source.xrootd

            return {"handler": uproot.source.xrootd.XRootDSource, "timeout": seconds}
        return {"handler": WorkerXRootDSource, "timeout": seconds}
    if scheme in _HTTP_SCHEMES:
        if not _installed("aiohttp"):
            msg = f"reading {path!r} needs aiohttp: pip install 'mlaas4hep[http]'"
            raise FileAccessError(msg)
        return {"timeout": float(timeout)}
    return {}


def list_xrootd(url: str, timeout: float = 30.0) -> list[str]:
    """The names of the files (not the folders) in the XRootD folder ``url``, waiting at most ``timeout`` seconds.

    Lists in this process, or through the helper process once TensorFlow
    is loaded (see the module's notes).

    Raises
    ------
    FileAccessError
        The XRootD client is not installed; the message says what to ``pip install``.
    OSError
        The server refused the listing or did not answer in time (its message).

    Examples
    --------
    >>> list_xrootd("root://eospublic.cern.ch//eos/opendata/cms/")  # doctest: +SKIP
    ['README.txt', ...]
    """
    if not _installed("XRootD"):
        msg = f"expanding a pattern in {url!r} needs the XRootD client: pip install 'mlaas4hep[xrootd]'"
        raise FileAccessError(msg)
    seconds = max(1, math.ceil(timeout))  # XRootD takes whole seconds
    if _xrootd_in_process():
        preload_xrootd()  # with XROOTD_DEFAULTS, so that the timeout is kept to the second
        return _dirlist(url, seconds)
    names: list[str] = _current_worker().call("list", url, seconds)
    return names


def _dirlist(url: str, seconds: int) -> list[str]:
    """:func:`list_xrootd` itself, in the process that imports XRootD."""
    try:
        client = importlib.import_module("XRootD.client")  # untyped: its attributes are Any
        flags = importlib.import_module("XRootD.client.flags")
    except ImportError as err:
        msg = f"expanding a pattern in {url!r} needs a working XRootD client ({err}): pip install 'mlaas4hep[xrootd]'"
        raise FileAccessError(msg) from err
    parsed = client.URL(url)
    status, listing = client.FileSystem(f"{parsed.protocol}://{parsed.hostid}").dirlist(
        parsed.path or "/", flags.DirListFlags.STAT, timeout=seconds
    )
    if not status.ok:
        msg = f"listing {url!r} failed: {status.message.strip()}"
        raise (TimeoutError if status.code == _XROOTD_TIMEOUT else OSError)(msg)
    return [entry.name for entry in listing if not entry.statinfo.flags & flags.StatInfoFlags.IS_DIR]


def serves_ranges(url: str, timeout: float = 30.0) -> bool | None:
    """Whether the web server of ``url`` answers a byte-range request with just those bytes.

    None when that cannot be told (no answer within ``timeout`` seconds, an
    error status): the caller's own error is then the better one.
    """
    request = urllib.request.Request(url, headers={"Range": "bytes=0-15"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = int(response.status)
            header = response.headers.get("Content-Range")
    except (OSError, ValueError):
        return None
    return status == 206 or header is not None


# -- the helper process --------------------------------------------------------------------------


class _Worker:
    """A helper interpreter, without TensorFlow, that reads XRootD files for this process."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        code = "import sys; from mlaas4hep.inputs.remote import _serve; _serve(int(sys.argv[1]))"
        env = dict(os.environ, **_xrootd_settings(), TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"))
        self.process = subprocess.Popen(
            [sys.executable, "-c", code, str(theirs.fileno())], pass_fds=(theirs.fileno(),), env=env
        )
        theirs.close()
        self.connection = Connection(ours.detach())
        self.pid = os.getpid()
        self.lock = threading.Lock()

    def call(self, *request: Any) -> Any:
        with self.lock:
            try:
                self.connection.send(request)
                ok, value = self.connection.recv()
            except (EOFError, OSError) as err:
                status = self.process.poll()
                msg = f"the XRootD helper process (pid {self.process.pid}) stopped (exit status {status}): {err}"
                raise OSError(msg) from err
        if not ok:
            name, message = value
            raise _ERRORS.get(name, OSError)(message)
        return value

    @property
    def alive(self) -> bool:
        return self.pid == os.getpid() and self.process.poll() is None

    def stop(self) -> None:
        if self.pid != os.getpid():
            return
        self.connection.close()  # the helper sees EOF and exits
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


_worker: _Worker | None = None
_worker_lock = threading.Lock()


def _current_worker() -> _Worker:
    """This process's helper, started on first use and again after a fork or a crash."""
    global _worker
    with _worker_lock:
        if _worker is None or not _worker.alive:
            if _worker is not None and _worker.pid == os.getpid():
                _worker.stop()
            _worker = _Worker()
        return _worker


@atexit.register
def _stop_worker() -> None:
    if _worker is not None:
        _worker.stop()


def _serve(fd: int) -> None:
    """The helper's loop: open, read and close XRootD files as the parent asks (runs in the helper)."""
    import uproot.source.xrootd

    connection = Connection(fd)
    sources: dict[int, Any] = {}
    handles = itertools.count(1)
    while True:
        try:
            op, *args = connection.recv()
        except (EOFError, OSError):
            break
        try:
            if op == "open":
                path, options = args
                source = uproot.source.xrootd.XRootDSource(path, **options)
                handle = next(handles)
                sources[handle] = source
                result: Any = (handle, source.num_bytes)
            elif op == "read":
                handle, ranges = args
                chunks = sources[handle].chunks(ranges, queue.Queue())
                result = [chunk.raw_data.tobytes() for chunk in chunks]
            elif op == "list":
                result = _dirlist(*args)
            elif op == "close":
                source = sources.pop(args[0], None)
                if source is not None:
                    source.close()
                result = None
            else:
                msg = f"unknown request {op!r}"
                raise ValueError(msg)
            reply = (True, result)
        except Exception as err:  # noqa: BLE001 - every error goes back to the parent, by name
            reply = (False, (type(err).__name__, str(err)))
        connection.send(reply)
    for source in sources.values():
        source.close()


class WorkerXRootDSource(uproot.source.chunk.Source):  # type: ignore[misc]  # uproot has no type information
    """An uproot source that reads a ``root://`` file through the helper process.

    Used instead of :class:`uproot.source.xrootd.XRootDSource` when TensorFlow
    was imported before ``XRootD.client`` could be (see the module's notes).

    Parameters
    ----------
    file_path : str
        The ``root://`` URL.
    **options
        :func:`uproot.open`'s options; ``timeout`` (seconds, or None) is passed on.
    """

    def __init__(self, file_path: str, **options: Any) -> None:
        super().__init__()
        self._file_path = file_path
        self._worker = _current_worker()
        self._handle, self._num_bytes = self._worker.call("open", file_path, {"timeout": options.get("timeout")})
        self._closed = False

    def _read(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        if self._closed:
            msg = f"file {self._file_path!r} is closed"
            raise OSError(msg)
        if not self._worker.alive:
            msg = f"the XRootD helper process reading {self._file_path!r} is gone; reopen the file"
            raise OSError(msg)
        self._num_requests += 1
        self._num_requested_chunks += len(ranges)
        self._num_requested_bytes += sum(stop - start for start, stop in ranges)
        data: list[bytes] = self._worker.call("read", self._handle, [(int(a), int(b)) for a, b in ranges])
        return data

    def chunk(self, start: int, stop: int) -> uproot.source.chunk.Chunk:
        (data,) = self._read([(start, stop)])
        return uproot.source.chunk.Chunk(self, start, stop, uproot.source.futures.TrivialFuture(data))

    def chunks(self, ranges: list[tuple[int, int]], notifications: queue.Queue[Any]) -> list[uproot.source.chunk.Chunk]:
        chunks = []
        for (start, stop), data in zip(ranges, self._read(list(ranges)), strict=True):
            chunk = uproot.source.chunk.Chunk(self, start, stop, uproot.source.futures.TrivialFuture(data))
            notifications.put(chunk)
            chunks.append(chunk)
        return chunks

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> WorkerXRootDSource:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._closed:
            return
        self._closed = True
        if self._worker.alive:
            try:
                self._worker.call("close", self._handle)
            except OSError:  # the helper may already be gone; there is nothing left to close
                pass
