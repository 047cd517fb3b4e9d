"""Size limits of the package: modules, functions and the Keras face (``make lint`` runs this).

* no module of ``mlaas4hep/`` over 500 lines;
* no function or method over 60 lines of code, from its ``def`` to its last line,
  not counting its docstring, blank lines and comment-only lines;
* ``RootSequence`` at most 350 lines of code, counted the same way.

Exits with status 1 and one line per breach.
"""

from __future__ import annotations

import ast
import io
import sys
import tokenize
from pathlib import Path

MAX_MODULE_LINES = 500
MAX_FUNCTION_CODE = 60
CLASS_LIMITS = {"RootSequence": 350}


def _code_lines(source: str) -> set[int]:
    """Line numbers that hold code: not blank, not only a comment."""
    lines: set[int] = set()
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in skip:
            lines.update(range(token.start[0], token.end[0] + 1))
    return lines


def _docstring_lines(tree: ast.AST) -> set[int]:
    """Line numbers of every docstring (module, class, function)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                if isinstance(first.value.value, str):
                    lines.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    return lines


def check(path: Path) -> list[str]:
    """Every breach of the limits in one file."""
    source = path.read_text()
    problems = []
    n_lines = len(source.splitlines())
    if n_lines > MAX_MODULE_LINES:
        problems.append(f"{path}: {n_lines} lines (at most {MAX_MODULE_LINES})")
    tree = ast.parse(source)
    code = _code_lines(source) - _docstring_lines(tree)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            span = range(node.lineno, (node.end_lineno or node.lineno) + 1)
            n = len(code.intersection(span))
            if isinstance(node, ast.ClassDef):
                limit = CLASS_LIMITS.get(node.name)
                if limit is not None and n > limit:
                    problems.append(f"{path}:{node.lineno}: class {node.name} has {n} lines of code (at most {limit})")
            elif n > MAX_FUNCTION_CODE:
                problems.append(
                    f"{path}:{node.lineno}: {node.name}() has {n} lines of code (at most {MAX_FUNCTION_CODE})"
                )
    return problems


def main(argv: list[str]) -> int:
    roots = [Path(a) for a in argv] or [Path("mlaas4hep")]
    files = sorted(p for root in roots for p in ([root] if root.is_file() else root.rglob("*.py")))
    problems = [problem for path in files for problem in check(path)]
    for problem in problems:
        print(problem)  # noqa: T201 - a command-line check
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
