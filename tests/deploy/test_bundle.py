"""The bundle's README: its C++ program compiles (against a header declaring the ONNX Runtime API it uses)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from servers import unavailable

from mlaas4hep.deploy.bundle import readme
from mlaas4hep.deploy.layout import InputGroup, InputPlan

ROOT = Path(__file__).resolve().parents[2]

# The declarations of onnxruntime_cxx_api.h (ONNX Runtime 1.x) that the recipe uses, and nothing of the
# standard library: the program must include what it uses itself.
ORT_HEADER = """\
#pragma once
#include <cstddef>
#include <cstdint>
struct OrtMemoryInfo;
enum OrtAllocatorType { OrtDeviceAllocator, OrtArenaAllocator };
enum OrtMemType { OrtMemTypeDefault };
namespace Ort {
struct Env { Env(); };
struct SessionOptions { SessionOptions(); };
struct RunOptions { RunOptions(); explicit RunOptions(std::nullptr_t); };
struct MemoryInfo {
  static MemoryInfo CreateCpu(OrtAllocatorType type, OrtMemType mem_type);
  operator const OrtMemoryInfo*() const;
};
struct Value {
  template <typename T>
  static Value CreateTensor(const OrtMemoryInfo* info, T* data, size_t count, const int64_t* shape, size_t rank);
  template <typename T> T* GetTensorMutableData();
  Value(Value&&);
};
struct Values { Value& operator[](size_t k); };  // std::vector<Value> in the real header
struct Session {
  Session(const Env& env, const char* model_path, const SessionOptions& options);
  Values Run(const RunOptions& options, const char* const* input_names, const Value* inputs, size_t input_count,
             const char* const* output_names, size_t output_count);
};
}  // namespace Ort
"""


def compiles(source: str, directory: Path) -> subprocess.CompletedProcess[str]:
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        unavailable("a C++ compiler is needed (g++, or $CXX): apt-get install g++")
    (directory / "onnxruntime_cxx_api.h").write_text(ORT_HEADER)
    (directory / "recipe.cpp").write_text(source)
    command = [str(compiler), "-std=c++17", "-fsyntax-only", "-Wall", "-Werror", "-I", str(directory)]
    return subprocess.run([*command, str(directory / "recipe.cpp")], capture_output=True, text=True, check=False)


def cpp_blocks(text: str) -> list[str]:
    return re.findall(r"```cpp\n(.*?)```", text, flags=re.DOTALL)


@pytest.mark.parametrize("where", ["README.md", "docs/pages/deploy.md"])
def test_the_cpp_recipe_is_a_program_that_compiles(where: str, tmp_path: Path) -> None:
    groups = (
        InputGroup("event", ("MET_pt", "nJet"), 1, {}),
        InputGroup("Jet", ("Jet_eta", "Jet_pt", "Jet_mask"), 9, {}, "Jet_mask"),
    )
    plan = InputPlan(groups, {}, flat_input=False)
    if where == "README.md":
        text = readme("tagger", plan, ["score_0", "score_1"], "model.keras")
    else:
        text = (ROOT / where).read_text()
    (source,) = cpp_blocks(text)
    build = compiles(source, tmp_path)
    assert build.returncode == 0, build.stderr[-3000:]
    assert "int main()" in source
    if where == "README.md":
        assert 'const char* input_names[] = {"event", "Jet"};' in source
        assert "const int64_t n_vars[] = {2, 3};" in source and "const int64_t var_length[] = {1, 9};" in source
        assert 'const char* output_names[] = {"score_0", "score_1"};' in source
