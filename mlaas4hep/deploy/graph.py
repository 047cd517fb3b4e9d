"""The ONNX graph of an exported model: the input groups in, the Keras model inside, one output per score.

:func:`write_onnx` wraps the Keras model in one that takes the groups of an
:class:`~mlaas4hep.deploy.layout.InputPlan` (``(batch, len(var_names),
var_length)`` each), gathers their numbers into the model's own inputs
(constant indices: the numbers are moved, never changed), and splits its
``(batch, K)`` scores into ``K`` outputs of shape ``(batch, 1)`` named as the
score branches :func:`~mlaas4hep.write_scores` writes (``score``, or
``score_0 .. score_{K-1}``). Keras converts it (``model.export(format="onnx")``,
through tf2onnx on the TensorFlow backend); the graph's inputs are then put
in the plan's order, its outputs renamed, and its batch axis named ``batch``.

:func:`check_onnx` runs the written graph in ONNX Runtime on a probe batch and
compares it with the Keras model: a conversion that changes the scores is
refused, never written out.
"""

from __future__ import annotations

import importlib
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ParameterError
from .layout import InputPlan

__all__ = ["INSTALL_HINT", "OPSET", "check_onnx", "require_onnx", "write_onnx"]

OPSET = 17
"""The ONNX opset of the exported graphs (ONNX Runtime 1.11 and later run it)."""

INSTALL_HINT = "exporting to ONNX needs onnx, onnxruntime and tf2onnx: pip install 'mlaas4hep[onnx]'"

_TOLERANCE = 1e-5  # |onnx - keras| <= _TOLERANCE * (1 + |keras|) on the probe batch


def require_onnx() -> None:
    """Import onnx, onnxruntime and tf2onnx, or raise a ParameterError that says which extra to install.

    Examples
    --------
    >>> require_onnx()  # doctest: +SKIP
    Traceback (most recent call last):
    ...
    mlaas4hep.errors.ParameterError: exporting to ONNX needs onnx, onnxruntime and tf2onnx: pip install ...
    """
    for name in ("onnx", "onnxruntime", "tf2onnx"):
        try:
            importlib.import_module(name)
        except ImportError as err:
            msg = f"{INSTALL_HINT} ({name} is missing: {err})"
            raise ParameterError(msg) from err


def _wrapper(model: Any, plan: InputPlan, width: int) -> Any:
    """A Keras model taking the plan's groups and giving ``width`` outputs of shape ``(batch, 1)``."""
    import keras

    groups = {g.name: keras.Input((len(g.var_names), g.var_length), dtype="float32", name=g.name) for g in plan.groups}
    parts = [keras.ops.reshape(groups[g.name], (-1, g.size)) for g in plan.groups]
    numbers = parts[0] if len(parts) == 1 else keras.ops.concatenate(parts, axis=1)
    inputs = {name: keras.ops.take(numbers, source, axis=1) for name, source in plan.sources.items()}
    scores = model(inputs["features"] if plan.flat_input else inputs)
    if isinstance(scores, dict | list | tuple):  # one output, named (output_width has checked there is one)
        scores = next(iter(scores.values())) if isinstance(scores, dict) else scores[0]
    scores = keras.ops.reshape(scores, (-1, width))
    outputs = [keras.layers.Identity()(scores[:, k : k + 1]) for k in range(width)]
    return keras.Model(groups, outputs)


def _converted(wrapper: Any, plan: InputPlan, path: Path, where: str) -> None:
    """Keras' ONNX export of ``wrapper`` into ``path``; a failure is a ParameterError naming the model."""
    wrapper({g.name: np.zeros((1, len(g.var_names), g.var_length), np.float32) for g in plan.groups})
    try:
        with warnings.catch_warnings():  # tf2onnx's own deprecation warnings, and Keras' patch of it for numpy 2
            warnings.simplefilter("ignore")
            wrapper.export(os.fspath(path), format="onnx", verbose=False, opset_version=OPSET)
    except (ValueError, TypeError, RuntimeError, NotImplementedError, KeyError, AttributeError) as err:
        msg = f"the model {where} cannot be converted to ONNX by tf2onnx: {type(err).__name__}: {err}"
        raise ParameterError(msg) from err


def _named(path: Path, plan: InputPlan, output_names: list[str], where: str) -> None:
    """The graph in ``path`` with its inputs in the plan's order, its outputs named, its batch axis ``batch``."""
    import onnx

    model = onnx.load(os.fspath(path))
    graph = model.graph
    by_name = {i.name: i for i in graph.input}
    ordered = [by_name[name] for name in plan.input_names]
    del graph.input[:]
    graph.input.extend(ordered)
    if len(graph.output) != len(output_names):
        msg = f"the converted graph has {len(graph.output)} outputs, {len(output_names)} scores expected"
        raise ParameterError(msg)
    rename = {out.name: name for out, name in zip(graph.output, output_names, strict=True)}
    for node in graph.node:
        node.input[:] = [rename.get(n, n) for n in node.input]
        node.output[:] = [rename.get(n, n) for n in node.output]
    for value in [*graph.output, *graph.value_info]:
        value.name = rename.get(value.name, value.name)
    for value in [*graph.input, *graph.output]:
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    model.producer_name = "mlaas4hep"
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:  # tf2onnx leaves an operation it cannot convert as it was
        msg = f"the model {where} cannot be converted to ONNX by tf2onnx: {str(err).strip().splitlines()[0]}"
        raise ParameterError(msg) from err
    onnx.save(model, os.fspath(path))


def write_onnx(model: Any, plan: InputPlan, output_names: list[str], path: Path, where: str) -> None:
    """Write the ONNX graph of ``model`` taking the plan's groups, its outputs ``output_names``, to ``path``.

    ``where`` names the model in errors (its file, or "given").

    Raises
    ------
    ParameterError
        If the Keras backend is not TensorFlow, or tf2onnx cannot convert a
        layer of the model (its message names the layer or operation).

    Examples
    --------
    >>> write_onnx(model, plan_inputs(preprocessing), ["score"], Path("model.onnx"), "'model.keras'")  # doctest: +SKIP
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        msg = (
            f"export converts Keras models with tf2onnx, on the TensorFlow backend; this process runs "
            f"KERAS_BACKEND={keras.backend.backend()!r}: export from a process with KERAS_BACKEND=tensorflow"
        )
        raise ParameterError(msg)
    _converted(_wrapper(model, plan, len(output_names)), plan, path, where)
    _named(path, plan, output_names, where)


def probe_inputs(plan: InputPlan, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch of ``n`` events of the plan's groups: numbers in [0, 1), collections padded as a consumer pads them.

    Examples
    --------
    >>> feeds = probe_inputs(plan, 64)  # doctest: +SKIP
    >>> {name: t.shape for name, t in feeds.items()}  # doctest: +SKIP
    {'event': (64, 4, 1), 'Jet': (64, 3, 9)}
    """
    rng = np.random.default_rng(seed)
    feeds = {}
    for g in plan.groups:
        values = rng.random((n, len(g.var_names), g.var_length), dtype=np.float32)
        if g.mask is not None:
            present = np.arange(g.var_length) < rng.integers(0, g.var_length + 1, n)[:, None]
            for v, var in enumerate(g.var_names):
                values[:, v][~present] = g.var_infos[var].pad
            values[:, g.var_names.index(g.mask)] = present
        feeds[g.name] = values
    return feeds


def model_inputs(plan: InputPlan, feeds: dict[str, np.ndarray]) -> Any:
    """The Keras model's inputs made from the groups' tensors ``feeds``, in numpy.

    Examples
    --------
    >>> model.predict_on_batch(model_inputs(plan, probe_inputs(plan, 64)))  # doctest: +SKIP
    """
    n = len(next(iter(feeds.values())))
    numbers = np.concatenate([feeds[g.name].reshape(n, -1) for g in plan.groups], axis=1)
    inputs = {name: numbers[:, source] for name, source in plan.sources.items()}
    return inputs["features"] if plan.flat_input else inputs


def check_onnx(path: Path, model: Any, plan: InputPlan, output_names: list[str], where: str) -> None:
    """Raise a ParameterError unless ONNX Runtime on ``path`` gives the Keras model's scores on a probe batch.

    The probe (:func:`probe_inputs`) goes to the graph as the groups' tensors
    and to the Keras model as the numbers :func:`model_inputs` gathers from
    them; every score must agree to ``1e-5 * (1 + |score|)``.

    Examples
    --------
    >>> check_onnx(Path("bundle/model.onnx"), model, plan, ["score"], "'model.keras'")  # doctest: +SKIP
    """
    import onnxruntime

    feeds = probe_inputs(plan, 64)
    session = onnxruntime.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    if [i.name for i in session.get_inputs()] != plan.input_names or names != output_names:
        msg = f"the ONNX graph of the model {where} does not map the inputs {plan.input_names} to {output_names}"
        raise ParameterError(msg)
    got = np.concatenate(session.run(output_names, feeds), axis=1)
    expected = model.predict_on_batch(model_inputs(plan, feeds))
    if isinstance(expected, dict | list | tuple):
        expected = next(iter(expected.values())) if isinstance(expected, dict) else expected[0]
    expected = np.asarray(expected, dtype=np.float64).reshape(got.shape)
    error = np.abs(got - expected) - _TOLERANCE * (1 + np.abs(expected))
    if not (error <= 0).all():
        worst = float(np.max(np.abs(got - expected)))
        msg = (
            f"the ONNX graph of the model {where} gives scores that differ from Keras' by up to {worst:.3g} on a "
            "probe batch (tf2onnx converted a layer otherwise): not exported"
        )
        raise ParameterError(msg)
