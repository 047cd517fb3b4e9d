"""Deploying a trained model: the bundle ``mlaas4hep export`` writes, and ``mlaas4hep serve``, which serves it.

:func:`export` writes a model and its preprocessing as a bundle: ``model.onnx``,
``preprocess.json`` in weaver-core's form, a Triton model repository and a
README. The modules of the export: :mod:`.layout` (the input groups and each
variable's numbers), :mod:`.aliases` (which aliases a consumer can compute, and their C++),
:mod:`.graph` (the ONNX graph, checked in ONNX Runtime), :mod:`.bundle` (Triton's
config, the README, the atomic write) and :mod:`.exporter`. Importing this
package imports neither Keras nor ONNX.
"""

from .exporter import export

__all__: list[str] = ["export"]
