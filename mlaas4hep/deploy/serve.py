"""A bundle served over the Open Inference Protocol (v2): ``mlaas4hep serve BUNDLE``, on MLServer.

:func:`serve` starts `MLServer <https://github.com/SeldonIO/MLServer>`_, an
existing inference server that speaks the protocol over HTTP (and gRPC), with
the bundle's ``model.onnx`` run by ONNX Runtime
(:class:`~mlaas4hep.deploy.runtime.BundleRuntime`). The model is served under
the name of the bundle's Triton directory (``BUNDLE/triton/<name>/``), so that
the same client talks to Triton and to ``mlaas4hep serve``:

* ``GET /v2/health/ready``, ``GET /v2/models/<name>/ready``,
  ``GET /v2/models/<name>`` (the inputs, their shapes and datatypes);
* ``POST /v2/models/<name>/infer`` with one FP32 tensor per input group of
  ``preprocess.json``, of shape ``[batch, len(var_names), var_length]``; the
  answer holds the model's outputs (``output_names``), as ONNX Runtime gives
  them on ``model.onnx``. A request that does not fit the model (an unknown or
  missing input, another datatype or shape, a NaN or an infinity) is answered
  with HTTP 400 and a message naming the input.

:class:`Bundle` reads what the server needs from the bundle, with no server
installed; :func:`open_session` opens ``model.onnx`` and checks it against
``preprocess.json``. Both the server and ONNX Runtime come with
``pip install 'mlaas4hep[serve]'``; nothing here imports them until a bundle is
served.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._checks import check_text, is_int
from .._json import read_json
from ..errors import FileAccessError, ParameterError

__all__ = ["INSTALL_HINT", "Bundle", "BundleInput", "open_session", "serve"]

INSTALL_HINT = "pip install 'mlaas4hep[serve]'"
"""What to install to serve a bundle: MLServer and ONNX Runtime."""

RUNTIME = "mlaas4hep.deploy.runtime.BundleRuntime"
"""The MLServer runtime that serves a bundle, by the path MLServer imports it from."""


@dataclass(frozen=True)
class BundleInput:
    """One input group of ``preprocess.json``: a float32 tensor ``(batch, len(var_names), var_length)``."""

    name: str
    var_names: tuple[str, ...]
    var_length: int

    @property
    def shape(self) -> tuple[int, int]:
        """The tensor's shape without its batch axis: ``(len(var_names), var_length)``."""
        return (len(self.var_names), self.var_length)


@dataclass(frozen=True)
class Bundle:
    """What a server needs of a bundle written by ``mlaas4hep export``.

    Parameters
    ----------
    directory : Path
        The bundle: ``model.onnx``, ``preprocess.json`` and ``triton/<name>/``.
    name : str
        The model's name: that of its Triton directory, and of its URL
        (``/v2/models/<name>/infer``).
    inputs : tuple of BundleInput
        ``preprocess.json``'s ``input_names``, in order, each with its
        ``var_names`` and ``var_length``.
    output_names : tuple of str
        ``preprocess.json``'s ``output_names``: the model's outputs.
    """

    directory: Path
    name: str
    inputs: tuple[BundleInput, ...]
    output_names: tuple[str, ...]

    @property
    def model_path(self) -> Path:
        """``BUNDLE/model.onnx``."""
        return self.directory / "model.onnx"

    @property
    def input_names(self) -> tuple[str, ...]:
        """The inputs' names, in ``preprocess.json``'s order."""
        return tuple(group.name for group in self.inputs)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Bundle:
        """Read the bundle in ``directory``, checking what a server relies on.

        Raises
        ------
        FileAccessError
            ``directory``, its ``model.onnx``, ``preprocess.json`` or its one
            Triton model directory ``triton/<name>/`` is missing.
        ParameterError
            ``preprocess.json`` lacks ``input_names``, ``output_names`` or an
            input group's ``var_names`` or ``var_length``, or one is not what
            it should be; the message names the file and the key.
        """
        path = Path(directory)
        if not path.is_dir():
            msg = f"BUNDLE {str(path)!r} is not a directory (mlaas4hep export --output-dir writes one)"
            raise FileAccessError(msg)
        if not (path / "model.onnx").is_file():
            msg = f"bundle {str(path)!r} has no model.onnx"
            raise FileAccessError(msg)
        config = read_json(path / "preprocess.json", "bundle's preprocess.json", option="BUNDLE")
        where = str(path / "preprocess.json")
        if not isinstance(config, Mapping):
            msg = f"{where}: must hold a JSON object, got {type(config).__name__}"
            raise ParameterError(msg)
        input_names = _names(config, "input_names", where)
        inputs = tuple(_group(config, name, where) for name in input_names)
        return cls(path, _triton_name(path), inputs, _names(config, "output_names", where))


def _names(config: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    """``config[key]``: a non-empty list of distinct non-empty strings."""
    value = config.get(key)
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        if len(set(value)) == len(value):
            return tuple(value)
    msg = f"{where}: {key!r} must be a non-empty list of distinct names, got {value!r}"
    raise ParameterError(msg)


def _group(config: Mapping[str, Any], name: str, where: str) -> BundleInput:
    """The input group ``name`` of ``preprocess.json``: its ``var_names`` and ``var_length``."""
    entry = config.get(name)
    if not isinstance(entry, Mapping):
        msg = f"{where}: input {name!r} of 'input_names' has no entry (an object with var_names and var_length)"
        raise ParameterError(msg)
    var_names = _names(entry, "var_names", f"{where}: input {name!r}")
    var_length = entry.get("var_length")
    if not is_int(var_length) or int(var_length) < 1:
        msg = f"{where}: input {name!r}: 'var_length' must be a positive integer, got {var_length!r}"
        raise ParameterError(msg)
    return BundleInput(name, var_names, int(var_length))


def _triton_name(path: Path) -> str:
    """The name of the bundle's one Triton model: the directory ``triton/<name>/`` that holds a config.pbtxt."""
    triton = path / "triton"
    found = sorted(d.name for d in triton.glob("*") if (d / "config.pbtxt").is_file()) if triton.is_dir() else []
    if len(found) != 1:
        msg = (
            f"bundle {str(path)!r}: the model's name is that of its Triton directory, triton/<name>/config.pbtxt; "
            f"found {found or 'none'}"
        )
        raise FileAccessError(msg)
    return found[0]


def _require(module: str) -> Any:
    """Import ``module``, or say what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        msg = f"serving a bundle needs MLServer and ONNX Runtime ({err}): {INSTALL_HINT}"
        raise ParameterError(msg) from err


def open_session(bundle: Bundle) -> Any:
    """An ONNX Runtime session of ``bundle.model_path``, checked against ``preprocess.json``.

    Returns
    -------
    onnxruntime.InferenceSession
        On the CPU.

    Raises
    ------
    ParameterError
        ONNX Runtime is not installed (the message says what to install); or
        the model's inputs are not ``preprocess.json``'s ``input_names``, one
        is not float32 of shape ``(batch, len(var_names), var_length)``, or an
        output of ``output_names`` is not the model's; the message names it.
    """
    onnxruntime = _require("onnxruntime")
    try:
        session = onnxruntime.InferenceSession(str(bundle.model_path), providers=["CPUExecutionProvider"])
    except Exception as err:  # ONNX Runtime raises its own exception types, all kinds of them
        msg = f"{bundle.model_path}: ONNX Runtime cannot load it: {err}"
        raise ParameterError(msg) from err
    where = f"bundle {str(bundle.directory)!r}"
    inputs = {i.name: i for i in session.get_inputs()}
    if sorted(inputs) != sorted(bundle.input_names):
        msg = f"{where}: model.onnx takes the inputs {sorted(inputs)}, preprocess.json names {list(bundle.input_names)}"
        raise ParameterError(msg)
    for group in bundle.inputs:
        tensor = inputs[group.name]
        dims = tuple(tensor.shape[1:])
        if tensor.type != "tensor(float)" or len(tensor.shape) != 3 or dims != group.shape:
            msg = (
                f"{where}: model.onnx's input {group.name!r} is {tensor.type} {tensor.shape}, "
                f"preprocess.json says float32 [batch, {group.shape[0]}, {group.shape[1]}]"
            )
            raise ParameterError(msg)
    outputs = [o.name for o in session.get_outputs()]
    unknown = [name for name in bundle.output_names if name not in outputs]
    if unknown:
        msg = f"{where}: preprocess.json's output_names {unknown} are not outputs of model.onnx ({outputs})"
        raise ParameterError(msg)
    return session


def _check_port(value: object, name: str, host: str) -> int:
    """``value`` as a TCP port that nothing listens on at ``host`` now."""
    if not is_int(value) or not 1 <= int(value) <= 65535:
        msg = f"{name} must be a TCP port (an integer from 1 to 65535), got {value!r}"
        raise ParameterError(msg)
    port = int(value)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server: a closed port's TIME_WAIT is free
        try:
            probe.bind((host, port))
        except OSError as err:
            msg = f"{name}={port}: cannot listen on {host}:{port} ({err.strerror or err})"
            raise ParameterError(msg) from err
    return port


def serve(
    bundle: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    grpc_port: int | None = None,
    announce: Callable[[str], object] | None = None,
) -> None:
    """Serve ``bundle`` on MLServer until the process receives SIGINT or SIGTERM.

    The bundle is read and its model opened and checked first: a bundle that
    cannot be served is refused before any port is opened.

    Parameters
    ----------
    bundle : str or path
        The directory ``mlaas4hep export`` wrote.
    host : str
        Where to listen: ``"127.0.0.1"`` (default) for this machine only,
        ``"0.0.0.0"`` for every interface.
    port : int
        The HTTP port of the Open Inference Protocol (default 8080).
    grpc_port : int or None
        MLServer's gRPC port, which it always opens (default ``port + 1``).
    announce : callable or None
        Called with a few lines that say where the model is served (its URLs),
        once every check has passed, just before the server starts
        (``mlaas4hep serve`` passes ``print``).

    Raises
    ------
    FileAccessError, ParameterError
        The bundle cannot be served (see :meth:`Bundle.load` and
        :func:`open_session`), MLServer or ONNX Runtime is not installed (the
        message says ``pip install 'mlaas4hep[serve]'``), or a port is taken.

    Examples
    --------
    >>> from mlaas4hep.deploy.serve import serve
    >>> serve("bundle", port=8080)  # doctest: +SKIP
    """
    described = Bundle.load(bundle)
    host = check_text(host, "host")
    http = _check_port(port, "port", host)
    grpc = _check_port(http + 1 if grpc_port is None else grpc_port, "grpc_port", host)
    if grpc == http:
        msg = f"grpc_port must differ from port, got {grpc} for both"
        raise ParameterError(msg)
    mlserver = _require("mlserver")
    open_session(described)  # its errors before the server starts; the runtime opens its own
    if announce is not None:
        announce(_where(described, host, http, grpc))
    settings = mlserver.Settings(
        host=host,
        http_port=http,
        grpc_port=grpc,
        parallel_workers=0,  # the model in the server's process: ONNX Runtime runs on its own threads
        metrics_endpoint=None,  # no third port
        debug=False,
        model_repository_root=str(described.directory),
        load_models_at_startup=False,
    )
    model = mlserver.settings.ModelSettings(
        name=described.name,
        implementation=RUNTIME,
        parameters=mlserver.settings.ModelParameters(uri=str(described.directory.resolve())),
    )
    asyncio.run(_run(mlserver, settings, [model]))


def _where(bundle: Bundle, host: str, port: int, grpc_port: int) -> str:
    """Where ``bundle`` is served: its URLs."""
    base = f"http://{host}:{port}/v2"
    return (
        f"serving {bundle.name!r} ({bundle.model_path}) on MLServer, Open Inference Protocol v2:\n"
        f"  POST {base}/models/{bundle.name}/infer   GET {base}/models/{bundle.name} (its inputs)\n"
        f"  GET {base}/health/ready   gRPC {host}:{grpc_port}"
    )


async def _run(mlserver: Any, settings: Any, models: Sequence[Any]) -> None:
    """MLServer made inside the running loop (it installs its signal handlers there), until it stops."""
    await mlserver.MLServer(settings).start(list(models))
