"""Which aliases an exported model may use: those a consumer outside Python computes from branches alike.

A feature that is an alias (``{"log_Jet_pt": "log(Jet_pt)"}``) reaches a C++
consumer as an expression in ``preprocess.json`` (``mlaas4hep.new_variables``),
which it must evaluate on the raw branches before the normalization. Only
expressions that mean the same thing element by element in C++'s ``<cmath>``
(and in ROOT's ``RDataFrame::Define``) are exported: numbers, branch names,
``+ - * / **``, a sign, and the functions of :data:`ELEMENTWISE`. Anything
else (reductions such as ``sum(Jet_pt)`` or ``count(...)``, comparisons,
``where``, ``%`` and ``//``, whose sign rules differ between Python and C++,
``round``, which rounds halves to even) is refused, naming the alias.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping

from ..errors import ParameterError

__all__ = ["ELEMENTWISE", "check_aliases", "ordered_aliases"]

ELEMENTWISE = frozenset(
    {
        *("abs", "fabs", "absolute", "sqrt", "cbrt", "exp", "exp2", "expm1", "log", "log10", "log1p", "log2"),
        *("sin", "cos", "tan", "arcsin", "asin", "arccos", "acos", "arctan", "atan", "arctan2", "atan2"),
        *("sinh", "cosh", "tanh", "arcsinh", "asinh", "arccosh", "acosh", "arctanh", "atanh"),
        *("hypot", "floor", "ceil", "trunc", "fmin", "fmax", "copysign", "erf", "erfc"),
    }
)
"""Functions of an exported alias: the same value element by element in numpy and C++'s ``<cmath>``."""

_OPERATORS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.USub, ast.UAdd)
_NODES = (ast.Name, ast.Attribute, ast.Load, ast.Constant, ast.BinOp, ast.UnaryOp, ast.Call, *_OPERATORS)
_CONSTANTS = {"pi", "e"}


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return None if head is None else f"{head}.{node.attr}"
    return None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _problem(tree: ast.AST) -> str | None:
    """What in a parsed expression a consumer cannot compute element by element, or None."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name not in ELEMENTWISE:
                return f"calls {name or ast.unparse(node.func)!r}"
        elif isinstance(node, ast.Constant) and not _is_number(node.value):
            return f"holds the constant {node.value!r}"
        elif isinstance(node, ast.BinOp) and not isinstance(node.op, _OPERATORS):
            return f"uses {ast.unparse(node)!r}"
        elif not isinstance(node, _NODES):
            return f"uses {ast.unparse(node) if isinstance(node, ast.expr) else type(node).__name__!r}"
    return None


def _reads(tree: ast.AST) -> set[str]:
    """Branch or alias names an expression reads (function names left out)."""
    names: set[str] = set()
    functions = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Name, ast.Attribute)) and id(node) not in functions:
            name = _dotted(node)
            if name is not None:
                names.add(name)
    # an attribute's inner names (``a`` of ``a.b``) are not read on their own
    inner = {n for n in names if any(other.startswith(n + ".") for other in names)}
    return names - inner - _CONSTANTS


def check_aliases(aliases: Mapping[str, str]) -> None:
    """Raise :class:`~mlaas4hep.errors.ParameterError` for an alias a C++ consumer cannot compute from branches.

    Examples
    --------
    >>> check_aliases({"log_pt": "log(Jet_pt)", "pt_ratio": "Jet_pt / MET_pt"})
    >>> check_aliases({"ht": "sum(Jet_pt)"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mlaas4hep.errors.ParameterError: alias 'ht' = 'sum(Jet_pt)' calls 'sum', which preprocess.json cannot ...
    """
    for name, expression in aliases.items():
        try:
            tree = ast.parse(expression.strip(), mode="eval").body
        except SyntaxError as err:  # Selection has parsed it already; kept for a hand-made mapping
            msg = f"alias {name!r} = {expression!r} is not an expression: {err.msg}"
            raise ParameterError(msg) from None
        problem = _problem(tree)
        if problem is not None:
            msg = (
                f"alias {name!r} = {expression!r} {problem}, which preprocess.json cannot pass on to a C++ consumer "
                f"as an element-wise formula; exported aliases use numbers, branches, + - * / **, and "
                f"{sorted(ELEMENTWISE)}: compute it as a branch of the files instead"
            )
            raise ParameterError(msg)


def ordered_aliases(aliases: Mapping[str, str]) -> dict[str, str]:
    """The aliases in an order where each reads only branches and the aliases before it.

    Examples
    --------
    >>> ordered_aliases({"b": "2 * a", "a": "log(x)"})
    {'a': 'log(x)', 'b': '2 * a'}
    """
    reads = {name: _reads(ast.parse(expression.strip(), mode="eval")) for name, expression in aliases.items()}
    done: dict[str, str] = {}
    while len(done) < len(aliases):
        ready = [n for n in aliases if n not in done and not (reads[n] & set(aliases)) - set(done)]
        if not ready:  # a cycle: Selection refuses them before this
            msg = f"the aliases {sorted(set(aliases) - set(done))} depend on each other in a cycle"
            raise ParameterError(msg)
        done.update({n: aliases[n] for n in ready})
    return done
