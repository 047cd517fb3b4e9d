"""``mlaas4hep serve``: a bundle served by MLServer over the Open Inference Protocol v2, started and stopped here.

The bundle is written by the test (a small ONNX model of two input groups and
two outputs, its ``preprocess.json`` and Triton directory); the server runs as
``mlaas4hep serve`` in a subprocess on free loopback ports, is waited for with
a bounded wait and is stopped by the fixture whatever the tests do. Its answers
are compared with ONNX Runtime run directly on ``model.onnx``; each malformed
request must be answered with 400 and a message naming the input at fault.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from servers import free_port, unavailable

from mlaas4hep.deploy.serve import Bundle, open_session, serve
from mlaas4hep.errors import FileAccessError, ParameterError

ROOT = Path(__file__).resolve().parents[2]
NAME = "tiny"
GROUPS = {"event": (["MET_pt", "nJet", "PV_npvs"], 1), "Jet": (["Jet_pt", "Jet_eta"], 4)}
OUTPUTS = ["probabilities", "logits"]
READY_TIMEOUT = 90.0  # seconds for the server to start (a cold start imports MLServer, FastAPI, gRPC)
TIMEOUT = 10.0  # seconds for any one request


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        if module == "mlserver" and sys.version_info >= (3, 13):  # the test extra leaves it out there
            pytest.skip("MLServer 1.7 installs on Python 3.9 to 3.12 only")
        unavailable(f"{module} is not installed: pip install 'mlaas4hep[serve]' onnx")


def write_bundle(directory: Path) -> Path:
    """A bundle of a small model: ``event`` (3 x 1) and ``Jet`` (2 x 4) to logits and their softmax."""
    onnx = _require("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Flatten", ["event"], ["event_flat"], axis=1),
        helper.make_node("Flatten", ["Jet"], ["Jet_flat"], axis=1),
        helper.make_node("Concat", ["event_flat", "Jet_flat"], ["x"], axis=1),
        helper.make_node("MatMul", ["x", "W"], ["xW"]),
        helper.make_node("Add", ["xW", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    weights = [
        numpy_helper.from_array(rng.normal(size=(11, 2)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.normal(size=2).astype(np.float32), "b"),
    ]
    inputs = [helper.make_tensor_value_info(g, TensorProto.FLOAT, ["batch", len(v), n]) for g, (v, n) in GROUPS.items()]
    outputs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["batch", 2]) for o in OUTPUTS]
    graph = helper.make_graph(nodes, NAME, inputs, outputs, weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    directory.mkdir(parents=True)
    onnx.save(model, directory / "model.onnx")
    preprocess: dict[str, Any] = {"input_names": list(GROUPS), "output_names": OUTPUTS}
    for group, (var_names, var_length) in GROUPS.items():
        preprocess[group] = {"var_names": var_names, "var_length": var_length, "var_infos": {}}
    (directory / "preprocess.json").write_text(json.dumps(preprocess))
    (directory / "triton" / NAME / "1").mkdir(parents=True)
    (directory / "triton" / NAME / "1" / "model.onnx").write_bytes((directory / "model.onnx").read_bytes())
    (directory / "triton" / NAME / "config.pbtxt").write_text(f'name: "{NAME}"\nplatform: "onnxruntime_onnx"\n')
    return directory


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bundle(tmp_path_factory.mktemp("serve") / "bundle")


def _http(port: int, method: str, path: str, body: Any = None, timeout: float = TIMEOUT) -> tuple[int, Any]:
    """One request: its status and its JSON answer (``body`` bytes as they are, anything else as JSON)."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    url = f"http://127.0.0.1:{port}{path}"
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


class Served:
    """``mlaas4hep serve`` in a subprocess, its HTTP and gRPC ports, and its log."""

    def __init__(self, bundle: Path, log: Path) -> None:
        self.port, self.grpc_port, self.log = free_port(), free_port(), log
        while self.grpc_port == self.port:
            self.grpc_port = free_port()
        command = [sys.executable, "-m", "mlaas4hep.workflow.cli", "serve", str(bundle), "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--grpc-port", str(self.grpc_port)]
        with log.open("wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"mlaas4hep serve exited early:\n{self.tail()}"
            try:
                if _http(self.port, "GET", f"/v2/models/{NAME}/ready", timeout=2.0)[0] == 200:
                    return
            except OSError:  # not listening yet
                pass
            time.sleep(0.2)
        pytest.fail(f"mlaas4hep serve not ready within {READY_TIMEOUT:.0f} s:\n{self.tail()}")

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it has not exited within 15 s: its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        return int(self.process.returncode)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[[Path], Served]]:
    """Starts servers that are stopped after the test, passed or failed."""
    started: list[Served] = []

    def _start(bundle: Path) -> Served:
        _require("mlserver")
        started.append(Served(bundle, tmp_path / f"serve-{len(started)}.log"))
        started[-1].wait_ready()
        return started[-1]

    yield _start
    for served in started:
        served.stop()


@pytest.fixture(scope="module")
def server(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One server for the module's requests, stopped after its last test, passed or failed."""
    _require("mlserver")
    served = Served(bundle, tmp_path_factory.mktemp("server") / "serve.log")
    try:
        served.wait_ready()
        yield served
    finally:
        served.stop()


def _events(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {g: rng.normal(size=(n, len(v), length)).astype(np.float32) for g, (v, length) in GROUPS.items()}


def _request(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": g, "shape": list(a.shape), "datatype": "FP32", "data": a.ravel().tolist()}
            for g, a in arrays.items()
        ]
    }


# -- the bundle, read without a server --------------------------------------------------------------


def test_the_bundle_is_read_from_preprocess_json_and_its_triton_directory(bundle: Path) -> None:
    described = Bundle.load(bundle)
    assert described.name == NAME
    assert described.input_names == ("event", "Jet")
    assert [g.shape for g in described.inputs] == [(3, 1), (2, 4)]
    assert described.output_names == tuple(OUTPUTS)


@pytest.mark.parametrize(
    ("change", "error", "words"),
    [
        (lambda d: (d / "model.onnx").unlink(), FileAccessError, "has no model.onnx"),
        (lambda d: (d / "preprocess.json").unlink(), FileAccessError, "preprocess.json"),
        (lambda d: (d / "triton" / NAME / "config.pbtxt").unlink(), FileAccessError, "triton/<name>/config.pbtxt"),
        (lambda d: _edit(d, input_names=[]), ParameterError, "'input_names' must be a non-empty list"),
        (lambda d: _edit(d, output_names=None), ParameterError, "'output_names'"),
        (lambda d: _edit(d, input_names=["event", "Muon"]), ParameterError, "input 'Muon' of 'input_names' has no"),
        (
            lambda d: _edit(d, Jet={"var_names": ["Jet_pt"], "var_length": 0}),
            ParameterError,
            "input 'Jet': 'var_length'",
        ),
        (lambda d: _edit(d, Jet={"var_names": "Jet_pt", "var_length": 4}), ParameterError, "input 'Jet': 'var_names'"),
    ],
)
def test_a_bundle_that_cannot_be_served_is_refused_naming_what_is_wrong(
    bundle: Path, tmp_path: Path, change: Callable[[Path], None], error: type[Exception], words: str
) -> None:
    copy = write_bundle(tmp_path / "copy")
    change(copy)
    with pytest.raises(error, match=re.escape(words)):
        Bundle.load(copy)


def _edit(directory: Path, **entries: Any) -> None:
    path = directory / "preprocess.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **entries}))


def test_a_model_that_is_not_what_preprocess_json_says_is_refused(tmp_path: Path) -> None:
    _require("onnxruntime")
    copy = write_bundle(tmp_path / "copy")
    _edit(copy, Jet={"var_names": ["Jet_pt", "Jet_eta"], "var_length": 5})
    with pytest.raises(ParameterError, match=r"model.onnx's input 'Jet' is tensor\(float\)"):
        open_session(Bundle.load(copy))


@pytest.mark.parametrize(
    ("ports", "words"),
    [
        ((0, None), "port must be a TCP port (an integer from 1 to 65535), got 0"),
        ((70_000, None), "port must be a TCP port"),
        ((65_535, None), "grpc_port must be a TCP port (an integer from 1 to 65535), got 65536"),
        (("free", "same"), "grpc_port must differ from port"),
        (("taken", None), "cannot listen on 127.0.0.1:"),
        (("free", "taken"), "grpc_port="),
    ],
)
def test_the_ports_are_checked_before_a_server_starts(bundle: Path, ports: tuple[Any, Any], words: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        named = {"free": free_port(), "taken": taken.getsockname()[1], None: None}
        port = named.get(ports[0], ports[0])
        grpc_port = port if ports[1] == "same" else named[ports[1]]
        with pytest.raises(ParameterError, match=re.escape(words)):
            serve(bundle, port=port, grpc_port=grpc_port)


def test_the_command_says_which_extra_to_install(bundle: Path) -> None:
    code = "import sys; sys.modules['mlserver'] = None; from mlaas4hep.workflow.cli import main; main(sys.argv[1:])"
    port = str(free_port())
    command = [sys.executable, "-c", code, "serve", str(bundle), "--port", port, "--grpc-port", str(free_port())]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "pip install 'mlaas4hep[serve]'" in run.stderr


# -- the server ---------------------------------------------------------------------------------


def test_health_and_the_models_metadata(server: Served) -> None:
    assert _http(server.port, "GET", "/v2/health/live")[0] == 200
    assert _http(server.port, "GET", "/v2/health/ready")[0] == 200
    status, metadata = _http(server.port, "GET", f"/v2/models/{NAME}")
    assert status == 200
    assert [(i["name"], i["datatype"], i["shape"]) for i in metadata["inputs"]] == [
        ("event", "FP32", [-1, 3, 1]),
        ("Jet", "FP32", [-1, 2, 4]),
    ]
    assert [o["name"] for o in metadata["outputs"]] == OUTPUTS


def test_the_scores_are_onnx_runtimes(server: Served, bundle: Path) -> None:
    onnxruntime = _require("onnxruntime")
    arrays = _events(100)
    session = onnxruntime.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    expected = dict(zip(OUTPUTS, session.run(OUTPUTS, arrays), strict=True))
    status, answer = _http(server.port, "POST", f"/v2/models/{NAME}/infer", _request(arrays))
    assert status == 200, answer
    assert [o["name"] for o in answer["outputs"]] == OUTPUTS
    for output in answer["outputs"]:
        assert output["shape"] == [100, 2] and output["datatype"] == "FP32"
        got = np.asarray(output["data"], np.float32).reshape(output["shape"])
        np.testing.assert_allclose(got, expected[output["name"]], rtol=0, atol=1e-5)
    nested = {"inputs": [{**t, "data": arrays[t["name"]].tolist()} for t in _request(arrays)["inputs"]]}
    nested["outputs"] = [{"name": "logits"}]  # data nested as the shape, one output asked for
    status, answer = _http(server.port, "POST", f"/v2/models/{NAME}/infer", nested)
    assert status == 200, answer
    assert [o["name"] for o in answer["outputs"]] == ["logits"]
    np.testing.assert_allclose(np.reshape(answer["outputs"][0]["data"], (100, 2)), expected["logits"], atol=1e-5)


def _case(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    request = _request(_events(2))
    change(request)
    return request


def _set(tensor: int, **fields: Any) -> Callable[[dict[str, Any]], None]:
    return lambda request: request["inputs"][tensor].update(fields)


MALFORMED = {
    "unknown input": (lambda r: r["inputs"].append({**r["inputs"][0], "name": "Muon"}), "Muon", "unknown input"),
    "missing input": (lambda r: r["inputs"].pop(0), "event", "is missing"),
    "input twice": (lambda r: r["inputs"].append(r["inputs"][1]), "Jet", "given 2 times"),
    "wrong shape": (_set(1, shape=[2, 4, 2]), "Jet", "must have the shape [batch, 2, 4] with 1 <= batch <= 2147483647"),
    "wrong rank": (_set(1, shape=[2, 8]), "Jet", "must have the shape"),
    "no event": (_set(0, shape=[0, 3, 1], data=[]), "event", "must have the shape"),
    "INT64": (_set(0, datatype="INT64"), "event", "must be FP32"),
    "FP64": (_set(0, datatype="FP64"), "event", "must be FP32"),
    "strings": (_set(0, data=["1.0"] * 6), "event", "data must be numbers (FP32), got strings"),
    "booleans": (_set(0, data=[True] * 6), "event", "got booleans"),
    "uneven nesting": (_set(0, data=[[1.0], [2.0, 3.0], 4.0, 5.0, 6.0]), "event", "data must be numbers"),
    # (2**64 + 5) // 3 events of 3 numbers: 5 numbers modulo 2**64, the data's count
    "shape beyond int64": (_set(0, shape=[(2**64 + 5) // 3, 3, 1], data=[0.5] * 5), "event", "with 1 <= batch <="),
    "too few numbers": (_set(0, data=[1.0] * 5), "event", "holds 6 numbers, the data 5"),
    "batches differ": (_set(1, shape=[3, 2, 4], data=[0.5] * 24), "Jet", "holds 3 events, input 'event' 2"),
    "beyond float32": (_set(1, data=[0.5] * 9 + [1e39] + [0.5] * 6), "Jet", "variable 'Jet_pt', position 1"),
    "infinity": (_set(0, data=[0.5] * 4 + [-1e300, 0.5]), "event", "event 1, variable 'nJet'"),
    "unknown output": (lambda r: r.update(outputs=[{"name": "score"}]), "score", "unknown output"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_request_is_answered_400_naming_the_input(server: Served, case: str) -> None:
    change, name, words = MALFORMED[case]
    status, answer = _http(server.port, "POST", f"/v2/models/{NAME}/infer", _case(change))
    assert status == 400, answer
    assert f"'{name}'" in answer["error"] and words in answer["error"], answer["error"]


def test_a_shape_whose_size_overflows_int64_is_refused_naming_the_input() -> None:
    """Sizes are Python's integers: [(2**64 + 5) // 3, 3, 1] does not hold 5 numbers, though int64 says so."""
    _require("mlserver")
    from mlaas4hep.deploy.runtime import check_tensor
    from mlaas4hep.deploy.serve import BundleInput

    group = BundleInput("event", ("MET_pt", "nJet", "PV_npvs"), 1)
    assert int(np.prod([(2**64 + 5) // 3, 3, 1])) == 5  # what numpy makes of it
    for batch in [(2**64 + 5) // 3, 2**31]:
        with pytest.raises(ParameterError, match=r"input 'event' must have the shape \[batch, 3, 1\] with 1 <= batch"):
            check_tensor(group, "FP32", [batch, 3, 1], [0.5] * 5)
    with pytest.raises(ParameterError, match=r"input 'event' must have the shape"):
        check_tensor(group, "FP32", [True, 3, 1], [0.5] * 3)
    assert check_tensor(group, "FP32", [np.int64(1), 3, 1], [0.5] * 3).shape == (1, 3, 1)


def test_a_nan_is_answered_invalid_argument_naming_the_input_over_grpc(server: Served) -> None:
    grpc = _require("grpc")
    from mlserver.grpc import dataplane_pb2, dataplane_pb2_grpc

    def tensor(name: str, array: np.ndarray) -> Any:
        contents = dataplane_pb2.InferTensorContents(fp32_contents=array.ravel().tolist())
        return dataplane_pb2.ModelInferRequest.InferInputTensor(
            name=name, datatype="FP32", shape=list(array.shape), contents=contents
        )

    arrays = _events(2)
    arrays["Jet"][1, 1, 3] = math.nan
    request = dataplane_pb2.ModelInferRequest(model_name=NAME, inputs=[tensor(g, a) for g, a in arrays.items()])
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = dataplane_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request, timeout=TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'Jet' holds 1 NaN or infinite value (the first at event 1, variable 'Jet_eta', position 3)" in str(
        caught.value.details()
    )


def test_a_nan_written_into_json_is_refused_as_not_json(server: Served) -> None:
    """JSON has no NaN: ``NaN`` (as Python's json module writes it) is refused by MLServer's parser with 422."""
    body = json.dumps(_case(_set(0, data=[math.nan] + [0.5] * 5))).encode()
    assert b"NaN" in body
    status, answer = _http(server.port, "POST", f"/v2/models/{NAME}/infer", body)
    assert status == 422, answer
    assert answer["detail"][0]["msg"] == "JSON decode error"


def test_sigterm_stops_the_server_and_frees_its_ports(bundle: Path, start: Callable[[Path], Served]) -> None:
    served = start(bundle)
    assert served.stop() == 0, served.tail()
    with pytest.raises(OSError):
        _http(served.port, "GET", "/v2/health/live", timeout=2.0)


def test_the_load_tests_server_is_stopped_when_interrupted_while_it_starts(
    bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while benchmarks/serve.py waits for the server to be ready (here: at its first request) stops it."""
    _require("mlserver")
    spec = importlib.util.spec_from_file_location("serve_benchmark", ROOT / "benchmarks" / "serve.py")
    assert spec is not None and spec.loader is not None
    benchmark = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "serve_benchmark", benchmark)
    spec.loader.exec_module(benchmark)

    def interrupted(*args: Any, **kwargs: Any) -> tuple[int, bytes]:
        raise KeyboardInterrupt

    monkeypatch.setattr(benchmark, "request", interrupted)
    server = benchmark.Server(bundle, tmp_path / "serve.log")
    try:
        with pytest.raises(KeyboardInterrupt):
            server.__enter__()
        assert server.process is not None
        assert server.process.poll() is not None, "the server outlived the interrupted start"
    finally:
        if server.process is not None and server.process.poll() is None:
            server.process.kill()
            server.process.wait(timeout=15)


def test_the_load_test_runs_and_reports_every_level(bundle: Path) -> None:
    _require("mlserver")
    command = [sys.executable, str(ROOT / "benchmarks" / "serve.py"), "--bundle", str(bundle), "--quick"]
    command += ["--clients", "1", "4", "--requests", "20", "--seconds", "1", "--events", "10"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False, env=dict(os.environ))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "outputs agree with ONNX Runtime on model.onnx: True" in run.stdout
    rows = [line.split("|")[1:-1] for line in run.stdout.splitlines() if line.startswith(f"| {NAME} |")]
    assert [int(row[2]) for row in rows] == [1, 4], run.stdout
    assert all(int(row[3]) > 0 and float(row[4]) > 0 and int(row[8]) == 0 for row in rows), run.stdout
    assert "400 req/s for 100 concurrent clients" in run.stdout
