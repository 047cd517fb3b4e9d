"""``export``: a trained model and its preprocessing as an ONNX bundle that runs outside Python."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ParameterError
from ..preprocessing import Preprocessing
from ..scores.friends import branch_names
from ..scores.models import MODEL_SUFFIXES, output_width, resolve_model
from .bundle import check_output_dir, readme, triton_config, write_bundle
from .graph import check_onnx, require_onnx, write_onnx
from .layout import InputPlan, plan_inputs, preprocess_json

__all__ = ["SCORE_NAME", "export"]

log = logging.getLogger(__name__)

SCORE_NAME = "score"
"""The name of the exported model's output (``score``, or ``score_0 .. score_{K-1}``), as write_scores' branches."""

_MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _model_name(name: str | None, model: Any) -> str:
    """The Triton model's name: ``name``, or the model file's stem, or ``"model"``."""
    if name is None:
        stem = Path(model).stem if isinstance(model, (str, os.PathLike)) else "model"
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", stem).lstrip(".-") or "model"
    if not isinstance(name, str) or not _MODEL_NAME.fullmatch(name):
        msg = f"name must be a model name (letters, digits, _ . -, not starting with . or -), got {name!r}"
        raise ParameterError(msg)
    return name


def _loaded_model(model: Any) -> tuple[Any, str]:
    """The Keras model, loaded if a path, and how errors name it."""
    where = repr(os.fspath(model)) if isinstance(model, (str, os.PathLike)) else "given"
    try:
        live, _ = resolve_model(model, None)
    except ParameterError:
        raise
    except (ValueError, TypeError, OSError, ImportError) as err:  # what Keras raises for a file it cannot rebuild
        msg = (
            f"the model {where} cannot be loaded by Keras ({type(err).__name__}: {err}); a custom layer loads "
            "once registered with keras.saving.register_keras_serializable"
        )
        raise ParameterError(msg) from err
    return live, where


@dataclass(frozen=True)
class _Bundle:
    """What goes into a bundle: the model (named ``where`` in errors, ``source`` in the README) and its inputs."""

    model: Any
    where: str
    source: str
    plan: InputPlan
    output_names: list[str]
    preprocessing: Preprocessing
    name: str

    def fill(self, directory: Path) -> None:
        """Write the bundle's files into ``directory``."""
        graph = directory / "model.onnx"
        write_onnx(self.model, self.plan, self.output_names, graph, self.where)
        check_onnx(graph, self.model, self.plan, self.output_names, self.where)
        config = preprocess_json(self.plan, self.output_names, self.preprocessing)
        (directory / "preprocess.json").write_text(json.dumps(config, indent=2, allow_nan=False) + "\n")
        triton = directory / "triton" / self.name
        (triton / "1").mkdir(parents=True)
        (triton / "config.pbtxt").write_text(triton_config(self.name, self.plan, self.output_names))
        shutil.copyfile(graph, triton / "1" / "model.onnx")
        (directory / "README.md").write_text(readme(self.name, self.plan, self.output_names, self.source))


def export(
    model: Any,
    preprocessing: Preprocessing | str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    name: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a trained model and its preprocessing as a bundle that C++, ONNX Runtime and Triton can run.

    ``output_dir`` receives ``model.onnx``, ``preprocess.json`` (weaver-core's
    form), ``README.md`` and a Triton model repository ``triton/<name>/``
    (:mod:`mlaas4hep.deploy`). The graph takes one float32 input per group of
    ``preprocess.json``'s ``input_names``, ``(batch, len(var_names),
    var_length)``, made from raw branch values by
    ``clip((x - median) * norm_factor, lower_bound, upper_bound)`` and padded
    with ``pad``; it gives the scores that :func:`~mlaas4hep.write_scores`
    writes, one output of shape ``(batch, 1)`` per score branch (``score``, or
    ``score_0 .. score_{K-1}``). The graph is checked against the Keras model
    in ONNX Runtime before anything is written.

    Parameters
    ----------
    model : keras.Model or path of a ``.keras`` or ``.h5`` file
        The trained model (Keras' TensorFlow backend converts it, through tf2onnx).
    preprocessing : Preprocessing or path of its JSON file
        What turns events into the model's inputs, as saved at training
        (``model.preprocessing.json``); the flat or the collections layout.
    output_dir : path
        The bundle's directory: made if missing; an existing one must be
        empty, or hold a bundle and ``overwrite`` be True.
    name : str, optional
        The model's name in the Triton repository (default: the model file's
        stem, or ``"model"``).
    overwrite : bool
        Replace a bundle in ``output_dir`` (never a directory holding other files).

    Returns
    -------
    Path
        ``output_dir``.

    Raises
    ------
    ParameterError
        What cannot be exported exactly, before anything is written: the
        ``onnx`` extra missing (the message says what to install), a model
        that does not take the preprocessing's inputs, a layer tf2onnx cannot
        convert or converts otherwise, ``mask_output=True``, an alias that is
        not an element-wise formula of branches, a branch that float32
        cannot normalize to 1e-6, an existing bundle without ``overwrite``.
    FileAccessError
        An ``output_dir`` that is a file or holds other files, or cannot be written.

    Examples
    --------
    >>> from mlaas4hep import export
    >>> export("model.keras", "model.preprocessing.json", "bundle")  # doctest: +SKIP
    PosixPath('bundle')
    >>> import json
    >>> json.load(open("bundle/preprocess.json"))["input_names"]  # doctest: +SKIP
    ['event', 'Jet']
    """
    require_onnx()
    name = _model_name(name, model)
    loaded = preprocessing if isinstance(preprocessing, Preprocessing) else Preprocessing.load(preprocessing)
    plan = plan_inputs(loaded)
    target = Path(output_dir)
    check_output_dir(target, overwrite)
    if isinstance(model, (str, os.PathLike)) and Path(model).suffix not in MODEL_SUFFIXES:
        msg = f"model {os.fspath(model)!r} is not a {' or '.join(MODEL_SUFFIXES)} file"
        raise ParameterError(msg)
    live, where = _loaded_model(model)
    output_names = list(branch_names(SCORE_NAME, output_width(live, loaded)))
    source = Path(model).name if isinstance(model, (str, os.PathLike)) else "a Keras model"
    write_bundle(target, _Bundle(live, where, source, plan, output_names, loaded, name).fill, overwrite)
    log.info("exported the model %s to %s (inputs %s)", where, target, plan.input_names)
    return target
