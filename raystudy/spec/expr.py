"""A tiny, safe expression evaluator for `expr` space entries.

Study files are data: nothing in them is ever handed to Python's eval/exec. An
expression is parsed with `ast` and only arithmetic, comparison, boolean and
conditional nodes, literals, names of space entries / config paths and a short
list of pure math functions are accepted.
"""

from __future__ import annotations

import ast
import functools
import math
import operator
from typing import Any, Callable, Mapping

from ..errors import StudyError

_BINOPS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}
_CMP = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge,
}
# Pure numeric helpers; no attribute access, no builtins beyond these.
FUNCTIONS = {
    "min": min, "max": max, "abs": abs, "round": round, "int": int, "float": float,
    "sqrt": math.sqrt, "log": math.log, "log2": math.log2, "exp": math.exp,
}
_MAX_POW = 64
_MAX_BITS = 4096  # integers beyond this are a typo, and printing them raises
# The evaluator recurses once per level of the syntax tree (two frames a level), so a
# 2000-character `-----1` would exhaust Python's stack; real expressions nest < 20 deep.
_MAX_DEPTH = 200


class ExprError(StudyError):
    pass


def _dotted(node: ast.AST) -> str | None:
    """`train.batch_size` parses as Attribute(Name); turn it back into a dotted name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def names_in(source: str) -> set[str]:
    """Dotted names an expression refers to (for ordering derived entries)."""
    tree = _parse(source)
    found: set[str] = set()

    def visit(node):
        if isinstance(node, (ast.Name, ast.Attribute)):
            d = _dotted(node)
            if d is not None:
                if d not in FUNCTIONS:
                    found.add(d)
                return
        if isinstance(node, ast.Call):
            for a in node.args:
                visit(a)
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _parse(source: str) -> ast.Expression:
    if not isinstance(source, str):
        raise ExprError("an expr must be a string", expected="a string like \"0.1 * train.batch_size / 128\"")
    return _parse_cached(source)


@functools.lru_cache(maxsize=256)
def _parse_cached(source: str) -> ast.Expression:
    # Parsed once per distinct expression: a 100,000-trial grid re-evaluates the same text.
    if not isinstance(source, str):
        raise ExprError("an expr must be a string", expected="a string like \"0.1 * train.batch_size / 128\"")
    if len(source) > 2000:
        raise ExprError("expression is too long", expected="at most 2000 characters")
    try:
        tree = ast.parse(source, mode="eval")
    except (SyntaxError, ValueError) as e:
        raise ExprError(f"cannot parse expression {source!r}: {getattr(e, 'msg', e)}",
                        expected="an arithmetic / comparison / conditional expression") from None
    _check_static(tree, source)
    return tree


_ALLOWED = (ast.Expression, ast.Constant, ast.Name, ast.Attribute, ast.BinOp, ast.UnaryOp, ast.BoolOp,
            ast.Compare, ast.IfExp, ast.List, ast.Tuple, ast.Call, ast.expr_context, ast.boolop)


def _depth(tree: ast.AST) -> int:
    """Levels of the syntax tree, counted without recursion."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        stack.extend((child, d + 1) for child in ast.iter_child_nodes(node))
    return deepest


def _check_static(tree: ast.AST, source: str) -> None:
    """Reject every construct beyond arithmetic/comparison/conditionals up front, including
    ones in a branch that a given trial would not evaluate."""
    depth = _depth(tree)
    if depth > _MAX_DEPTH:
        shown = source if len(source) <= 60 else source[:57] + "..."
        raise ExprError(f"expression nested too deeply ({depth} levels) in {shown!r}",
                        expected=f"at most {_MAX_DEPTH} levels of nested operations")
    for node in ast.walk(tree):
        if isinstance(node, ast.operator) and type(node) not in _BINOPS:
            raise ExprError(f"operator '{type(node).__name__}' is not allowed in {source!r}")
        if isinstance(node, ast.unaryop) and type(node) not in _UNARY:
            raise ExprError(f"operator '{type(node).__name__}' is not allowed in {source!r}")
        if isinstance(node, ast.cmpop):
            if type(node) not in _CMP:
                raise ExprError(f"comparison {type(node).__name__} not allowed in {source!r}")
            continue
        if isinstance(node, (ast.operator, ast.unaryop)):
            continue
        if not isinstance(node, _ALLOWED):
            raise ExprError(f"'{type(node).__name__}' is not allowed in {source!r}",
                            expected="arithmetic, comparison, boolean and conditional expressions only")
        if isinstance(node, ast.Attribute) and _dotted(node) is None:
            raise ExprError(f"attribute access is not allowed in {source!r}",
                            expected="names of space entries or config paths")
        if isinstance(node, ast.Call):
            fname = node.func.id if isinstance(node.func, ast.Name) else None
            if fname not in FUNCTIONS or node.keywords:
                raise ExprError(f"function call not allowed in {source!r}",
                                expected="only " + ", ".join(sorted(FUNCTIONS)))
        if isinstance(node, ast.Constant) and not (
                node.value is None or isinstance(node.value, (int, float, str, bool))):
            raise ExprError(f"literal {node.value!r} not allowed in {source!r}")


def evaluate(source: str, env: Mapping[str, Any]) -> Any:
    tree = _parse(source)
    return _eval(tree.body, env, source)


def _num(v, source):
    if isinstance(v, bool) or isinstance(v, (int, float)):
        return v
    raise ExprError(f"arithmetic on a non-number ({type(v).__name__} {v!r}) in {source!r}",
                    expected="numbers on both sides of an arithmetic operator")


def _not_allowed(node: ast.AST, source: str) -> ExprError:
    return ExprError(f"'{type(node).__name__}' is not allowed in {source!r}",
                     expected="arithmetic, comparison, boolean and conditional expressions only")


def _eval(node: ast.AST, env: Mapping[str, Any], source: str) -> Any:
    handler = _HANDLERS.get(type(node))
    if handler is None:
        raise _not_allowed(node, source)
    return handler(node, env, source)


def _constant(node: ast.Constant, env, source):
    if isinstance(node.value, (int, float, str, bool)) or node.value is None:
        return node.value
    raise ExprError(f"literal {node.value!r} not allowed in {source!r}")


def _name(node: ast.Name | ast.Attribute, env, source):
    name = _dotted(node)
    if name is None:
        raise ExprError(f"attribute access is not allowed in {source!r}",
                        expected="names of space entries or config paths")
    if name in env:
        return env[name]
    if name in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[name]
    from ..errors import suggest
    best = suggest(name, [k for k in env if not k.startswith("_")])
    raise ExprError(f"unknown name '{name}' in {source!r}",
                    expected="a space entry or a config path",
                    hint=f"did you mean '{best}'?" if best else None)


def _binop(node: ast.BinOp, env, source):
    if type(node.op) not in _BINOPS:
        raise _not_allowed(node, source)
    left = _num(_eval(node.left, env, source), source)
    right = _num(_eval(node.right, env, source), source)
    if isinstance(node.op, ast.Pow) and abs(right) > _MAX_POW:
        raise ExprError(f"exponent {right} too large in {source!r}", expected=f"|exponent| <= {_MAX_POW}")
    if isinstance(node.op, ast.Pow) and isinstance(left, int) and left.bit_length() * abs(right) > _MAX_BITS:
        raise ExprError(f"result too large in {source!r}")
    try:
        out = _BINOPS[type(node.op)](left, right)
    except ZeroDivisionError:
        raise ExprError(f"division by zero in {source!r}") from None
    except OverflowError:
        raise ExprError(f"numeric overflow in {source!r}") from None
    if isinstance(out, complex):
        raise ExprError(f"{source!r} is not a real number", expected="a real result")
    if isinstance(out, int) and out.bit_length() > _MAX_BITS:
        raise ExprError(f"result too large in {source!r}")
    return out


def _unaryop(node: ast.UnaryOp, env, source):
    if type(node.op) not in _UNARY:
        raise _not_allowed(node, source)
    v = _eval(node.operand, env, source)
    if not isinstance(node.op, ast.Not):
        v = _num(v, source)
    return _UNARY[type(node.op)](v)


def _boolop(node: ast.BoolOp, env, source):
    # Short-circuit like Python: `x != 0 and 1 / x > 0` must not divide by zero.
    out = isinstance(node.op, ast.And)
    for v in node.values:
        out = _eval(v, env, source)
        if isinstance(node.op, ast.And) and not out:
            return out
        if isinstance(node.op, ast.Or) and out:
            return out
    return out


def _compare(node: ast.Compare, env, source):
    left = _eval(node.left, env, source)
    for op, comp in zip(node.ops, node.comparators):
        if type(op) not in _CMP:
            raise ExprError(f"comparison {type(op).__name__} not allowed in {source!r}")
        right = _eval(comp, env, source)
        try:
            ok = _CMP[type(op)](left, right)
        except TypeError:
            raise ExprError(f"cannot compare {left!r} with {right!r} in {source!r}") from None
        if not ok:
            return False
        left = right
    return True


def _ifexp(node: ast.IfExp, env, source):
    return _eval(node.body, env, source) if _eval(node.test, env, source) else _eval(node.orelse, env, source)


def _sequence(node: ast.List | ast.Tuple, env, source):
    return [_eval(e, env, source) for e in node.elts]


def _call(node: ast.Call, env, source):
    fname = node.func.id if isinstance(node.func, ast.Name) else None
    if fname not in FUNCTIONS or node.keywords:
        raise ExprError(f"function call not allowed in {source!r}",
                        expected="only " + ", ".join(sorted(FUNCTIONS)))
    args = [_num(_eval(a, env, source), source) for a in node.args]
    try:
        return FUNCTIONS[fname](*args)
    except (ValueError, TypeError, OverflowError) as e:
        raise ExprError(f"{fname}() failed in {source!r}: {e}") from None


# One evaluator per accepted node type; any other node is rejected by _eval.
_HANDLERS: dict[type, Callable[[Any, Mapping[str, Any], str], Any]] = {
    ast.Constant: _constant, ast.Name: _name, ast.Attribute: _name, ast.BinOp: _binop,
    ast.UnaryOp: _unaryop, ast.BoolOp: _boolop, ast.Compare: _compare, ast.IfExp: _ifexp,
    ast.List: _sequence, ast.Tuple: _sequence, ast.Call: _call,
}
