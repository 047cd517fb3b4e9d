"""The documentation builds with mkdocs in strict mode (warnings are errors), and says what the code does.

Also the contributor's files: the changelog names the current version, and the
pre-commit hooks run what ``make lint`` runs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_docs_build_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    site = tmp_path / "site"
    config = ROOT / "docs" / "mkdocs.yml"
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    api = (site / "api" / "index.html").read_text()
    for name in ("RootSequence", "SpecBuilder", "JaggedFlattener", "run_workflow", "plot_roc", "seed_model"):
        assert name in api
    assert "RootDataset" in api  # the PyTorch face
    guide = (site / "workflow" / "index.html").read_text()
    assert "test_split" in guide and "exclude_branches" in guide
    assert "make bench" in (site / "performance" / "index.html").read_text()


def test_every_page_is_inside_docs_dir() -> None:
    """A page outside docs/pages/ is left out of the built site without a word."""
    outside = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert not outside, f"pages outside docs/pages/, so not in the site: {outside}"


def test_the_changelog_names_this_version() -> None:
    import mlaas4hep

    text = (ROOT / "CHANGELOG.md").read_text()
    assert f"\n## {mlaas4hep.__version__} - " in text


def test_pre_commit_runs_what_make_lint_runs() -> None:
    yaml = pytest.importorskip("yaml")
    lines = (ROOT / "Makefile").read_text().split("\nlint:", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    lint = [line.strip().replace("$(BIN)/", ".venv/bin/") for line in lines]
    lint = [command for command in lint if "pre-commit validate-config" not in command]
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    hooks = [hook["entry"] for repo in config["repos"] for hook in repo["hooks"]]
    assert hooks == lint


def test_every_params_key_is_documented() -> None:
    from mlaas4hep.workflow.params import DEFAULT_PARAMS

    text = (ROOT / "docs" / "pages" / "workflow.md").read_text()
    missing = [key for key in DEFAULT_PARAMS if f"| `{key}` |" not in text]
    assert not missing, f"params.json keys missing from docs/pages/workflow.md: {missing}"


def test_the_user_guide_names_every_option_of_the_sequence() -> None:
    """Each option is described once, in Options; the guide at least names each one where it belongs."""
    from mlaas4hep.options import Options

    text = (ROOT / "docs" / "pages" / "sequence.md").read_text()
    missing = [name for name in Options.names("RootSequence") if f"`{name}`" not in text]
    assert not missing, f"RootSequence options missing from docs/pages/sequence.md: {missing}"


def test_the_reliability_table_lists_what_the_tests_try() -> None:
    """Every case of the bad-input tables is in docs/pages/reliability.md, and every test it names exists."""
    import re

    import test_errors
    import test_reliability
    from inputs import test_formats

    page = (ROOT / "docs" / "pages" / "reliability.md").read_text()
    rows = [line for line in page.splitlines() if line.startswith("| ") and not line.startswith("| case")]
    cases = {line.split(" | ")[0][2:] for line in rows}
    for table in (test_errors.CASES, test_reliability.CASES, test_formats.CASES):
        missing = [case[0] for case in table if case[0] not in cases]
        assert not missing, f"cases missing from reliability.md: {missing}"
    sources = "".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    named = {name for line in rows for name in re.findall(r"`(test_\w+)`", line)}
    unknown = sorted(name for name in named if f"def {name}(" not in sources)
    assert not unknown, f"reliability.md names tests that do not exist: {unknown}"
    assert len(rows) >= 60
