"""Just enough PromQL lexing to check an expression against a real Prometheus, piece by piece.

Why not a parser: none ships for Python here, and the checks need only four things, all
visible at the token level: the vector selectors an expression reads (metric name plus
matchers), the label names it groups or joins by, its comparisons (to make them ``bool``
comparisons, which filter nothing) and its top-level ``and``/``or``/``unless`` operands.
Prometheus itself still parses and evaluates every expression; this only decides what to ask.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TOKEN = re.compile(
    r"""
      (?P<space>\s+|\#[^\n]*)
    | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
    | (?P<matchers>\{(?:"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`|[^{}"'`])*\})
    | (?P<range>\[[^\]]*\])
    | (?P<number>(?:0[xX][0-9a-fA-F]+|[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)(?:[a-zA-Z]+[0-9]*)*)
    | (?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)
    | (?P<op>==|!=|>=|<=|=~|!~|[-+*/%^<>(),@])
    """,
    re.VERBOSE,
)
AGGREGATIONS = frozenset("sum min max avg group stddev stdvar count count_values bottomk topk quantile".split())
GROUPING = frozenset("by without on ignoring group_left group_right".split())
SET_OPERATORS = frozenset(("and", "or", "unless"))
COMPARISONS = frozenset(("==", "!=", ">", "<", ">=", "<="))
_KEYWORDS = AGGREGATIONS | GROUPING | SET_OPERATORS | {"bool", "offset", "atan2", "inf", "nan"}


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    start: int
    end: int


def tokens(expr: str) -> list[Token]:
    """The expression's tokens, whitespace and comments left out; ValueError on a character PromQL has not."""
    found: list[Token] = []
    position = 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if match is None:
            raise ValueError(f"cannot lex {expr[position : position + 20]!r} in {expr!r}")
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            found.append(Token(kind, match.group(), match.start(), match.end()))
        position = match.end()
    return found


def _is_selector_name(toks: list[Token], index: int) -> bool:
    """A name that is neither a keyword nor a function being called."""
    token = toks[index]
    following = toks[index + 1] if index + 1 < len(toks) else None
    return token.text.lower() not in _KEYWORDS and not (following is not None and following.text == "(")


def _grouping_end(toks: list[Token], index: int) -> int | None:
    """Where ``by (...)``, ``on (...)`` and the like that start at ``index`` end (past the ')'); None if none starts there."""
    if toks[index].kind != "name" or toks[index].text not in GROUPING:
        return None
    if index + 1 >= len(toks) or toks[index + 1].text != "(":
        return index + 1  # group_left without a label list
    close = next(i for i in range(index + 2, len(toks)) if toks[i].text == ")")
    return close + 1


def selectors(expr: str) -> list[str]:
    """Each vector selector, as an instant selector: ``name{matchers}`` (range and offset dropped)."""
    toks = tokens(expr)
    found: list[str] = []
    index = 0
    while index < len(toks):
        end = _grouping_end(toks, index)
        if end is not None:
            index = end
            continue
        token = toks[index]
        if token.kind == "name" and _is_selector_name(toks, index):
            following = toks[index + 1] if index + 1 < len(toks) else None
            if following is not None and following.kind == "matchers":
                found.append(token.text + following.text)
                index += 1
            else:
                found.append(token.text)
        elif token.kind == "matchers":  # a selector without a metric name: {__name__=~"..."}
            found.append(token.text)
        index += 1
    return found


def grouping_labels(expr: str) -> set[str]:
    """Label names in ``by``, ``without``, ``on``, ``ignoring``, ``group_left`` and ``group_right`` lists."""
    toks = tokens(expr)
    labels: set[str] = set()
    for index in range(len(toks)):
        end = _grouping_end(toks, index)
        if end is not None:
            labels |= {token.text for token in toks[index + 1 : end] if token.kind == "name"}
    return labels


def without_thresholds(expr: str) -> str:
    """``expr`` with every comparison made a ``bool`` comparison: it keeps every series it compares."""
    toks = tokens(expr)
    pieces: list[str] = []
    position = 0
    for index, token in enumerate(toks):
        if token.kind == "op" and token.text in COMPARISONS:
            following = toks[index + 1] if index + 1 < len(toks) else None
            if following is None or following.text != "bool":
                pieces += [expr[position : token.end], " bool"]
                position = token.end
    pieces.append(expr[position:])
    return "".join(pieces)


def operands(expr: str) -> list[str]:
    """The operands of the top-level ``and``/``or``/``unless`` (the whole expression when there is none)."""
    toks = tokens(expr)
    found: list[str] = []
    depth = 0
    start = 0
    index = 0
    while index < len(toks):
        token = toks[index]
        if token.text == "(":
            depth += 1
        elif token.text == ")":
            depth -= 1
        elif depth == 0 and token.kind == "name" and token.text in SET_OPERATORS:
            found.append(expr[start : token.start].strip())
            index += 1
            end = _grouping_end(toks, index) if index < len(toks) else None  # `and on (instance) ...`
            index = end if end is not None else index
            start = toks[index].start if index < len(toks) else len(expr)
            continue
        index += 1
    found.append(expr[start:].strip())
    return found
