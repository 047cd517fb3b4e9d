"""Event selection (a cut) and derived branches (aliases), in uproot's expression language.

A :class:`Selection` holds a ``cut`` such as ``"(nMuon >= 1) & (MET_pt > 20)"``
and ``aliases`` such as ``{"log_Jet_pt": "log(Jet_pt)"}``, written as for
:meth:`uproot.TTree.arrays` (``cut=``, ``aliases=``): Python syntax, branch
names as identifiers, and uproot's math functions (``log``, ``sqrt``,
``arctan2``, ``where``, ...; the table
``uproot.language.python.PythonLanguage.default_functions``).

Three things go beyond what uproot's own evaluator accepts, which is why the
expressions are evaluated here, on the awkward arrays of a chunk already read,
rather than by uproot while reading:

* reductions of a jagged branch to one value per event: ``any(Jet_pt > 30)``,
  ``all(...)``, ``sum(...)``, ``count(...)`` (the list length), ``min(...)``,
  ``max(...)`` (NaN for an empty list); on a flat value they do nothing;
* chained comparisons ``1 <= nJets <= 16`` and ``and``/``or``/``not``, which
  mean ``&``, ``|`` and ``~`` element by element;
* a check, before any data is read, that every name is a branch or an alias.

The expression is parsed once into a tree of allowed nodes (no ``eval``), and
evaluated with whole-array operations: no Python loop over events. Uproot's own
``cut`` gives the same events for any expression both accept (the tests check
this against :meth:`uproot.TTree.arrays`).
"""

from __future__ import annotations

import ast
import base64
import operator
import zlib
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import awkward as ak
import numpy as np
import uproot.language.python

from ..errors import BranchError, ParameterError

__all__ = ["FUNCTIONS", "REDUCERS", "Selection", "decode_mask", "dotted_name", "encode_mask", "kind_of"]


def _reducer(name: str, function: Callable[..., Any], empty: float | None = None) -> Callable[[Any], Any]:
    def reduce(values: Any) -> Any:
        if not _is_jagged(values):
            return values
        out = function(values, axis=-1)
        if empty is not None:
            out = ak.fill_none(out, empty)
        return _to_numpy(out)

    reduce.__name__ = name
    return reduce


REDUCERS: dict[str, Callable[[Any], Any]] = {
    "any": _reducer("any", ak.any),
    "all": _reducer("all", ak.all),
    "sum": _reducer("sum", ak.sum),
    "count": _reducer("count", lambda v, axis: ak.num(v, axis=axis)),
    "min": _reducer("min", ak.min, np.nan),
    "max": _reducer("max", ak.max, np.nan),
}
"""Functions that reduce a jagged value to one value per event (the identity on flat values)."""

FUNCTIONS: dict[str, Callable[..., Any]] = {**uproot.language.python.PythonLanguage.default_functions, **REDUCERS}
"""Every function an expression may call: uproot's math functions and :data:`REDUCERS`."""

_CONSTANTS = {"pi": np.pi, "e": np.e, "inf": np.inf, "nan": np.nan, "true": True, "false": False}

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.BitAnd: operator.and_,
    ast.BitOr: operator.or_,
    ast.BitXor: operator.xor,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
    ast.Invert: operator.invert,
    ast.Not: np.logical_not,
}
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}


def _is_jagged(values: Any) -> bool:
    return isinstance(values, ak.Array) and values.ndim > 1


def _to_numpy(values: Any) -> Any:
    """Flat awkward arrays become numpy arrays (cheaper arithmetic); jagged ones stay awkward."""
    if isinstance(values, ak.Array) and values.ndim == 1:
        return ak.to_numpy(values, allow_missing=False)
    return values


def dotted_name(node: ast.AST) -> str | None:
    """``a.b.c`` as one name, as uproot reads branch names with dots; None for anything but names and attributes."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = dotted_name(node.value)
        return None if head is None else f"{head}.{node.attr}"
    return None


def _parse(expression: str, what: str) -> ast.expr:
    """Parse ``expression`` and check that it uses only what :func:`_evaluate` knows."""
    if not isinstance(expression, str) or not expression.strip():
        msg = f"{what} must be a non-empty string, got {expression!r}"
        raise ParameterError(msg)
    try:
        tree = ast.parse(expression.strip(), mode="eval").body
    except SyntaxError as err:
        msg = f"{what} {expression!r} is not a valid expression: {err.msg}"
        raise ParameterError(msg) from None
    for node in ast.walk(tree):
        problem = None
        if isinstance(node, ast.Call):
            name = dotted_name(node.func)
            if name not in FUNCTIONS:
                problem = f"calls {name or ast.unparse(node.func)!r}, which is not one of {sorted(FUNCTIONS)}"
            elif node.keywords:
                problem = "passes keyword arguments, which functions here do not take"
        elif isinstance(node, ast.Constant) and not isinstance(node.value, (int, float, bool)):
            problem = f"holds the constant {node.value!r}; only numbers are allowed"
        elif isinstance(node, ast.BinOp) and type(node.op) not in _BINARY:
            problem = f"uses the operator {type(node.op).__name__}"
        elif isinstance(node, ast.Compare) and any(type(op) not in _COMPARE for op in node.ops):
            problem = "uses a comparison other than <, <=, >, >=, ==, !="
        elif not isinstance(
            node,
            (
                ast.Name,
                ast.Attribute,
                ast.Load,
                ast.Call,
                ast.Constant,
                ast.BinOp,
                ast.UnaryOp,
                ast.BoolOp,
                ast.Compare,
                ast.operator,
                ast.unaryop,
                ast.cmpop,
                ast.boolop,
            ),
        ):
            problem = f"contains {type(node).__name__} ({ast.unparse(node)!r}), which is not supported"
        elif isinstance(node, ast.Attribute) and dotted_name(node) is None:
            problem = f"takes the attribute {ast.unparse(node)!r}; only dotted branch names are allowed"
        if problem:
            msg = f"{what} {expression!r} {problem}"
            raise ParameterError(msg)
    return tree


def _names(tree: ast.AST) -> list[str]:
    """Branch or alias names an expression reads, in order of appearance."""
    names: list[str] = []
    skip: set[int] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Call):
            for sub in ast.walk(node.func):
                skip.add(id(sub))
            continue
        if isinstance(node, (ast.Name, ast.Attribute)):
            name = dotted_name(node)
            if name is not None:
                for sub in ast.walk(node):
                    skip.add(id(sub))
                if name not in _CONSTANTS and name not in names:
                    names.append(name)
    return names


def _evaluate(node: ast.AST, get: Callable[[str], Any]) -> Any:
    """Value of a parsed expression; ``get(name)`` gives a branch's or alias's values."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.Name, ast.Attribute)):
        name = dotted_name(node)
        assert name is not None
        return _CONSTANTS[name] if name in _CONSTANTS else get(name)
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_evaluate(node.left, get), _evaluate(node.right, get))
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_evaluate(node.operand, get))
    if isinstance(node, ast.BoolOp):
        combine = operator.and_ if isinstance(node.op, ast.And) else operator.or_
        values = [_as_bool(_evaluate(v, get)) for v in node.values]
        out = values[0]
        for value in values[1:]:
            out = combine(out, value)
        return out
    if isinstance(node, ast.Compare):
        left = _evaluate(node.left, get)
        out = None
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            right = _evaluate(right_node, get)
            value = _COMPARE[type(op)](left, right)
            out = value if out is None else operator.and_(out, value)
            left = right
        return out
    if isinstance(node, ast.Call):
        function = FUNCTIONS[dotted_name(node.func) or ""]
        return _to_numpy(function(*(_evaluate(a, get) for a in node.args)))
    msg = f"cannot evaluate {ast.unparse(node)!r}"  # _parse lets nothing else through
    raise ParameterError(msg)


def _as_bool(values: Any) -> Any:
    if isinstance(values, (bool, np.bool_)):
        return values
    return values if _is_jagged(values) else np.asarray(values).astype(bool, copy=False)


def encode_mask(mask: np.ndarray) -> str:
    """A boolean mask as text for JSON: bits packed, compressed, base64."""
    return base64.b64encode(zlib.compress(np.packbits(np.asarray(mask, dtype=bool)).tobytes(), 6)).decode("ascii")


def decode_mask(text: str, size: int) -> np.ndarray:
    """Inverse of :func:`encode_mask`: a boolean array of ``size`` entries."""
    try:
        packed = np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype=np.uint8)
    except (ValueError, zlib.error) as err:
        msg = f"corrupt selection mask: {err}"
        raise ParameterError(msg) from err
    if packed.size * 8 < size:
        msg = f"selection mask holds {packed.size * 8} bits, {size} expected"
        raise ParameterError(msg)
    return np.unpackbits(packed, count=size).astype(bool)


@dataclass(frozen=True)
class Selection:
    """A cut and derived branches, checked when made and evaluated on chunks of events.

    Parameters
    ----------
    cut : str, optional
        Boolean expression: events where it is true are kept. Jagged branches
        must be reduced to one value per event, e.g. ``any(Jet_pt > 30)``.
    aliases : mapping of str to str
        New branches defined from existing ones (or from other aliases), e.g.
        ``{"log_Jet_pt": "log(Jet_pt)", "HT": "sum(Jet_pt)"}``; each is flat or
        jagged according to its values.

    Raises
    ------
    ParameterError
        For an expression that does not parse or uses an unknown function, an
        alias named like a function, or aliases that refer to each other in a cycle.

    Examples
    --------
    >>> s = Selection("(nMuon >= 1) & any(Jet_pt > 30)", {"log_Jet_pt": "log(Jet_pt)"})
    >>> s.branches()
    ['nMuon', 'Jet_pt']
    """

    cut: str | None = None
    aliases: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        aliases = dict(self.aliases or {})
        object.__setattr__(self, "aliases", aliases)
        trees: dict[str, ast.expr] = {}
        for name, expression in aliases.items():
            if not isinstance(name, str) or not name.isidentifier() or name in FUNCTIONS or name in _CONSTANTS:
                msg = f"alias name {name!r} must be an identifier other than a function or constant name"
                raise ParameterError(msg)
            trees[name] = _parse(expression, f"aliases[{name!r}]")
        if self.cut is not None:
            trees[""] = _parse(self.cut, "cut")
        object.__setattr__(self, "_trees", trees)
        for name in aliases:  # cycles: an alias may not depend on itself
            self._sources(name, ())

    def __bool__(self) -> bool:
        return self.cut is not None or bool(self.aliases)

    def _tree(self, name: str) -> ast.expr:
        return self._trees[name]  # type: ignore[attr-defined,no-any-return]

    def _sources(self, name: str, path: tuple[str, ...]) -> list[str]:
        if name in path:
            msg = f"aliases refer to each other in a cycle: {' -> '.join((*path, name))}"
            raise ParameterError(msg)
        out: list[str] = []
        for used in _names(self._tree(name)):
            found = self._sources(used, (*path, name)) if used in self.aliases else [used]
            out.extend(n for n in found if n not in out)
        return out

    def branches(self, names: Iterable[str] = (), *, cut: bool = True) -> list[str]:
        """The file branches needed to compute ``names`` (branches or aliases), and the cut if ``cut``."""
        out: list[str] = []
        wanted = list(names) + ([""] if cut and self.cut is not None else [])
        for name in wanted:
            found = self._sources(name, ()) if name in self.aliases or name == "" else [name]
            out.extend(n for n in found if n not in out)
        return out

    def check(self, available: Collection[str], where: str) -> None:
        """Raise :class:`~mlaas4hep.errors.BranchError` if the cut or an alias names a missing branch.

        Parameters
        ----------
        available : collection of str
            Branch names of the file.
        where : str
            The file, for the message.
        """
        for name in ["", *self.aliases] if self.cut is not None else list(self.aliases):
            missing = [n for n in self._sources(name, ()) if n not in available]
            if missing:
                what = f"cut {self.cut!r}" if name == "" else f"alias {name!r} = {self.aliases[name]!r}"
                msg = f"{what} uses {missing}, not a branch of {where} nor an alias"
                raise BranchError(msg)

    def _getter(self, arrays: Any) -> Callable[[str], Any]:
        memo: dict[str, Any] = {}

        def get(name: str) -> Any:
            if name not in memo:
                if name in self.aliases:
                    # NaN and inf that an expression makes (log(0), 1/0) are masked as features, and refused
                    # as labels, targets or weights: no warning for them here
                    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                        memo[name] = _evaluate(self._tree(name), get)
                else:
                    try:
                        memo[name] = _to_numpy(arrays[name])
                    except (KeyError, ValueError, ak.errors.FieldNotFoundError) as err:
                        msg = f"branch {name!r} is missing from the arrays the selection was given"
                        raise BranchError(msg) from err
            return memo[name]

        return get

    def mask(self, arrays: Any, n: int) -> np.ndarray:
        """Boolean numpy array: which of the ``n`` events pass the cut (all of them without a cut)."""
        if self.cut is None:
            return np.ones(n, dtype=bool)
        value = _evaluate(self._tree(""), self._getter(arrays))
        if _is_jagged(value):
            msg = (
                f"cut {self.cut!r} gives a list per event (it compares a jagged branch); "
                "reduce it to one value per event with any(...) or all(...)"
            )
            raise ParameterError(msg)
        value = np.asarray(_to_numpy(value))
        if value.dtype != np.bool_:
            msg = f"cut {self.cut!r} gives {value.dtype} values, not true/false; compare it, e.g. ({self.cut}) > 0"
            raise ParameterError(msg)
        if value.ndim == 0:
            return np.full(n, bool(value))
        return value

    def derive(self, arrays: Any, names: Iterable[str], n: int) -> dict[str, Any]:
        """Values of the aliases among ``names``: numpy arrays (flat) or awkward arrays (jagged)."""
        get = self._getter(arrays)
        out = {}
        for name in names:
            if name in self.aliases:
                value = get(name)
                if not isinstance(value, (ak.Array, np.ndarray)):
                    value = np.full(n, value)
                out[name] = value
        return out

    def to_dict(self) -> dict[str, Any]:
        """What goes into the specs' ``selection`` record (nothing when empty)."""
        out: dict[str, Any] = {}
        if self.cut is not None:
            out["cut"] = self.cut
        if self.aliases:
            out["aliases"] = dict(self.aliases)
        return out


def kind_of(name: str, values: Any) -> tuple[str, str]:
    """``("flat", dtype)`` or ``("jagged", dtype)`` of an alias's values; BranchError otherwise."""
    if isinstance(values, np.ndarray) and values.ndim == 1 and values.dtype.kind in "biuf":
        return "flat", str(values.dtype)
    if isinstance(values, ak.Array) and values.ndim == 2:
        try:
            dtype = ak.to_numpy(ak.flatten(values, axis=1), allow_missing=False).dtype
        except (ValueError, TypeError):
            dtype = None
        if dtype is not None and dtype.kind in "biuf":
            return "jagged", str(dtype)
    what = getattr(values, "type", type(values).__name__)
    msg = f"alias {name!r} gives {what}, not one number or one list of numbers per event"
    raise BranchError(msg)
