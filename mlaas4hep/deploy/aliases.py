"""Which aliases an exported model may use, and how a C++ consumer computes them from branches.

A feature that is an alias (``{"log_Jet_pt": "log(Jet_pt)"}``) reaches a C++
consumer in ``preprocess.json`` (``mlaas4hep.new_variables``), which it must
evaluate on the raw branches before the normalization, element by element.
mlaas4hep evaluates aliases with numpy; :func:`cpp_expression` writes the same
formula in C++ that means the same thing: ``a / b`` is true division in
numpy, integer division in C++ for integer operands, so it is written
``1.0 * a / b``; ``a ** b`` is ``pow(a, b)``; ``pi`` and ``e`` are their
values (``3.141592653589793``), ``inf`` and ``nan`` ``INFINITY`` and ``NAN``;
numpy's function names are C's (``arctan2`` is ``atan2``, ``abs`` ``fabs``).
The result compiles against ``<cmath>`` alone (as a C++ variable's
initializer, or ``RDataFrame::Define``'s on flat branches); C++ computes in
double where numpy keeps float32, so the values agree to float32's rounding.
The constants' names (:data:`CONSTANTS`) are never branches, in mlaas4hep as
here, and no alias may take one.

Only what has such a C++ form is exported: numbers, branch names, ``+ - * /
**``, a sign, and the functions of :data:`ELEMENTWISE`. Anything else
(reductions such as ``sum(Jet_pt)`` or ``count(...)``, comparisons,
``where``, ``%`` and ``//``, whose sign rules differ between Python and C++,
``round``, which rounds halves to even) is refused, naming the alias.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Mapping

from ..errors import ParameterError
from ..inputs.selection import dotted_name

__all__ = ["CONSTANTS", "ELEMENTWISE", "check_aliases", "cpp_aliases", "cpp_expression", "ordered_aliases"]

ELEMENTWISE = {
    **{name: name for name in ("sqrt", "cbrt", "exp", "exp2", "expm1", "log", "log10", "log1p", "log2")},
    **{name: name for name in ("sin", "cos", "tan", "asin", "acos", "atan", "atan2", "hypot")},
    **{name: name for name in ("sinh", "cosh", "tanh", "asinh", "acosh", "atanh", "erf", "erfc")},
    **{name: name for name in ("floor", "ceil", "trunc", "fmin", "fmax", "copysign", "fabs")},
    **{"abs": "fabs", "absolute": "fabs", "arcsin": "asin", "arccos": "acos", "arctan": "atan"},
    **{"arctan2": "atan2", "arcsinh": "asinh", "arccosh": "acosh", "arctanh": "atanh"},
}
"""Functions of an exported alias -> their C (``<cmath>``) names: the same value element by element.

``abs`` is ``fabs``: C++'s unqualified ``abs`` may be C's ``int abs(int)``.
"""

CONSTANTS = {
    "pi": repr(math.pi),
    "e": repr(math.e),
    "inf": "INFINITY",
    "nan": "NAN",
    "true": "true",
    "false": "false",
}
"""The names an expression reads as constants (never as branches), in C++."""

_OPERATORS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.USub, ast.UAdd)
_NODES = (ast.Name, ast.Attribute, ast.Load, ast.Constant, ast.BinOp, ast.UnaryOp, ast.Call, *_OPERATORS)
_CPP_BINARY = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*"}
_CPP_UNARY = {ast.USub: "-", ast.UAdd: "+"}
_BINARY_FUNCTIONS = {"atan2", "hypot", "fmin", "fmax", "copysign"}  # by their C names; the others take one number
_CPP_KEYWORDS = frozenset(
    """alignas alignof and and_eq asm auto bitand bitor bool break case catch char char8_t char16_t char32_t class
    compl concept const consteval constexpr constinit const_cast continue co_await co_return co_yield decltype
    default delete do double dynamic_cast else enum explicit export extern false float for friend goto if inline
    int long mutable namespace new noexcept not not_eq nullptr operator or or_eq private protected public register
    reinterpret_cast requires return short signed sizeof static static_assert static_cast struct switch template
    this thread_local throw true try typedef typeid typename union unsigned using virtual void volatile wchar_t
    while xor xor_eq""".split()
)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _problem(tree: ast.AST) -> str | None:
    """What in a parsed expression a consumer cannot compute element by element, or None."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = dotted_name(node.func)
            if name not in ELEMENTWISE:
                return f"calls {name or ast.unparse(node.func)!r}"
            arity = 2 if ELEMENTWISE[name] in _BINARY_FUNCTIONS else 1
            if node.keywords or len(node.args) != arity or any(isinstance(a, ast.Starred) for a in node.args):
                return f"calls {name!r} with other than {arity} number{'s' if arity > 1 else ''}"
        elif isinstance(node, ast.Constant) and not _is_number(node.value):
            return f"holds the constant {node.value!r}"
        elif isinstance(node, ast.BinOp) and not isinstance(node.op, _OPERATORS):
            return f"uses {ast.unparse(node)!r}"
        elif not isinstance(node, _NODES):
            return f"uses {ast.unparse(node) if isinstance(node, ast.expr) else type(node).__name__!r}"
    keywords = sorted(name for name in _reads(tree) if name in _CPP_KEYWORDS - CONSTANTS.keys())
    if keywords:
        return f"reads {keywords[0]!r}, a C++ keyword"
    return None


def _cpp(node: ast.expr) -> str:
    """The C++ of a checked expression: every operation in parentheses, so that C++'s precedence is Python's."""
    if isinstance(node, ast.Constant):
        value = node.value
        return "INFINITY" if value == math.inf else repr(value)  # 1e999 parses as inf
    if isinstance(node, (ast.Name, ast.Attribute)):
        name = dotted_name(node)
        assert name is not None, "check_aliases refuses any other attribute"
        return CONSTANTS.get(name, name)
    if isinstance(node, ast.UnaryOp):
        return f"({_CPP_UNARY[type(node.op)]}{_cpp(node.operand)})"
    if isinstance(node, ast.BinOp):
        left, right = _cpp(node.left), _cpp(node.right)
        if isinstance(node.op, ast.Div):  # true division, as numpy's, whatever the operands' types
            return f"(1.0 * {left} / {right})"
        if isinstance(node.op, ast.Pow):
            return f"pow({left}, {right})"
        return f"({left} {_CPP_BINARY[type(node.op)]} {right})"
    if isinstance(node, ast.Call):
        return f"{ELEMENTWISE[dotted_name(node.func) or '']}({', '.join(_cpp(a) for a in node.args)})"
    msg = f"no C++ form for {ast.unparse(node)!r}"  # check_aliases lets nothing else through
    raise ParameterError(msg)


def cpp_expression(expression: str) -> str:
    """The C++ form of an alias's expression that :func:`check_aliases` accepts: the same value, element by element.

    It reads the branches and aliases by their names, and needs ``<cmath>``
    only; integers stay integers where numpy keeps them so (``+ - *``), and
    ``/`` divides as doubles.

    Examples
    --------
    >>> cpp_expression("nMuon / nJet")
    '1.0 * nMuon / nJet'
    >>> cpp_expression("-x ** 2 + arctan2(y, pi)")
    '(-pow(x, 2)) + atan2(y, 3.141592653589793)'
    """
    text = _cpp(ast.parse(expression.strip(), mode="eval").body)
    if text.startswith("(") and text.endswith(")") and _balanced(text[1:-1]):
        return text[1:-1]
    return text


def _balanced(text: str) -> bool:
    """Whether ``text``'s parentheses pair up from left to right (so that outer ones around it can go)."""
    depth = 0
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            return False
    return depth == 0


def _reads(tree: ast.AST) -> set[str]:
    """Branch or alias names an expression reads (function names left out)."""
    names: set[str] = set()
    functions = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Name, ast.Attribute)) and id(node) not in functions:
            name = dotted_name(node)
            if name is not None:
                names.add(name)
    # an attribute's inner names (``a`` of ``a.b``) are not read on their own; a constant's name is read
    # too, so that an alias of that name (which check_aliases refuses) is never ordered after its readers
    inner = {n for n in names if any(other.startswith(n + ".") for other in names)}
    return names - inner


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
        if name in CONSTANTS or name in _CPP_KEYWORDS:
            msg = f"alias name {name!r} is a constant of the expressions or a C++ keyword: rename the alias"
            raise ParameterError(msg)
        try:
            tree = ast.parse(expression.strip(), mode="eval").body
        except SyntaxError as err:  # Selection has parsed it already; kept for a hand-made mapping
            msg = f"alias {name!r} = {expression!r} is not an expression: {err.msg}"
            raise ParameterError(msg) from None
        problem = _problem(tree)
        if problem is not None:
            msg = (
                f"alias {name!r} = {expression!r} {problem}, which preprocess.json cannot pass on to a C++ consumer "
                f"as an element-wise formula of the same value; exported aliases use numbers, branches, + - * / **, "
                f"and {sorted(ELEMENTWISE)}: compute it as a branch of the files instead"
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


def cpp_aliases(aliases: Mapping[str, str]) -> dict[str, str]:
    """The aliases' C++ forms (:func:`cpp_expression`), in the order of :func:`ordered_aliases`.

    Examples
    --------
    >>> cpp_aliases({"r": "h / 2", "h": "hypot(px, py)"})
    {'h': 'hypot(px, py)', 'r': '1.0 * h / 2'}
    """
    check_aliases(aliases)
    return {name: cpp_expression(expression) for name, expression in ordered_aliases(aliases).items()}
