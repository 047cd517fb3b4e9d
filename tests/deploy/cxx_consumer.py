"""A C++ consumer of ``new_variables``: the expressions compiled with g++ and run on the branches' values.

Each branch is a variable of its numpy type (``int32_t``, ``float``, ...) and
each new variable a ``const auto`` of its expression, in the order given, as a
program computing them element by element does it; the values come back as
float64 arrays.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from servers import unavailable

CPP_TYPES = {
    "bool": "bool",
    "int8": "int8_t",
    "int16": "int16_t",
    "int32": "int32_t",
    "int64": "int64_t",
    "uint32": "uint32_t",
    "uint64": "uint64_t",
    "float32": "float",
    "float64": "double",
}


def _literal(value: object) -> str:
    number = float(value)  # type: ignore[arg-type]
    if np.isnan(number):
        return "NAN"
    if np.isinf(number):
        return "INFINITY" if number > 0 else "-INFINITY"
    return str(int(value)) if isinstance(value, np.integer | np.bool_) else repr(number)  # type: ignore[call-overload]


def program(new_variables: Mapping[str, str], columns: Mapping[str, np.ndarray]) -> str:
    """The C++ source: for each event, each new variable printed to 17 digits on one line."""
    (n,) = {len(values) for values in columns.values()}
    arrays = "\n".join(
        f"static const {CPP_TYPES[str(v.dtype)]} {name}_values[] = {{{', '.join(_literal(x) for x in v)}}};"
        for name, v in columns.items()
    )
    reads = "\n".join(f"    const {CPP_TYPES[str(v.dtype)]} {name} = {name}_values[i];" for name, v in columns.items())
    computes = "\n".join(f"    const auto {name} = {expression};" for name, expression in new_variables.items())
    prints = "\n".join(f'    std::printf("%.17g ", static_cast<double>({name}));' for name in new_variables)
    return f"""#include <cmath>
#include <cstdint>
#include <cstdio>

{arrays}

int main() {{
  for (long i = 0; i < {n}; ++i) {{
{reads}
{computes}
{prints}
    std::printf("\\n");
  }}
  return 0;
}}
"""


def evaluate(
    new_variables: Mapping[str, str], columns: Mapping[str, np.ndarray], directory: Path
) -> dict[str, np.ndarray]:
    """The new variables as a C++ program computes them from ``columns`` (compiled with ``$CXX``, or g++)."""
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        unavailable("a C++ compiler is needed (g++, or $CXX): apt-get install g++")
    source, binary = directory / "consumer.cpp", directory / "consumer"
    source.write_text(program(new_variables, columns))
    build = subprocess.run(
        [str(compiler), "-std=c++17", "-O1", "-o", str(binary), str(source)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert build.returncode == 0, f"the expressions do not compile as C++:\n{build.stderr[-3000:]}"
    run = subprocess.run([str(binary)], capture_output=True, text=True, check=True, timeout=60)
    rows = np.array([[float(x) for x in line.split()] for line in run.stdout.splitlines()], dtype=np.float64)
    return {name: rows[:, k] for k, name in enumerate(new_variables)}
