"""The aliases an export passes on: refused unless element-wise, and written in C++ that computes mlaas4hep's values."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from cxx_consumer import evaluate

from mlaas4hep import ParameterError
from mlaas4hep.deploy import aliases as exported
from mlaas4hep.deploy.aliases import check_aliases, ordered_aliases
from mlaas4hep.inputs.selection import Selection

# integers divided, powers, the constants, aliases of aliases, numpy's function names
ALIASES = {
    "half": "nJet / 2",
    "ratio": "nMuon / nJet",
    "mixed": "(nJet + 1) / 2 / 2 + t / 7",
    "powers": "nJet ** 2 - nMuon ** 0.5 + 2.0 ** -nJet",
    "circle": "pi * r ** 2 + e",
    "signs": "- -x - +x * -(nJet - nMuon)",
    "chain": "half * 3 + ratio / circle",
    "angles": "arctan2(y, x) + abs(nMuon - nJet) + absolute(x) + arcsinh(y) + fabs(-r)",
    "ints": "nJet * 3 - nMuon",
    "more": "exp2(x) + log1p(r) * fmin(x, y) + copysign(r, y) + hypot(x, y) - floor(y) + trunc(x / 3)",
}


def columns(n: int = 200) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "nJet": rng.integers(0, 7, n).astype(np.int32),
        "nMuon": rng.integers(0, 4, n).astype(np.int32),
        "t": (1_700_000_000 + rng.integers(0, 1000, n)).astype(np.int64),
        "x": rng.normal(0.0, 3.0, n).astype(np.float32),
        "y": rng.normal(1.0, 2.0, n),
        "r": rng.exponential(2.0, n).astype(np.float32),
    }


def mlaas4hep_values(aliases: dict[str, str], arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    n = len(next(iter(arrays.values())))
    with np.errstate(divide="ignore", invalid="ignore"):
        derived = Selection(aliases=aliases).derive(arrays, list(aliases), n)
    return {name: np.asarray(values, dtype=np.float64) for name, values in derived.items()}


def test_the_cpp_form_computes_mlaas4hep_values_for_integer_and_float_branches(tmp_path: Path) -> None:
    """Compiled by g++ on int32, int64, float32 and float64 branches: 1.5 where C++ would say 1, pow, pi."""
    arrays = columns()
    aliases = dict(ALIASES)
    cpp = exported.cpp_aliases(aliases)
    assert list(cpp) == list(ordered_aliases(aliases)) and list(cpp).index("chain") > list(cpp).index("circle")
    got = evaluate(cpp, arrays, tmp_path)
    expected = mlaas4hep_values(aliases, arrays)
    assert np.isinf(expected["ratio"]).any() and np.isnan(expected["ratio"]).any()  # n / 0 and 0 / 0
    assert not np.array_equal(expected["half"], np.floor(expected["half"]))  # odd counts halved
    for name in aliases:  # float32 in numpy, double in C++: float32's rounding apart; integer division is 0.5 off
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-6, atol=1e-6, equal_nan=True, err_msg=name)


def test_the_cpp_form_of_each_operation() -> None:
    for expression, cpp in [
        ("nJet / 2", "1.0 * nJet / 2"),
        ("a / b / c", "1.0 * (1.0 * a / b) / c"),
        ("-x ** 2", "-pow(x, 2)"),
        ("(-x) ** 2", "pow((-x), 2)"),
        ("- -x", "-(-x)"),
        ("2 * pi + e", "(2 * 3.141592653589793) + 2.718281828459045"),
        ("x * 1e999 + nan", "(x * INFINITY) + NAN"),
        ("(a + b) * (c - d)", "(a + b) * (c - d)"),
        ("arctan2(y, x) + abs(x) + absolute(x)", "(atan2(y, x) + fabs(x)) + fabs(x)"),
        ("log(Jet.pt) * 0.5", "log(Jet.pt) * 0.5"),
    ]:
        assert exported.cpp_expression(expression) == cpp, expression


def test_the_aliases_exported_are_element_wise() -> None:
    check_aliases({"a": "-log1p(x) ** 2 + atan2(y, pi)", "b": "Jet.pt / 3"})
    for expression, problem in [
        ("count(Jet_pt)", "calls 'count'"),
        ("where(x > 0, x, 0)", "calls 'where'"),
        ("x % 2", "uses 'x % 2'"),
        ("(x > 1) * 1.0", "uses 'x > 1'"),
        ("round(x)", "calls 'round'"),
        ("log(x, y)", "calls 'log' with other than 1 number"),
        ("atan2(y)", "calls 'atan2' with other than 2 numbers"),
        ("new * 2", "reads 'new', a C++ keyword"),
    ]:
        with pytest.raises(ParameterError, match=re.escape(problem)):
            check_aliases({"v": expression})
    for name in ("e", "pi", "double"):
        with pytest.raises(ParameterError, match=rf"alias name '{name}' is a constant of the expressions or a C\+\+"):
            check_aliases({name: "log(x)"})
    assert list(ordered_aliases({"c": "a + b", "b": "2 * a", "a": "log(x)"})) == ["a", "b", "c"]


def test_an_alias_named_like_a_constant_is_still_ordered_before_its_readers() -> None:
    """A hand-made mapping (Selection refuses the name): the order does not drop what reads ``e``."""
    assert list(ordered_aliases({"y": "e * 2", "e": "log(x)"})) == ["e", "y"]


def test_the_constants_are_those_mlaas4hep_reads() -> None:
    from mlaas4hep.inputs import selection

    assert set(exported.CONSTANTS) == set(selection._CONSTANTS)
    for name, cpp in exported.CONSTANTS.items():
        if cpp not in ("INFINITY", "NAN"):
            assert float(eval(cpp.replace("true", "True").replace("false", "False"))) == selection._CONSTANTS[name]
