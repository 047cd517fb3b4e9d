"""Load test of ``mlaas4hep serve`` (issue 29): requests/s and p50/p99 latency for 1, 8 and 32 concurrent clients.

Usage::

    python benchmarks/serve.py                    # two synthetic bundles, 1, 8 and 32 clients, 5 s each
    python benchmarks/serve.py --bundle BUNDLE    # an exported bundle instead
    python benchmarks/serve.py --quick            # a smoke run of the harness (a second per level)

Each bundle is served by ``mlaas4hep serve`` in a subprocess on a free loopback
port; the clients are threads of this process, each with one keep-alive HTTP
connection, posting the same JSON request of ``--events`` events (100) to
``/v2/models/<name>/infer`` until ``--seconds`` have passed or ``--requests``
requests have been sent, whichever comes first. The request is encoded once,
before the clock starts; every wait on the server has a timeout. Before the
load, one answer is compared with ONNX Runtime run directly on ``model.onnx``.

Without ``--bundle`` two synthetic bundles are written (random weights: the
cost of a prediction does not depend on them): ``recipe``, the original
recipe's model (Dense 128, 64, 1) on the demo files' 1779 inputs in their
weaver-style groups (``event`` 15 x 1, ``Electron`` 12 x 29, ``Jet`` 12 x 50,
``Muon`` 12 x 32, ``Tau`` 12 x 36), and ``small``, 11 inputs in two groups.

The clients share the machine with the server: on a small machine they take
part of its CPU. TFaaS, the original MLaaS4HEP's inference service, published
"400 req/sec for 100 concurrent clients"; its line is printed beside ours.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["LoadResult", "load_test", "main", "write_mlp_bundle"]

TFAAS = "TFaaS (published, the original MLaaS4HEP's server): 400 req/s for 100 concurrent clients"
RECIPE_GROUPS = (("event", 15, 1), ("Electron", 12, 29), ("Jet", 12, 50), ("Muon", 12, 32), ("Tau", 12, 36))
SMALL_GROUPS = (("event", 3, 1), ("Jet", 2, 4))
TIMEOUT = 30.0  # seconds: any one wait on the server


def write_mlp_bundle(directory: Path, name: str, groups: Sequence[tuple[str, int, int]], seed: int = 1) -> Path:
    """A bundle of an MLP (Dense 128 relu, 64 relu, 1 sigmoid) taking ``groups`` of ``(name, n_vars, var_length)``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    width = sum(n * length for _, n, length in groups)
    nodes = [helper.make_node("Flatten", [g], [f"{g}_flat"], axis=1) for g, _, _ in groups]
    nodes.append(helper.make_node("Concat", [f"{g}_flat" for g, _, _ in groups], ["x0"], axis=1))
    weights = []
    sizes = [width, 128, 64, 1]
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        weights.append(numpy_helper.from_array(rng.normal(0, n_in**-0.5, (n_in, n_out)).astype(np.float32), f"W{i}"))
        weights.append(numpy_helper.from_array(np.zeros(n_out, np.float32), f"b{i}"))
        nodes.append(helper.make_node("Gemm", [f"x{i}", f"W{i}", f"b{i}"], [f"z{i}"]))
        last = i == len(sizes) - 2
        nodes.append(helper.make_node("Sigmoid" if last else "Relu", [f"z{i}"], ["score" if last else f"x{i + 1}"]))
    inputs = [helper.make_tensor_value_info(g, TensorProto.FLOAT, ["batch", n, length]) for g, n, length in groups]
    outputs = [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])]
    graph = helper.make_graph(nodes, name, inputs, outputs, weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    directory.mkdir(parents=True, exist_ok=True)
    onnx.save(model, directory / "model.onnx")
    preprocess: dict[str, Any] = {"input_names": [g for g, _, _ in groups], "output_names": ["score"]}
    for g, n, length in groups:
        preprocess[g] = {"var_names": [f"{g}_v{i}" for i in range(n)], "var_length": length, "var_infos": {}}
    (directory / "preprocess.json").write_text(json.dumps(preprocess, indent=1))
    triton = directory / "triton" / name
    (triton / "1").mkdir(parents=True, exist_ok=True)
    (triton / "1" / "model.onnx").write_bytes((directory / "model.onnx").read_bytes())
    (triton / "config.pbtxt").write_text(f'name: "{name}"\nplatform: "onnxruntime_onnx"\n')
    return directory


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``mlaas4hep serve BUNDLE`` in a subprocess on free loopback ports, stopped on leaving the block."""

    def __init__(self, bundle: Path, log: Path, ready_timeout: float = 120.0) -> None:
        self.bundle, self.log, self.ready_timeout = bundle, log, ready_timeout
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        from mlaas4hep.deploy.serve import Bundle

        name = Bundle.load(self.bundle).name
        command = [sys.executable, "-m", "mlaas4hep.workflow.cli", "serve", str(self.bundle), "--host", "127.0.0.1"]
        grpc_port = _free_port()
        while grpc_port == self.port:
            grpc_port = _free_port()
        command += ["--port", str(self.port), "--grpc-port", str(grpc_port)]
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            self._wait_ready(name)
        except BaseException:  # not ready, exited, or Ctrl-C while waiting: the server does not outlive the call
            self.__exit__()
            raise
        return self

    def _wait_ready(self, name: str) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                msg = f"mlaas4hep serve exited with {self.process.returncode}: {self.log.read_text()[-3000:]}"
                raise RuntimeError(msg)
            if request(self.port, "GET", f"/v2/models/{name}/ready", timeout=2.0)[0] == 200:
                return
            time.sleep(0.2)
        msg = f"mlaas4hep serve not ready after {self.ready_timeout:.0f} s: {self.log.read_text()[-3000:]}"
        raise RuntimeError(msg)

    def __exit__(self, *exc: object) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)


def request(
    port: int, method: str, path: str, body: bytes | None = None, timeout: float = TIMEOUT
) -> tuple[int, bytes]:
    """One HTTP request on a new connection: its status and body (status 0 when nothing answers)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()
    except OSError:
        return 0, b""
    finally:
        connection.close()


def encode_request(groups: Sequence[tuple[str, int, int]], events: int, seed: int = 2) -> tuple[bytes, dict[str, Any]]:
    """A JSON infer request of ``events`` random events (float32 numbers, shortest decimals), and its arrays."""
    rng = np.random.default_rng(seed)
    arrays = {g: rng.normal(size=(events, n, length)).astype(np.float32) for g, n, length in groups}
    parts = []
    for g, array in arrays.items():
        data = ",".join(str(v) for v in array.ravel())  # numpy's float32 str: the shortest decimal that round-trips
        parts.append(f'{{"name":"{g}","shape":{list(array.shape)},"datatype":"FP32","data":[{data}]}}')
    return ('{"inputs":[' + ",".join(parts) + "]}").encode(), arrays


def check_parity(port: int, bundle: Path, body: bytes, arrays: dict[str, Any]) -> float:
    """The largest difference between the server's outputs and ONNX Runtime's on ``model.onnx``."""
    import onnxruntime

    from mlaas4hep.deploy.serve import Bundle

    described = Bundle.load(bundle)
    status, answer = request(port, "POST", f"/v2/models/{described.name}/infer", body)
    if status != 200:
        msg = f"the server answered {status}: {answer[:500]!r}"
        raise RuntimeError(msg)
    session = onnxruntime.InferenceSession(str(described.model_path), providers=["CPUExecutionProvider"])
    expected = dict(zip(described.output_names, session.run(list(described.output_names), arrays), strict=True))
    outputs = json.loads(answer)["outputs"]
    return max(float(np.max(np.abs(np.asarray(o["data"]) - expected[o["name"]].ravel()))) for o in outputs)


@dataclass
class LoadResult:
    """One level of concurrency: how many requests answered, in how long, and their latencies (seconds)."""

    clients: int
    seconds: float
    latencies: list[float]
    errors: int

    @property
    def rate(self) -> float:
        """Answered requests per second."""
        return len(self.latencies) / self.seconds

    def quantile(self, q: float) -> float:
        """The ``q`` quantile of the latencies, in milliseconds."""
        if len(self.latencies) < 2:
            return 1e3 * (self.latencies[0] if self.latencies else float("nan"))
        return 1e3 * statistics.quantiles(self.latencies, n=100, method="inclusive")[round(100 * q) - 1]


def load_test(port: int, path: str, body: bytes, clients: int, seconds: float, max_requests: int) -> LoadResult:
    """``clients`` threads posting ``body`` to ``path`` until ``seconds`` pass or ``max_requests`` are sent."""
    budget = iter(range(max_requests))
    lock = threading.Lock()
    latencies: list[float] = []
    errors = [0]
    start = time.perf_counter()
    deadline = start + seconds

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        headers = {"Content-Type": "application/json"}
        try:
            while time.perf_counter() < deadline:
                with lock:
                    if next(budget, None) is None:
                        return
                t0 = time.perf_counter()
                try:
                    connection.request("POST", path, body=body, headers=headers)
                    response = connection.getresponse()
                    response.read()
                    ok = response.status == 200
                except OSError:
                    ok = False
                    connection.close()  # reconnects on the next request
                with lock:
                    if ok:
                        latencies.append(time.perf_counter() - t0)
                    else:
                        errors[0] += 1
        finally:
            connection.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 2 * TIMEOUT)
    return LoadResult(clients, time.perf_counter() - start, latencies, errors[0])


def bench_bundle(bundle: Path, args: argparse.Namespace, log: Path) -> list[str]:
    """The Markdown rows of one bundle: one per level of concurrency."""
    from mlaas4hep.deploy.serve import Bundle

    described = Bundle.load(bundle)
    groups = [(g.name, *g.shape) for g in described.inputs]
    body, arrays = encode_request(groups, args.events)
    width = sum(n * length for _, n, length in groups)
    rows = []
    with Server(bundle, log) as server:
        error = check_parity(server.port, bundle, body, arrays)
        print(
            f"{described.name}: {width} inputs per event, {len(body) / 1e6:.2f} MB per request of {args.events} events;"
        )
        print(f"  outputs agree with ONNX Runtime on model.onnx: {error <= 1e-5} (largest difference {error:.2g})")
        path = f"/v2/models/{described.name}/infer"
        load_test(server.port, path, body, 1, min(1.0, args.seconds), 5)  # warm-up
        for clients in args.clients:
            r = load_test(server.port, path, body, clients, args.seconds, args.requests)
            line = (
                f"| {described.name} | {width} | {clients} | {len(r.latencies)} | {r.rate:.1f} | "
                f"{r.rate * args.events:.0f} | {r.quantile(0.5):.1f} | {r.quantile(0.99):.1f} | {r.errors} |"
            )
            print(
                f"  {clients:>3} clients: {r.rate:8.1f} req/s, p50 {r.quantile(0.5):7.1f} ms, "
                f"p99 {r.quantile(0.99):7.1f} ms, {len(r.latencies)} answered, {r.errors} errors",
                flush=True,
            )
            rows.append(line)
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="load test of mlaas4hep serve (issue 29), on loopback")
    parser.add_argument("--bundle", type=Path, action="append", help="an exported bundle (repeatable)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32], help="concurrent clients (1 8 32)")
    parser.add_argument("--events", type=int, default=100, help="events per request (100)")
    parser.add_argument("--seconds", type=float, default=5.0, help="at most this long per level (5)")
    parser.add_argument("--requests", type=int, default=5000, help="at most this many requests per level (5000)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 s and 50 requests per level")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.requests = min(args.seconds, 1.0), min(args.requests, 50)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import mlserver
    import onnxruntime

    cpus = len(os.sched_getaffinity(0))
    print(
        f"machine: {cpus} usable CPUs (server and clients share them); Python {sys.version.split()[0]}, "
        f"MLServer {mlserver.__version__}, ONNX Runtime {onnxruntime.__version__}"
    )
    print(f"{args.events} events per request; per level at most {args.seconds:g} s and {args.requests} requests\n")
    rows = []
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        bundles = args.bundle or [
            write_mlp_bundle(Path(tmp) / "recipe", "recipe", RECIPE_GROUPS),
            write_mlp_bundle(Path(tmp) / "small", "small", SMALL_GROUPS),
        ]
        for i, bundle in enumerate(bundles):
            rows += bench_bundle(bundle, args, Path(tmp) / f"server-{i}.log")
    print("\n| model | inputs per event | clients | requests | req/s | events/s | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\n{TFAAS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
