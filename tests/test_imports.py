"""Importing the package, or calling it, changes no global state the user did not ask for."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import logging, os, sys, warnings
import awkward, numpy, uproot  # their own filters are theirs
filters, environ = list(warnings.filters), dict(os.environ)
handlers, level = list(logging.getLogger().handlers), logging.getLogger().level
import mlaas4hep
from mlaas4hep import SpecBuilder, use_zlib
use_zlib("zlib")  # a choice the user makes changes uproot's setting, not the environment
assert warnings.filters == filters, [f for f in warnings.filters if f not in filters]
assert dict(os.environ) == environ, {k: v for k, v in os.environ.items() if environ.get(k) != v}
assert logging.getLogger().handlers == handlers and logging.getLogger().level == level
assert not any(m.split(".")[0] in ("keras", "tensorflow", "torch") for m in sys.modules), "a framework was imported"
print("clean")
"""


def test_importing_the_package_changes_no_global_state() -> None:
    run = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "clean", run.stderr


def test_scoring_sets_no_environment_variable_of_keras_or_tensorflow() -> None:
    """write_scores imports Keras as it is: the CLI alone may quiet TensorFlow for its own run."""
    code = (
        "import os, sys\n"
        "environ = dict(os.environ)\n"
        "from mlaas4hep.scores import _load_model\n"
        "try:\n"
        "    _load_model('/nonexistent/model.keras')\n"
        "except Exception:\n"
        "    pass\n"
        "assert os.environ.get('KERAS_BACKEND') == environ.get('KERAS_BACKEND')\n"
        "assert os.environ.get('TF_CPP_MIN_LOG_LEVEL') == environ.get('TF_CPP_MIN_LOG_LEVEL')\n"
        "print('clean')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "clean", run.stderr
