"""The files of an exported bundle beside the graph: Triton's ``config.pbtxt``, the README, and the atomic write.

A bundle is a directory holding exactly :data:`BUNDLE_FILES`::

    model.onnx              the graph (mlaas4hep.deploy.graph)
    preprocess.json         weaver-core's form (mlaas4hep.deploy.layout)
    README.md               the C++ (ONNX Runtime) and Triton recipes, for this model's inputs
    triton/<name>/config.pbtxt
    triton/<name>/1/model.onnx

:func:`write_bundle` writes it into a temporary directory beside the output
directory and renames it into place once complete: a failure leaves nothing,
and an existing bundle is replaced only when asked (``overwrite``), never a
directory holding other files.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..errors import FileAccessError, ParameterError
from .layout import InputPlan

__all__ = ["BUNDLE_FILES", "check_output_dir", "cpp_program", "readme", "triton_config", "write_bundle"]

BUNDLE_FILES = ("model.onnx", "preprocess.json", "README.md", "triton")
"""What an exported bundle holds (``triton`` is a directory)."""


def _tensor(name: str, dims: str) -> str:
    return f'  {{\n    name: "{name}"\n    data_type: TYPE_FP32\n    dims: [ {dims} ]\n  }}'


def triton_config(name: str, plan: InputPlan, output_names: list[str]) -> str:
    """Triton's ``config.pbtxt`` for the ONNX Runtime backend: no batching limit, the batch axis ``-1`` in dims.

    Examples
    --------
    >>> print(triton_config("tagger", plan, ["score"]))  # doctest: +SKIP
    name: "tagger"
    backend: "onnxruntime"
    ...
    """
    tensors = [(g.name, f"-1, {len(g.var_names)}, {g.var_length}") for g in plan.groups]
    inputs = ",\n".join(_tensor(name, dims) for name, dims in tensors)
    outputs = ",\n".join(_tensor(name, "-1, 1") for name in output_names)
    return f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: 0\ninput [\n{inputs}\n]\noutput [\n{outputs}\n]\n'


_CPP = """\
#include <onnxruntime_cxx_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <iterator>
#include <vector>

// one variable's numbers, read from preprocess.json: var_infos[var]
struct VarInfo {{
  float median, norm_factor, replace_inf_value, lower_bound, upper_bound, pad;
}};

// element j of a variable of one event: the raw branch value (1 for <collection>_mask)
float input_value(float x, const VarInfo& info) {{
  if (!std::isfinite(x) || std::abs(x) > 1e32f) x = info.replace_inf_value;
  return std::clamp((x - info.median) * info.norm_factor, info.lower_bound, info.upper_bound);
}}

int main() {{
  const int64_t batch = 1;  // events to score
  const char* input_names[] = {{{inputs}}};
  const int64_t n_vars[] = {{{n_vars}}};
  const int64_t var_length[] = {{{var_length}}};
  const char* output_names[] = {{{outputs}}};
  const size_t n_inputs = std::size(input_names), n_outputs = std::size(output_names);

  Ort::Env env;
  Ort::Session session(env, "model.onnx", Ort::SessionOptions{{}});
  auto memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  std::vector<std::vector<float>> data(n_inputs);  // the inputs' numbers, alive while the session runs
  std::vector<Ort::Value> tensors;
  for (size_t g = 0; g < n_inputs; ++g) {{
    data[g].assign(batch * n_vars[g] * var_length[g], 0.0f);
    // fill data[g][(event * n_vars[g] + v) * var_length[g] + j] with input_value(element j of variable v,
    // its VarInfo), or its pad where the event's list has no element j
    const int64_t shape[3] = {{batch, n_vars[g], var_length[g]}};
    tensors.push_back(Ort::Value::CreateTensor<float>(memory, data[g].data(), data[g].size(), shape, 3));
  }}
  auto scores = session.Run(Ort::RunOptions{{nullptr}}, input_names, tensors.data(), tensors.size(),
                            output_names, n_outputs);  // each (batch, 1)
  for (size_t k = 0; k < n_outputs; ++k) {{
    std::printf("%s of event 0: %g\\n", output_names[k], scores[k].GetTensorMutableData<float>()[0]);
  }}
  return 0;
}}
"""


def cpp_program(plan: InputPlan, output_names: list[str]) -> str:
    """The README's C++: a ``main`` that feeds ONNX Runtime this model's inputs (to be filled) and prints its scores.

    Examples
    --------
    >>> print(cpp_program(plan, ["score"]))  # doctest: +SKIP
    #include <onnxruntime_cxx_api.h>
    ...
    """
    return _CPP.format(
        inputs=", ".join(f'"{g.name}"' for g in plan.groups),
        n_vars=", ".join(str(len(g.var_names)) for g in plan.groups),
        var_length=", ".join(str(g.var_length) for g in plan.groups),
        outputs=", ".join(f'"{o}"' for o in output_names),
    )


def readme(name: str, plan: InputPlan, output_names: list[str], source: str) -> str:
    """The bundle's README: what it holds, its inputs and outputs, and the C++ and Triton recipes.

    Examples
    --------
    >>> readme("tagger", plan, ["score"], "model.keras").splitlines()[0]  # doctest: +SKIP
    '# tagger: model.keras, exported by mlaas4hep'
    """
    rows = "\n".join(
        f"| `{g.name}` | `(batch, {len(g.var_names)}, {g.var_length})` | {', '.join(f'`{v}`' for v in g.var_names)} |"
        for g in plan.groups
    )
    shapes = ", ".join(
        f'{{"name": "{g.name}", "shape": [1, {len(g.var_names)}, {g.var_length}], ...}}' for g in plan.groups
    )
    return f"""# {name}: {source}, exported by mlaas4hep

- `model.onnx`: the model (ONNX opset 17, float32, dynamic batch axis `batch`);
- `preprocess.json`: how to make its inputs from raw branch values (weaver-core's form);
- `triton/`: a Triton model repository (`triton/{name}/config.pbtxt`, `triton/{name}/1/model.onnx`).

## Inputs and outputs

| input | shape | variables (`var_names`) |
| --- | --- | --- |
{rows}

Outputs: {", ".join(f"`{o}`" for o in output_names)}, each `(batch, 1)` float32: the scores that
`mlaas4hep predict` writes in the branches of the same names.

For every input group, every variable `v` and element `j < var_length`, with `info =
preprocess.json[group]["var_infos"][v]`: `x` is the raw value of branch `v` (element `j` of its list
for a collection; `1` for the variable `<collection>_mask`); a NaN or inf `x` becomes
`info.replace_inf_value`; the input is `clip((x - median) * norm_factor, lower_bound, upper_bound)`,
and `pad` where the event's list has no element `j`. Variables listed in
`preprocess.json["mlaas4hep"]["new_variables"]` are computed from the branches by their C++
expressions first (element by element, in that order; they need `<cmath>` alone, and `/` divides as
doubles).

## C++ with ONNX Runtime

```cpp
{cpp_program(plan, output_names)}```

## Triton

```bash
tritonserver --model-repository=$PWD/triton
curl -s localhost:8000/v2/models/{name}/infer -d '{{"inputs": [{shapes}]}}'
```

Each input is sent with `"datatype": "FP32"` and its `"data"` (row-major, `batch` events).
"""


def _foreign(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in BUNDLE_FILES)


def check_output_dir(output_dir: Path, overwrite: bool) -> None:
    """Raise unless ``output_dir`` can receive a bundle: new, empty, or a bundle itself with ``overwrite``.

    Raises
    ------
    FileAccessError
        If it is a file, or a directory holding something else than a bundle's files.
    ParameterError
        If it holds a bundle and ``overwrite`` is False.

    Examples
    --------
    >>> check_output_dir(Path("a-new-directory"), overwrite=False)
    """
    if not output_dir.exists():
        return
    if not output_dir.is_dir():
        msg = f"output_dir {os.fspath(output_dir)!r} is a file, not a directory"
        raise FileAccessError(msg)
    foreign = _foreign(output_dir)
    if foreign:
        msg = (
            f"output_dir {os.fspath(output_dir)!r} holds {foreign}, which an export does not write: "
            "give a new or empty directory (an export replaces a whole bundle, never other files)"
        )
        raise FileAccessError(msg)
    if any(output_dir.iterdir()) and not overwrite:
        where = os.fspath(output_dir)
        msg = f"output_dir {where!r} holds a bundle already: give overwrite=True (--overwrite) to replace it"
        raise ParameterError(msg)


def write_bundle(output_dir: Path, fill: Callable[[Path], None], overwrite: bool) -> Path:
    """Call ``fill(directory)`` on a new temporary directory, then rename it to ``output_dir``; return that.

    An existing ``output_dir`` (checked by :func:`check_output_dir`) is moved
    aside, replaced, and removed; if anything fails, nothing of the new bundle
    is left and the old one is where it was.

    Examples
    --------
    >>> write_bundle(Path("bundle"), lambda d: (d / "README.md").write_text("..."), overwrite=False)  # doctest: +SKIP
    PosixPath('bundle')
    """
    check_output_dir(output_dir, overwrite)
    parent = output_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".tmp", dir=parent))
    except OSError as err:
        msg = f"cannot write the bundle in {os.fspath(parent)!r}: {err.strerror or err}"
        raise FileAccessError(msg) from err
    aside = None
    try:
        fill(tmp)
        if output_dir.exists():
            aside = tmp.with_name(tmp.name + ".old")
            os.replace(output_dir, aside)
        os.replace(tmp, output_dir)
    except BaseException:
        if aside is not None and not output_dir.exists():
            os.replace(aside, output_dir)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if aside is not None and aside.exists() and output_dir.exists():
            shutil.rmtree(aside, ignore_errors=True)
    return output_dir
