"""Real servers on loopback for the remote-reading tests: XRootD (the ``xrootd`` daemon) and HTTP with ranges.

Both can be stopped and started again on the same port, to test what the reader does when a
server goes away in the middle of an epoch.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO

import pytest

_RANGE = re.compile(r"(\d*)-(\d*)")


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unavailable(reason: str) -> None:
    """Skip the test, or fail it under CI, where every server must run."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
    pytest.skip(reason)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


class XRootDServer:
    """``xrootd`` serving ``directory`` on ``port`` (as the user ``xrootd`` when run as root)."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = Path(directory)
        self.port = port or free_port()
        self.log = self.directory.parent / f"xrootd-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, name: str) -> str:
        return f"root://localhost:{self.port}/{(self.directory / name).as_posix()}"

    @property
    def redirector(self) -> str:
        return f"root://localhost:{self.port}/{self.directory.as_posix()}/"

    def start(self) -> None:
        command = ["xrootd", "-p", str(self.port), str(self.directory)]
        if os.geteuid() == 0:  # xrootd refuses to run as root
            command[1:1] = ["-R", "xrootd"]
        with self.log.open("ab") as log:  # its log goes to stderr: the xrootd user could not write it here
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 10
        while not _listening(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
                msg = f"xrootd did not start on port {self.port}: {tail}"
                raise RuntimeError(msg)
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


def start_xrootd(directory: Path) -> XRootDServer:
    """Start xrootd on a world-readable copy of ``directory`` (its ``url()`` names the copy), or skip/fail."""
    if shutil.which("xrootd") is None:
        unavailable("the xrootd server is not installed (apt-get install xrootd-server, or `make system-deps`)")
    if os.geteuid() == 0:
        try:
            subprocess.run(["id", "xrootd"], check=True, capture_output=True)
        except subprocess.CalledProcessError:
            subprocess.run(["useradd", "--system", "--no-create-home", "xrootd"], check=True, capture_output=True)
    # The server's user must reach the files: it serves a world-readable copy outside pytest's own
    # temporary root, which pytest makes private again (0700) whenever another session starts.
    public = Path(tempfile.mkdtemp(prefix="mlaas4hep-xrootd-"))
    shutil.copytree(directory, public, dirs_exist_ok=True)
    for path in [public, *public.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    server = XRootDServer(public)
    weakref.finalize(server, shutil.rmtree, public, True)
    try:
        server.start()
    except RuntimeError as err:
        unavailable(str(err))
    return server


class _RangeHandler(SimpleHTTPRequestHandler):
    """Static files with ``Range`` requests: one range (206) or several (206 multipart/byteranges)."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def send_head(self) -> io.BytesIO | BinaryIO | None:
        header = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        if not header or not path.is_file():
            return super().send_head()
        size = path.stat().st_size
        ranges = []
        for part in header.removeprefix("bytes=").split(","):
            match = _RANGE.fullmatch(part.strip())
            if match is None:
                self.send_error(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                return None
            first, last = match.groups()
            if not first:  # the last N bytes
                start, stop = max(size - int(last), 0), size
            else:
                start, stop = int(first), min(int(last) + 1, size) if last else size
            ranges.append((start, stop))
        data = path.read_bytes()
        if len(ranges) == 1:
            start, stop = ranges[0]
            body = data[start:stop]
            self.send_response(HTTPStatus.PARTIAL_CONTENT)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
        else:
            boundary = "mlaas4hep-boundary"
            parts = [
                f"--{boundary}\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Range: bytes {start}-{stop - 1}/{size}\r\n\r\n".encode()
                + data[start:stop]
                + b"\r\n"
                for start, stop in ranges
            ]
            body = b"".join(parts) + f"--{boundary}--\r\n".encode()
            self.send_response(HTTPStatus.PARTIAL_CONTENT)
            self.send_header("Content-Type", f"multipart/byteranges; boundary={boundary}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.wfile.write(body)
        return None

    def do_HEAD(self) -> None:
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(path.stat().st_size))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()


class _PlainHandler(SimpleHTTPRequestHandler):
    """Static files, whole: a ``Range`` header is ignored (200, the whole file), as by ``python -m http.server``."""

    def log_message(self, format: str, *args: object) -> None:
        pass


class HTTPServer:
    """A threaded HTTP server with range requests (or, with ``ranges=False``, without), serving ``directory``."""

    def __init__(self, directory: Path, *, ranges: bool = True) -> None:
        self.directory = Path(directory)
        self.ranges = ranges
        self.port = free_port()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def start(self) -> None:
        directory = str(self.directory)

        connections = self._connections

        base: type[SimpleHTTPRequestHandler] = _RangeHandler if self.ranges else _PlainHandler

        class Handler(base):  # type: ignore[valid-type,misc]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=directory, **kwargs)

            def setup(self) -> None:
                connections.add(self.request)
                super().setup()

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            for connection in list(self._connections):  # keep-alive clients lose their connection too
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._connections.clear()
            if self._thread is not None:
                self._thread.join(5)
            self._server = None
