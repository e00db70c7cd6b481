"""JMESPath as bridge runs it: the one compiler and checker, for polls and for `bridge check`.

Polls search with OPTIONS (its FUNCTIONS are the functions an expression may call), and every
expression they run comes from compile_jmespath, which is what `bridge check` asks through
jmespath_problem: an expression the check accepts compiles for polls, in the same words.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jmespath
import jmespath.exceptions
import jmespath.functions
import jmespath.parser

__all__ = [
    "FUNCTIONS",
    "OPTIONS",
    "ExpressionError",
    "compile_jmespath",
    "jmespath_problem",
    "one_line",
]


class _Functions(jmespath.functions.Functions):
    """jmespath's functions, each argument of a variadic one type-checked like the first.

    jmespath checks only the arguments a signature lists, so `merge(@, missing)` reached
    dict.update(None): a TypeError out of a poll, not the JMESPathError a poll reports.
    """

    def _type_check(self, actual: Any, signature: Any, function_name: str) -> None:
        if signature and signature[-1].get("variadic") and len(actual) > len(signature):
            signature = [*signature, *[signature[-1]] * (len(actual) - len(signature))]
        super()._type_check(actual, signature, function_name)  # type: ignore[misc]  # not in the stubs


# The functions polls call, and so the ones a compiled expression may name.
FUNCTIONS = _Functions()
OPTIONS = jmespath.Options(custom_functions=FUNCTIONS)
_SIGNATURES: Mapping[str, Any] = FUNCTIONS.FUNCTION_TABLE
_TAKING_EXPREF = ", ".join(
    f"{name}()"
    for name, function in sorted(_SIGNATURES.items())
    if any("expref" in parameter["types"] for parameter in function["signature"])
)

# Nodes whose value is never an expression reference (`&field`): passed where a function wants
# one, they fail every evaluation. (`a || &b`, a pipe or not_null(&b) can yield one: not here.)
_NEVER_EXPREF = frozenset(
    {
        "comparator", "current", "field", "filter_projection", "flatten", "identity",
        "index", "index_expression", "literal", "multi_select_dict", "multi_select_list",
        "not_expression", "projection", "slice", "subexpression", "value_projection",
    }
)  # fmt: skip


class ExpressionError(ValueError):
    """A JMESPath expression that cannot run; the one-line message quotes the expression.

    `problem` is the message without the expression, for where it must not be repeated.
    """

    def __init__(self, expression: Any, problem: str) -> None:
        self.expression = expression
        self.problem = problem
        shown = f" {expression!r}" if isinstance(expression, str) else ""
        super().__init__(f"bad JMESPath expression{shown}: {problem}")


def compile_jmespath(expr: str) -> jmespath.parser.ParsedResult:
    """The compiled expression, cached; ExpressionError when it is not one a poll can run.

    Beyond syntax, mistakes jmespath meets only while searching, whatever the data, are refused
    here rather than in every poll: unknown functions, a wrong number of arguments, a plain
    value where a function takes `&field`, a slice step of 0 (all raise), and `&field` where a
    function takes none or as the whole expression (the value is not JSON).
    """
    # Checked before the cache, which would raise TypeError for a list or mapping from YAML.
    if not isinstance(expr, str):
        raise ExpressionError(expr, f"it must be a string, not {type(expr).__name__}")
    return _compile(expr)


def jmespath_problem(expr: Any) -> str | None:
    """Why compile_jmespath refuses expr (its very message), or None when expr compiles."""
    try:
        compile_jmespath(expr)
    except ExpressionError as exc:
        return str(exc)
    return None


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (jmespath's span three: message, expression, caret)."""
    return " ".join(str(exc).split())


# Large configs repeat one expression (`items: items`) in every source: compiled once each.
@functools.lru_cache(maxsize=1024)
def _compile(expr: str) -> jmespath.parser.ParsedResult:
    try:
        parsed = jmespath.compile(expr)
    except jmespath.exceptions.JMESPathError as exc:
        raise ExpressionError(expr, _parse_problem(exc)) from exc
    # the whole expression's value is JSON: an expression reference is not
    problem = _run_problem(parsed.parsed, expref_ok=False)
    if problem is not None:
        raise ExpressionError(expr, problem)
    return parsed


def _parse_problem(exc: jmespath.exceptions.JMESPathError) -> str:
    if isinstance(exc, jmespath.exceptions.EmptyExpressionError):
        return "it is empty"
    if isinstance(exc, jmespath.exceptions.IncompleteExpressionError):
        return "it is incomplete"
    if isinstance(exc, jmespath.exceptions.LexerError):
        return f"{exc.message} at column {exc.lexer_position}"
    if isinstance(exc, jmespath.exceptions.ParseError):
        return f"{exc.msg} at column {exc.lex_position}"
    return one_line(exc)


def _run_problem(node: Mapping[str, Any], expref_ok: bool) -> str | None:
    # What evaluating node would do wrong whatever the data; None if nothing. expref_ok: an
    # expression reference may be node's value (it goes to a function taking one), not JSON.
    kind = node["type"]
    children = node.get("children", ())
    if kind == "slice":
        # A slice's children are its bounds: ints or None, not nodes.
        return "a slice's step cannot be 0" if len(children) > 2 and children[2] == 0 else None
    if kind == "expref" and not expref_ok:
        return f"an expression reference (&...) is only an argument of {_TAKING_EXPREF}"
    if kind == "expref":
        return _run_problem(children[0], False)
    if kind == "function_expression":
        return _call_problem(str(node["value"]), children, expref_ok)
    for child in children:
        if isinstance(child, dict):
            problem = _run_problem(child, expref_ok)
            if problem is not None:
                return problem
    return None


def _call_problem(name: str, args: list[Mapping[str, Any]], expref_ok: bool) -> str | None:
    if name not in _SIGNATURES:
        return f"unknown function {name}()"
    signature = _SIGNATURES[name]["signature"]
    variadic = bool(signature) and bool(signature[-1].get("variadic"))
    wanted = len(signature)
    if variadic and len(args) < wanted:
        return f"{name}() takes at least {_arguments(wanted)}, not {len(args)}"
    if not variadic and len(args) != wanted:
        return f"{name}() takes {_arguments(wanted)}, not {len(args)}"
    for i, arg in enumerate(args):
        types = signature[min(i, wanted - 1)]["types"]
        if types == ["expref"] and arg["type"] in _NEVER_EXPREF:
            return f"argument {i + 1} of {name}() must be an expression reference, as in &field"
        # not_null passes any value on (sort_by(@, not_null(&a, &b))); to_string, to_number,
        # type, contains ... make garbage of one: "<jmespath.visitor._Expression object at ...>"
        passes_on = name == "not_null"
        if arg["type"] == "expref" and "expref" not in types and not passes_on:
            return f"argument {i + 1} of {name}() cannot be an expression reference (&...)"
        problem = _run_problem(arg, "expref" in types or (passes_on and expref_ok))
        if problem is not None:
            return problem
    return None


def _arguments(n: int) -> str:
    return "1 argument" if n == 1 else f"{n} arguments"
