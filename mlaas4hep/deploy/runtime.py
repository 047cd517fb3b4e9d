"""The server's side of ``mlaas4hep serve``: each request checked against the bundle, then run by ONNX Runtime.

:func:`check_inputs` turns the tensors of an Open Inference Protocol request
into the feeds of ``model.onnx``, or raises
:class:`~mlaas4hep.errors.ParameterError` naming the input at fault: an input
the model does not take, one it takes and did not get, or one given twice; a
datatype other than ``FP32``; a shape other than ``[batch, len(var_names),
var_length]``, or batches of different sizes; data that are not numbers or do
not fill the shape; a NaN or an infinity (also a number beyond float32's range).
:class:`BundleRuntime` is the MLServer runtime that serves a bundle: it answers
such a request with HTTP 400 (gRPC ``INVALID_ARGUMENT``) and that message, and
any other with the outputs ONNX Runtime gives.

This module imports MLServer and ONNX Runtime (``pip install 'mlaas4hep[serve]'``);
MLServer imports it when :func:`~mlaas4hep.deploy.serve.serve` starts a server.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ParameterError
from .serve import INSTALL_HINT, Bundle, BundleInput, open_session

try:
    from mlserver import MLModel
    from mlserver.codecs import NumpyCodec
    from mlserver.errors import InferenceError
    from mlserver.types import InferenceRequest, InferenceResponse, MetadataTensor
except ModuleNotFoundError as err:  # the one place the missing extra is explained
    msg = f"mlaas4hep.deploy.runtime needs MLServer ({err}): {INSTALL_HINT}"
    raise ModuleNotFoundError(msg, name=err.name) from err

__all__ = ["BundleRuntime", "check_inputs", "check_tensor"]

_NUMBERS = "fiu"  # numpy's kinds of real numbers: no bool, no string, no object
_MAX_BATCH = 2**31 - 1  # events in one request: far beyond any that fits in memory, far below int64's range
_KINDS = {"b": "booleans", "U": "strings", "S": "bytes", "O": "mixed values", "c": "complex numbers"}


def _is_shape(shape: Sequence[Any]) -> bool:
    """Three integers (not booleans)."""
    return len(shape) == 3 and all(isinstance(d, int | np.integer) and not isinstance(d, bool) for d in shape)


def _check_names(bundle: Bundle, names: Sequence[str]) -> None:
    """Every input of ``bundle`` given once, and nothing else."""
    takes = list(bundle.input_names)
    for name in names:
        if name not in takes:
            msg = f"unknown input {name!r}: model {bundle.name!r} takes the inputs {takes}"
            raise ParameterError(msg)
        if names.count(name) > 1:
            msg = f"input {name!r} is given {names.count(name)} times"
            raise ParameterError(msg)
    missing = [name for name in takes if name not in names]
    if missing:
        msg = f"input {missing[0]!r} is missing: model {bundle.name!r} takes the inputs {takes}"
        raise ParameterError(msg)


def check_tensor(group: BundleInput, datatype: str, shape: Sequence[int], data: Any) -> np.ndarray:
    """The tensor of input ``group`` in a request, as float32 of its shape, if it fits the model.

    Parameters
    ----------
    group : BundleInput
        The input, as ``preprocess.json`` describes it.
    datatype : str
        The request's datatype of the input (the protocol's ``"FP32"``, ``"INT64"``, ...).
    shape : sequence of int
        The request's shape of the input: ``[batch, len(var_names), var_length]``.
    data : list
        The request's numbers, flat in row-major order or nested.

    Returns
    -------
    numpy.ndarray
        float32, of shape ``shape``.

    Raises
    ------
    ParameterError
        Naming the input, when the datatype is not ``FP32``, the shape is not
        the group's (or holds no event, or more than 2**31 - 1), the data are not numbers or do not
        hold ``prod(shape)`` of them, or one is NaN or infinite in float32; for
        a non-finite value the message says which event and variable hold it.

    Examples
    --------
    >>> group = BundleInput("event", ("MET_pt", "nJet"), 1)
    >>> check_tensor(group, "FP32", [1, 2, 1], [[[35.5], [3.0]]]).shape
    (1, 2, 1)
    >>> check_tensor(group, "FP32", [1, 2, 1], [1e39, 3.0])
    Traceback (most recent call last):
    ...
    mlaas4hep.errors.ParameterError: input 'event' holds 1 NaN or infinite value (the first at event 0, variable 'MET_pt', position 0); replace it before sending, as preprocess.json's replace_inf_value says
    """  # noqa: E501
    name = group.name
    if datatype != "FP32":
        msg = f"input {name!r} must be FP32 (float32), got {datatype}"
        raise ParameterError(msg)
    expected = [len(group.var_names), group.var_length]
    if not _is_shape(shape) or list(shape[1:]) != expected or not 1 <= shape[0] <= _MAX_BATCH:
        msg = (
            f"input {name!r} must have the shape [batch, {expected[0]}, {expected[1]}] with 1 <= batch <= "
            f"{_MAX_BATCH}, got {list(shape)}"
        )
        raise ParameterError(msg)
    try:
        values = np.asarray(data)
    except ValueError as err:  # nested lists of uneven lengths
        msg = f"input {name!r}: data must be numbers, nested evenly or flat ({err})"
        raise ParameterError(msg) from err
    if values.dtype.kind not in _NUMBERS:
        first = values.flat[0] if values.size else None
        example = first.item() if isinstance(first, np.generic) else first
        got = _KINDS.get(values.dtype.kind, "other values")
        msg = f"input {name!r}: data must be numbers (FP32), got {got} such as {example!r}"
        raise ParameterError(msg)
    size = math.prod(int(d) for d in shape)  # Python's integers: np.prod wraps around beyond int64
    if values.size != size:
        msg = f"input {name!r}: the shape {list(shape)} holds {size} numbers, the data {values.size}"
        raise ParameterError(msg)
    try:
        with np.errstate(over="ignore"):  # beyond float32's range is inf, refused below
            tensor = values.astype(np.float32).reshape(shape)
    except ValueError as err:  # the checks above leave none; a request is never answered 500
        msg = f"input {name!r}: data of shape {values.shape} cannot take the shape {list(shape)} ({err})"
        raise ParameterError(msg) from err
    bad = ~np.isfinite(tensor)
    if bad.any():
        event, var, position = (int(i[0]) for i in np.nonzero(bad))
        count = int(bad.sum())
        values_, them = ("values", "them") if count > 1 else ("value", "it")
        msg = (
            f"input {name!r} holds {count} NaN or infinite {values_} (the first at event {event}, variable "
            f"{group.var_names[var]!r}, position {position}); replace {them} before sending, as preprocess.json's "
            "replace_inf_value says"
        )
        raise ParameterError(msg)
    return tensor


def check_inputs(bundle: Bundle, tensors: Sequence[tuple[str, str, Sequence[int], Any]]) -> dict[str, np.ndarray]:
    """The feeds of ``bundle``'s model from a request's ``(name, datatype, shape, data)`` tensors.

    Raises
    ------
    ParameterError
        Naming the input: unknown to the model, missing, given twice, or one
        that :func:`check_tensor` refuses; or the inputs' batches differ.
    """
    _check_names(bundle, [name for name, _, _, _ in tensors])
    groups = {group.name: group for group in bundle.inputs}
    feeds: dict[str, np.ndarray] = {}
    for name, datatype, shape, data in tensors:
        feeds[name] = check_tensor(groups[name], datatype, shape, data)
        first = next(iter(feeds))
        if len(feeds[name]) != len(feeds[first]):
            msg = (
                f"input {name!r} holds {len(feeds[name])} events, input {first!r} {len(feeds[first])}: "
                "every input must hold the same events"
            )
            raise ParameterError(msg)
    return feeds


def _wanted(bundle: Bundle, payload: InferenceRequest) -> list[str]:
    """The outputs the request asks for (all of ``output_names`` when it names none)."""
    if not payload.outputs:
        return list(bundle.output_names)
    wanted = [output.name for output in payload.outputs]
    for name in wanted:
        if name not in bundle.output_names:
            msg = f"unknown output {name!r}: model {bundle.name!r} gives the outputs {list(bundle.output_names)}"
            raise ParameterError(msg)
    return wanted


class BundleRuntime(MLModel):  # type: ignore[misc]  # MLServer ships no type information
    """An MLServer runtime serving a bundle of ``mlaas4hep export``: its ``model.onnx`` run by ONNX Runtime.

    MLServer makes it from a model's settings whose ``parameters.uri`` is the
    bundle's directory (:func:`~mlaas4hep.deploy.serve.serve` writes them). The
    model's metadata (``GET /v2/models/<name>``) lists its inputs, FP32 of
    shape ``[-1, len(var_names), var_length]``, and its outputs.
    """

    async def load(self) -> bool:
        """Read the bundle and open its model (checked against ``preprocess.json``)."""
        self._bundle = Bundle.load(Path(self.settings.parameters.uri))
        self._session = open_session(self._bundle)
        self.inputs = [MetadataTensor(name=g.name, datatype="FP32", shape=[-1, *g.shape]) for g in self._bundle.inputs]
        self.outputs = [
            MetadataTensor(name=o.name, datatype="FP32", shape=[d if isinstance(d, int) else -1 for d in o.shape])
            for o in self._session.get_outputs()
            if o.name in self._bundle.output_names
        ]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        """The model's outputs for ``payload``; a request that does not fit it raises MLServer's 400 error."""
        try:
            outputs = await asyncio.to_thread(self._infer, payload)
        except ParameterError as err:
            raise InferenceError(str(err)) from err
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[NumpyCodec.encode_output(name, array) for name, array in outputs.items()],
        )

    def _infer(self, payload: InferenceRequest) -> dict[str, np.ndarray]:
        """The checks and the model's run, on a thread of its own (ONNX Runtime releases the GIL)."""
        # MLServer gives the datatype as a string or as its enum, by transport
        tensors = [(t.name, getattr(t.datatype, "value", t.datatype), t.shape, t.data.root) for t in payload.inputs]
        feeds = check_inputs(self._bundle, tensors)
        wanted = _wanted(self._bundle, payload)
        return dict(zip(wanted, self._session.run(wanted, feeds), strict=True))
