"""The benchmark harness (``make bench``) runs and reports every target: checked on its ``--quick`` smoke run.

Only the structure of the output is checked, never the times: the harness is
a tool, and this machine is shared.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"
TARGETS = ("1", "1f", "2b", "3", "4", "5a", "5b", "6", "8", "9", "10", "11", "13")
LINE = re.compile(r"^\[(?P<key>\w+)\] .+ target (>=|<=|>|<) [\d.]+\S* +(?P<verdict>MET|NOT MET) +median of \[")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> str:
    data = tmp_path_factory.mktemp("bench")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_every_target_has_a_line(quick_run: str) -> None:
    found = {m["key"]: m["verdict"] for m in map(LINE.match, quick_run.splitlines()) if m}
    assert sorted(found) == sorted(TARGETS), quick_run


@pytest.mark.slow
def test_summary_table_and_machine(quick_run: str) -> None:
    assert quick_run.startswith("machine: ")
    assert "| target | measured | goal | met | detail |" in quick_run
    rows = [line for line in quick_run.splitlines() if re.match(r"^\| \d\w?\. ", line)]
    assert len(rows) == len(TARGETS)
    assert re.search(rf"^\d+ of {len(TARGETS)} targets met$", quick_run, re.MULTILINE)
    assert "[7]" in quick_run  # ROOT's loader: said to be measured elsewhere


@pytest.mark.slow
def test_reference_agrees_with_the_library(quick_run: str) -> None:
    """The per-event reference of target 2 produces the same matrix as JaggedFlattener."""
    assert "outputs agree: True" in quick_run
